"""The synthetic eclipse generator: layout, determinism, decodability, and that classes differ."""

from __future__ import annotations

import hashlib
import json
import re

import numpy as np
import pytest
from PIL import Image

from cnnlab.data import synthetic
from cnnlab.data.eclipse_render import CLASSES, augment_keras_style, render_eclipse
from cnnlab.data.synthetic import synth_eclipse
from cnnlab.errors import UserError

SIZE = 48
TRAIN, TEST = 12, 4


def _hashes(root) -> dict[str, str]:
    """Relative path -> sha256 of every file under root (images, boxes.csv and synth.json)."""
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def generated(tmp_path_factory):
    """One small set, generated once for the module."""
    out = tmp_path_factory.mktemp("synth") / "ecl"
    summary = synth_eclipse(out, train_per_class=TRAIN, test_per_class=TEST, size=SIZE, seed=0)
    return out, summary


def test_layout_and_counts(generated):
    out, summary = generated
    assert sorted(p.name for p in out.iterdir()) == ["boxes.csv", "synth.json", "test", "train"]
    for split, n in (("train", TRAIN), ("test", TEST)):
        assert sorted(p.name for p in (out / split).iterdir()) == sorted(CLASSES)
        for cls in CLASSES:
            files = sorted((out / split / cls).iterdir())
            assert len(files) == n
            assert all(re.fullmatch(r"Augmented_\d+_0_\d+\.jpeg", f.name) for f in files)
            assert summary["counts"][split][cls] == n
    assert summary["images"] == 3 * (TRAIN + TEST)
    assert summary["reused"] is False
    meta = json.loads((out / "synth.json").read_text())
    assert (meta["seed"], meta["size"], meta["train_per_class"]) == (0, SIZE, TRAIN)


def test_images_decode_as_rgb_at_requested_size(generated):
    out, _ = generated
    for path in out.rglob("*.jpeg"):
        with Image.open(path) as im:
            assert im.format == "JPEG"
            assert im.mode == "RGB"
            assert im.size == (SIZE, SIZE)


def test_same_seed_is_byte_identical_even_in_parallel(generated, tmp_path, monkeypatch):
    out, _ = generated
    monkeypatch.setattr(synthetic, "SERIAL_BELOW", 0)  # force the process pool on this small job
    again = tmp_path / "again"
    synth_eclipse(again, train_per_class=TRAIN, test_per_class=TEST, size=SIZE, seed=0, workers=2)
    assert _hashes(again) == _hashes(out)


def test_other_seed_gives_other_images(generated, tmp_path):
    out, _ = generated
    other = tmp_path / "other"
    synth_eclipse(other, train_per_class=TRAIN, test_per_class=TEST, size=SIZE, seed=1)
    a = {h for name, h in _hashes(out).items() if name.endswith(".jpeg")}
    b = {h for name, h in _hashes(other).items() if name.endswith(".jpeg")}
    assert not a & b


def test_train_and_test_use_different_streams(generated):
    out, _ = generated
    train = {hashlib.sha256(p.read_bytes()).digest() for p in (out / "train").rglob("*.jpeg")}
    test = {hashlib.sha256(p.read_bytes()).digest() for p in (out / "test").rglob("*.jpeg")}
    assert len(train) == 3 * TRAIN and len(test) == 3 * TEST
    assert not train & test


def test_rerun_with_same_parameters_reuses_the_folder(generated):
    out, _ = generated
    before = _hashes(out)
    summary = synth_eclipse(out, train_per_class=TRAIN, test_per_class=TEST, size=SIZE, seed=0, workers=2)
    assert summary["reused"] is True
    assert _hashes(out) == before


def test_refuses_non_empty_folder_with_other_content(generated, tmp_path):
    out, _ = generated
    with pytest.raises(UserError, match="not empty"):
        synth_eclipse(out, train_per_class=TRAIN, test_per_class=TEST, size=SIZE, seed=7)
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(UserError, match="not empty"):
        synth_eclipse(foreign, train_per_class=1, test_per_class=1, size=SIZE)
    assert [p.name for p in foreign.iterdir()] == ["notes.txt"]


def test_rejects_tiny_size(tmp_path):
    with pytest.raises(UserError, match="at least 32"):
        synth_eclipse(tmp_path / "tiny", size=31)
    assert not (tmp_path / "tiny").exists()


def test_render_and_augment_shapes_and_determinism():
    img = render_eclipse("total", np.random.default_rng(3), 40)
    assert img.shape == (40, 40, 3) and img.dtype == np.uint8
    assert np.array_equal(img, render_eclipse("Total_solar_eclipse", np.random.default_rng(3), 40))
    aug = augment_keras_style(img, np.random.default_rng(0))
    assert aug.shape == img.shape and aug.dtype == np.uint8
    with pytest.raises(UserError):
        render_eclipse("hybrid", np.random.default_rng(0), 40)


def _class_statistics(kind: str, n: int = 40) -> tuple[float, float]:
    """Mean share of bright pixels and mean colour saturation over n fresh renders."""
    bright, saturation = [], []
    for i in range(n):
        img = render_eclipse(kind, np.random.default_rng([2024, i]), 48).astype(np.float32)
        bright.append((img.mean(axis=2) > 150).mean())
        saturation.append(((img.max(axis=2) - img.min(axis=2)) / (img.max(axis=2) + 1)).mean())
    return float(np.mean(bright)), float(np.mean(saturation))


def test_classes_differ_statistically():
    annular, partial, total = (_class_statistics(k) for k in ("annular", "partial", "total"))
    # A crescent leaves far more of the disk lit than a thin ring of fire does.
    assert partial[0] > 1.5 * annular[0]
    # Totality is white corona on a dark sky; the others are mostly filtered orange or yellow light.
    assert total[1] < 0.75 * min(annular[1], partial[1])
