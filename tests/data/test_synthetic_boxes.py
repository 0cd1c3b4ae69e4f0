"""boxes.csv of the synthetic eclipse set: one Sun's-disk box per image, following the augmentation, deterministic,
and added to an older set without touching its images."""

from __future__ import annotations

import copy
import csv
import hashlib
import re
import shutil

import numpy as np
import pytest
from PIL import Image

from cnnlab.data import synthetic
from cnnlab.data.eclipse_render import CLASSES, KINDS, augment_keras_style, render_eclipse, sun_disk
from cnnlab.data.synthetic import synth_eclipse

SIZE, TRAIN, TEST, SEED = 48, 8, 2, 3
PARAMS = dict(train_per_class=TRAIN, test_per_class=TEST, size=SIZE, seed=SEED)


@pytest.fixture(scope="module")
def generated(tmp_path_factory):
    out = tmp_path_factory.mktemp("synth_boxes") / "ecl"
    summary = synth_eclipse(out, workers=1, **PARAMS)
    return out, summary


def _rows(out) -> list[dict]:
    with open(out / "boxes.csv", newline="") as f:
        return list(csv.DictReader(f))


def _box_px(row: dict) -> tuple[float, float, float, float]:
    """(x0, y0, x1, y1) in pixels of the image."""
    cx, cy, w, h = (float(row[k]) * SIZE for k in ("cx", "cy", "w", "h"))
    return cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2


def _images(out) -> dict[str, tuple[str, int]]:
    """Relative path of every image -> (sha256, mtime_ns)."""
    return {
        p.relative_to(out).as_posix(): (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns)
        for p in sorted(out.rglob("*.jpeg"))
    }


def test_one_row_per_image_sorted_and_relative(generated):
    out, summary = generated
    assert summary["boxes"] == str(out / "boxes.csv")
    text = (out / "boxes.csv").read_text()
    assert text.splitlines()[0] == "path,cx,cy,w,h"
    rows = _rows(out)
    assert [r["path"] for r in rows] == sorted(_images(out)) and len(rows) == 3 * (TRAIN + TEST)
    number = re.compile(r"[01]\.\d{6}")
    for r in rows:
        assert all(number.fullmatch(r[k]) for k in ("cx", "cy", "w", "h")), r
        cx, cy, w, h = (float(r[k]) for k in ("cx", "cy", "w", "h"))
        assert w > 0 and h > 0
        assert -1e-6 <= cx - w / 2 and cx + w / 2 <= 1 + 1e-6 and -1e-6 <= cy - h / 2 and cy + h / 2 <= 1 + 1e-6


def test_box_is_the_disk_through_the_real_augmentation(generated):
    """Push a mask of the disk through augment_keras_style with the image's own draws: same box, to a pixel."""
    out, _ = generated
    for r in _rows(out):
        split, cls, name = r["path"].split("/")
        ci, index = CLASSES.index(cls), int(name.split("_")[1])
        rng = synthetic._image_rng(SEED, split, ci, index)
        rng.integers(10_000)
        cy, cx, radius = sun_disk(KINDS[ci], copy.deepcopy(rng), SIZE)
        render_eclipse(KINDS[ci], rng, SIZE)
        yy, xx = np.mgrid[0:SIZE, 0:SIZE] + 0.5
        disk = np.clip(radius - np.hypot(yy - cy, xx - cx) + 0.5, 0.0, 1.0)
        disk[[0, -1], :] = disk[:, [0, -1]] = 0.0  # the frame's edge would be smeared by fill_mode="nearest"
        moved = augment_keras_style(np.repeat(disk[..., None], 3, axis=2), rng)[..., 0] > 0.5
        ys, xs = np.nonzero(moved)
        expected = (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)
        assert np.allclose(_box_px(r), expected, atol=1.6), (r["path"], _box_px(r), expected)


def test_box_holds_the_brightest_pixels_of_lit_disks(generated):
    """Annular rings and partial crescents are the brightest thing in the picture, and they are in their box."""
    out, _ = generated
    shares = []
    for r in _rows(out):
        if "Total" in r["path"]:
            continue  # a total's box is the Moon's dark disk, its corona outside
        img = np.asarray(Image.open(out / r["path"]).convert("L"), dtype=np.float32)
        x0, y0, x1, y1 = _box_px(r)
        yy, xx = np.mgrid[0:SIZE, 0:SIZE] + 0.5
        in_box = (xx >= x0 - 1) & (xx <= x1 + 1) & (yy >= y0 - 1) & (yy <= y1 + 1)
        bright = img >= np.quantile(img, 0.98)
        shares.append((bright & in_box).sum() / bright.sum())
    assert len(shares) == 2 * (TRAIN + TEST)
    assert np.median(shares) >= 0.9 and np.mean(np.array(shares) >= 0.6) >= 0.8, np.round(shares, 2)


def test_worker_count_does_not_change_boxes(generated, tmp_path, monkeypatch):
    out, _ = generated
    monkeypatch.setattr(synthetic, "SERIAL_BELOW", 0)  # force the process pool on this small job
    synth_eclipse(tmp_path / "two", workers=2, **PARAMS)
    assert (tmp_path / "two" / "boxes.csv").read_bytes() == (out / "boxes.csv").read_bytes()


def test_old_set_without_boxes_gets_them_and_keeps_its_images(generated, tmp_path):
    out, _ = generated
    old = tmp_path / "old"
    shutil.copytree(out, old)  # keeps the mtimes
    (old / "boxes.csv").unlink()
    images, meta = _images(old), (old / "synth.json").read_bytes()
    summary = synth_eclipse(old, workers=1, **PARAMS)
    assert summary["reused"] is True and summary["boxes"] == str(old / "boxes.csv")
    assert (old / "boxes.csv").read_bytes() == (out / "boxes.csv").read_bytes()
    assert _images(old) == images and (old / "synth.json").read_bytes() == meta
    assert not list(old.glob("*.tmp"))


@pytest.mark.parametrize("flip", [False, True])
def test_disk_box_clips_flips_and_never_vanishes(flip):
    identity = (np.eye(2), np.zeros(2), flip)
    cx, cy, w, h = synthetic._disk_box((24.0, 12.0, 8.0), identity, SIZE)  # centre y, x; radius
    assert np.allclose((cx, cy, w, h), ((36 if flip else 12) / SIZE, 0.5, 16 / SIZE, 16 / SIZE), atol=0.3 / SIZE)
    cx, cy, w, h = synthetic._disk_box((24.0, 2.0, 8.0), identity, SIZE)  # cut by the left edge
    assert np.allclose((cx * SIZE, w * SIZE), ((SIZE - 5, 10) if flip else (5, 10)), atol=0.3)
    gone = synthetic._disk_box((24.0, -30.0, 8.0), identity, SIZE)  # wholly outside: a sliver at the edge
    assert all(0 <= v <= 1 for v in gone) and gone[2] > 0 and gone[3] > 0
