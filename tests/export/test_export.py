"""`cnnlab export --onnx` and `cnnlab predict FILE.onnx`: the file reproduces the checkpoint, preprocessing included,
and predicts on onnxruntime alone, without importing torch."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import numpy as np
import pytest
from conftest import one_line_error, run_cli
from PIL import Image

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

# fp32 on the CPU: `cnnlab predict RUN` would run in bf16 autocast on CPUs with native bf16 (TF32 or bf16 on a GPU),
# while the exported file is always fp32.
FAST = ["--epochs", 1, "--image-size", 32, "--batch-size", 8, "-q", "--device", "cpu", "--set", "precision=fp32"]
CONFIGS = {
    "default": [],
    "image": ["--set", "normalize=image"],
    "equalize-tta": ["--set", "normalize=equalize", "--set", "tta=true"],
    "resnet-keep": ["--set", "model=resnet", "--set", "width=8", "--set", "depth=1", "--set", "resize=keep"],
}

# `cnnlab predict` in a fresh interpreter, which then says whether torch (or the onnx package) was imported.
NO_TORCH = """
import sys
from cnnlab.cli import main
try:
    main(sys.argv[1:])
except SystemExit as e:
    assert not e.code, e.code
print("imported:", sorted({m.split(".")[0] for m in sys.modules} & {"torch", "onnx"}), file=sys.stderr)
"""


def _odd_images(folder):
    """Two images that are not square (resize=keep gives them other H and W than any training image)."""
    rng = np.random.default_rng(0)
    folder.mkdir()
    Image.fromarray(rng.integers(0, 256, (40, 72, 3), dtype=np.uint8)).save(folder / "wide.png")
    Image.fromarray(rng.integers(0, 256, (90, 30), dtype=np.uint8)).save(folder / "tall.png")
    return folder


@pytest.mark.parametrize("name", CONFIGS)
def test_onnx_file_predicts_like_its_run_without_torch(eclipse, tmp_path, name):
    run, model = tmp_path / "r", tmp_path / "out" / "m.onnx"
    run_cli("train", "--data", eclipse, "--out", run, *FAST, *CONFIGS[name])
    out = run_cli("export", run, "--onnx", model).output
    checked = re.search(r"checked on (\d+) of the run's images: max \|logit difference\| (\S+),", out)
    assert checked and int(checked[1]) > 0 and float(checked[2]) <= 1e-4, out
    assert model.is_file() and [p.name for p in model.parent.iterdir()] == ["m.onnx"]

    images = [eclipse / "test", _odd_images(tmp_path / "odd")]
    ours = json.loads(run_cli("predict", run, *images, "--json").output)
    proc = subprocess.run(
        [sys.executable, "-c", NO_TORCH, "predict", str(model), *map(str, images), "--json"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert "imported: []" in proc.stderr  # neither torch nor the onnx package: onnxruntime alone
    theirs = json.loads(proc.stdout)
    assert len(ours) == 14 and [(r["path"], r["label"]) for r in theirs] == [(r["path"], r["label"]) for r in ours]
    assert max(abs(a["probs"][c] - b["probs"][c]) for a, b in zip(ours, theirs, strict=True) for c in a["probs"]) < 1e-4

    csv_ours = run_cli("predict", run, eclipse / "test", "--csv").output.splitlines()
    csv_theirs = run_cli("predict", model, eclipse / "test", "--csv").output.splitlines()
    assert csv_theirs[0] == csv_ours[0] and len(csv_theirs) == len(csv_ours) == 13


def test_export_metadata_and_a_run_whose_data_moved(shapes, tmp_path, monkeypatch):
    from cnnlab import __version__
    from cnnlab.export import onnx_export

    run, model = tmp_path / "r", tmp_path / "m.onnx"
    run_cli("train", "--data", shapes, "--out", run, *FAST, "--set", "normalize=image")
    assert "inside the dataset" in one_line_error("export", run, "--onnx", shapes / "m.onnx")

    with monkeypatch.context() as m:  # every file fails the check: none is written, nothing is left behind
        m.setattr(onnx_export, "TOLERANCE", -1.0)
        assert "differs from PyTorch" in one_line_error("export", run, "--onnx", model)
    assert list(tmp_path.glob("*m.onnx*")) == []

    shapes.rename(tmp_path / "moved")
    out = run_cli("export", run, "--onnx", model).output
    assert "checked on random images instead" in out and "checked on 8 random images" in out
    meta = {p.key: p.value for p in onnx.load(str(model)).metadata_props}
    assert json.loads(meta["classes"]) == ["circle", "square", "triangle"]
    assert (meta["image_size"], meta["resize"], meta["channels"], meta["crop"]) == ("32", "squash", "3", "none")
    assert meta["normalize"] == "image" and len(json.loads(meta["mean"])) == len(json.loads(meta["std"])) == 3
    assert meta["cnnlab_version"] == __version__ and meta["epoch"] == "1" and meta["tta"] == "false"


def test_export_and_onnx_predict_errors_are_one_line(eclipse, tmp_path, monkeypatch):
    img = next((eclipse / "test").rglob("*.jpeg"))
    assert "not a cnnlab run folder" in one_line_error("export", eclipse, "--onnx", tmp_path / "m.onnx")
    assert "Missing option '--onnx'" in one_line_error("export", eclipse)
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"\x08\x07not really a protobuf" * 40)
    assert "damaged or not an ONNX model" in one_line_error("predict", bad, img)
    assert "no such ONNX file" in one_line_error("predict", tmp_path / "missing.onnx", img)
    with monkeypatch.context() as m:  # without the optional packages: say how to install them
        m.setitem(sys.modules, "onnxruntime", None)
        assert "pip install onnx onnxruntime" in one_line_error("predict", bad, img)
        m.setitem(sys.modules, "onnx", None)
        assert "pip install onnx onnxruntime" in one_line_error("export", eclipse, "--onnx", tmp_path / "m.onnx")


def test_predict_of_a_default_run_matches_its_onnx_file(eclipse, tmp_path):
    """Default precision (bf16 autocast on CPUs that have it): predict still scores in fp32, as the file does."""
    pytest.importorskip("onnxruntime")
    out = tmp_path / "r"
    run_cli("train", "--data", eclipse, "--epochs", 1, "--image-size", 32, "--batch-size", 8, "-q", "--out", out)
    run_cli("export", out, "--onnx", tmp_path / "m.onnx")
    img = next((eclipse / "test").rglob("*.jpeg"))
    ours = json.loads(run_cli("predict", out, img, "--json").output)[0]["probs"]
    theirs = json.loads(run_cli("predict", tmp_path / "m.onnx", img, "--json").output)[0]["probs"]
    assert max(abs(ours[c] - theirs[c]) for c in ours) <= 1e-4
