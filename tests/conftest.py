"""Shared fixtures: tiny generated datasets (no test needs ../shared) and an isolated decode cache."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image, ImageDraw

from cnnlab.cli.main import main


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("CNNLAB_CACHE", str(tmp_path_factory.mktemp("cache")))


def make_shapes(
    root: Path,
    splits=(("train", 12), ("test", 4)),
    classes=("circle", "square", "triangle"),
    size=(40, 36),
    seed=0,
    ext=".png",
) -> Path:
    """A tiny learnable class tree: one bright shape on a dark background per image."""
    rng = np.random.default_rng(seed)
    for split, n in splits:
        for c, name in enumerate(classes):
            d = root / split / name if split else root / name
            d.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                im = Image.new("RGB", size, tuple(int(v) for v in rng.integers(0, 60, 3)))
                draw = ImageDraw.Draw(im)
                x, y, r = int(rng.integers(12, size[0] - 12)), int(rng.integers(12, size[1] - 12)), 8
                col = tuple(int(v) for v in rng.integers(150, 255, 3))
                box = [x - r, y - r, x + r, y + r]
                if c % 3 == 0:
                    draw.ellipse(box, fill=col)
                elif c % 3 == 1:
                    draw.rectangle(box, fill=col)
                else:
                    draw.polygon([(x, y - r), (x - r, y + r), (x + r, y + r)], fill=col)
                im.save(d / f"img {i:03d}{ext}")
    return root


@pytest.fixture
def shapes(tmp_path) -> Path:
    return make_shapes(tmp_path / "shapes")


@pytest.fixture(scope="session")
def eclipse(tmp_path_factory) -> Path:
    """The embedded synthetic eclipse set, small: 16 train and 4 test images per class at 48 px."""
    from cnnlab.data.synthetic import synth_eclipse

    out = tmp_path_factory.mktemp("eclipse") / "ecl"
    synth_eclipse(out, train_per_class=16, test_per_class=4, size=48, seed=1)
    return out


def tree_hash(root: Path) -> str:
    """Hash of every path, size, mtime and content under root: any write into a dataset changes it."""
    h = hashlib.sha256()
    for p in sorted(Path(root).rglob("*")):
        st = p.lstat()
        h.update(f"{p.relative_to(root)}|{st.st_size}|{st.st_mtime_ns}|{p.is_dir()}".encode())
        if p.is_file():
            h.update(p.read_bytes())
    return h.hexdigest()


def run_cli(*args, expect: int = 0):
    result = CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)
    assert result.exit_code == expect, result.output
    return result


def one_line_error(*args) -> str:
    """Run a CLI command that must fail as a user error: exit code 2 and a single 'error:' line."""
    result = CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)
    assert result.exit_code == 2, result.output
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in result.output, result.output
    return errors[0]


def cnnlab_env() -> dict:
    """The environment for a `python -m cnnlab ...` subprocess: this checkout's cnnlab first on the import path."""
    import os

    import cnnlab

    src = str(Path(cnnlab.__file__).resolve().parents[1])
    return {**os.environ, "PYTHONPATH": os.pathsep.join([src, *filter(None, [os.environ.get("PYTHONPATH")])])}
