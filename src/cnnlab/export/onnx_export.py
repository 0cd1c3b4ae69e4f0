"""`cnnlab export`: a run's best checkpoint as one ONNX file that holds its preprocessing too.

The graph takes uint8 N x C x H x W images, decoded and resized as cnnlab decodes them (data/decode.py), and returns
the logits `Engine.logits` gives at evaluation: the run's normalisation (dataset, image or equalize), the network,
and flip TTA when the run uses it. The metadata (`metadata_props`) says how to decode (image_size, resize,
channels, crop, window) and names the classes, so `cnnlab predict FILE.onnx` (export/onnx_runtime.py) needs no
torch.

The file is exported in fp32 on the CPU, whatever the run's device, precision and layout, and checked against
PyTorch on images of the run's own data before it replaces anything: a file that does not reproduce the checkpoint
is never written.
"""

from __future__ import annotations

import csv
import itertools
import json
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from cnnlab import __version__
from cnnlab.config import Config
from cnnlab.data.decode import BadImage, DecodeSettings, decode
from cnnlab.data.folders import check_root
from cnnlab.data.labels import protected_paths
from cnnlab.errors import UserError
from cnnlab.evaluation.loading import load_run
from cnnlab.export.onnx_runtime import need, onnx_logits, open_model, softmax
from cnnlab.files import atomic_write, output_folder
from cnnlab.training import run_folder
from cnnlab.training.engine import Engine, make_engine

TOLERANCE = 1e-4  # the largest |logit difference| to PyTorch a file may have
OPSET = 17  # ScatterElements with reduction (equalize's histogram) needs 16; 17 is read by onnxruntime >= 1.14
CHECK_IMAGES = 32


class Preprocessed(nn.Module):
    """uint8 images -> logits, through the engine's own eval preset and `logits` (normalisation, TTA)."""

    def __init__(self, eng: Engine):
        super().__init__()
        self.model, self.eng = eng.model, eng  # the network as a submodule: its weights become the graph's

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.eng.logits(self.eng.eval_input(x))


def cpu_engine(run: Path) -> tuple[Config, dict, Engine]:
    """The run's best checkpoint (`load_run`) as an fp32 engine on the CPU in the default memory layout."""
    cfg, ckpt, eng = load_run(run)
    cfg.train.device, cfg.train.precision, cfg.train.channels_last = "cpu", "fp32", False
    model = eng.model.to(device="cpu", dtype=torch.float32, memory_format=torch.contiguous_format)
    eng = make_engine(cfg, model, torch.as_tensor(ckpt["mean"]).float(), torch.as_tensor(ckpt["std"]).float())
    eng.model.eval()
    return cfg, ckpt, eng


def metadata(cfg: Config, ckpt: dict) -> dict[str, str]:
    """What a consumer needs beside the graph: how to decode, the classes, and where the file came from."""
    d = cfg.data
    return {
        "classes": json.dumps(list(ckpt["classes"])),
        "image_size": str(d.image_size),
        "resize": d.resize,
        "channels": str(d.channels),
        "crop": d.crop,
        "window": d.window,  # "" (each image's own range) or LOW:HIGH, for 16-bit, float and DICOM images
        "normalize": d.normalize,
        "mean": json.dumps(torch.as_tensor(ckpt["mean"]).tolist()),
        "std": json.dumps(torch.as_tensor(ckpt["std"]).tolist()),
        "tta": json.dumps(bool(cfg.train.tta)),
        "cnnlab_version": __version__,
        "epoch": str(ckpt.get("epoch", "")),
    }


def write_graph(eng: Engine, prep: DecodeSettings, path: Path, meta: dict[str, str]) -> None:
    """Trace the engine's eval path into an ONNX file at `path`, with a dynamic batch (and H, W for resize=keep)."""
    onnx = need("onnx")
    x = torch.zeros(2, prep.channels, prep.image_size, prep.image_size, dtype=torch.uint8)
    axes = {0: "batch", 2: "height", 3: "width"} if prep.resize == "keep" else {0: "batch"}
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")  # the legacy exporter's deprecation notice and tracer remarks
            # .eval(): the exporter puts the module back in its mode afterwards, and a new module is in training
            torch.onnx.export(
                Preprocessed(eng).eval(),
                (x,),
                str(path),
                dynamo=False,
                opset_version=OPSET,
                input_names=["image"],
                output_names=["logits"],
                dynamic_axes={"image": axes, "logits": {0: "batch"}},
            )
    except OSError:
        raise
    except Exception as e:  # an operator the exporter cannot write: name it, no traceback
        text = str(e).strip()
        raise UserError(f"cannot export this model to ONNX ({text.splitlines()[0][:160] if text else e!r})") from None
    model = onnx.load(str(path))
    for key, value in meta.items():
        model.metadata_props.add(key=key, value=value)
    model.producer_name, model.producer_version = "cnnlab", __version__
    onnx.save(model, str(path))


def check_files(run: Path, cfg: Config, n: int = CHECK_IMAGES) -> list[Path]:
    """Up to n of the validation images the run's split.csv lists (its training images if it lists none) that
    are still on disk; none when the split or the data cannot be read."""
    if not cfg.data.path:
        return []
    try:
        with open(Path(run) / run_folder.SPLIT, newline="", encoding="utf-8") as f:
            rows = [(r["path"], r.get("split")) for r in csv.DictReader(f)]
    except (OSError, UnicodeDecodeError, csv.Error, KeyError, TypeError):
        return []
    try:
        root = check_root(Path(cfg.data.path))  # a label file's rows are relative to its folder
    except UserError:
        return []
    for split in ("val", "train"):
        listed = (root / p for p, s in rows if s == split)
        found = list(itertools.islice((p for p in listed if p.is_file()), n))
        if found:
            return found
    return []


def check_images(run: Path, cfg: Config, prep: DecodeSettings) -> tuple[list[np.ndarray], str]:
    """uint8 arrays to check the file on, decoded as `cnnlab predict` decodes, and what they are."""
    arrays = []
    for p in check_files(run, cfg):
        try:
            arrays.append(decode(p, prep)[0])
        except BadImage:
            continue  # the run skipped it too
    if arrays:
        return arrays, f"{len(arrays)} of the run's images"
    warnings.warn(
        f"no image of {run}'s data is readable at {cfg.data.path or '(no data path)'}: the export is "
        "checked on random images instead",
        UserWarning,
        stacklevel=3,
    )
    side = max(16, round(prep.image_size / 16) * 16) if prep.resize == "keep" else prep.image_size
    rng = np.random.default_rng(0)
    return list(rng.integers(0, 256, (8, prep.channels, side, side), dtype=np.uint8)), "8 random images"


@torch.inference_mode()
def torch_logits(eng: Engine, arrays: list[np.ndarray]) -> np.ndarray:
    return np.concatenate([eng.logits(eng.eval_input(torch.from_numpy(a)[None])).numpy() for a in arrays])


def export_onnx(run: Path, out: Path, log=print) -> dict:
    """Write the run's best checkpoint to `out` as ONNX, checked against PyTorch; returns the check's figures."""
    run, out = Path(run), Path(out)
    for module in ("onnx", "onnxruntime"):  # before any work: a missing package is the first thing said
        need(module)
    cfg, ckpt, eng = cpu_engine(run)
    output_folder(out.parent, protected_paths(cfg.data.path), "ONNX file's folder")
    if out.is_dir():
        raise UserError(f"{out} is a folder: give the ONNX file's name, e.g. {out / 'model.onnx'}")
    prep = DecodeSettings.of(cfg.data)
    arrays, what = check_images(run, cfg, prep)
    with atomic_write(out) as tmp:
        write_graph(eng, prep, tmp, metadata(cfg, ckpt))
        try:  # inside the write only so that a failed check leaves no file; its errors are not write errors
            ours, theirs = torch_logits(eng, arrays), onnx_logits(open_model(tmp), arrays)
        except RuntimeError as e:
            raise UserError(f"the exported model fails on {what}: {str(e).strip().splitlines()[0][:160]}") from None
        logit_diff = float(np.abs(ours - theirs).max())
        prob_diff = float(np.abs(softmax(ours) - softmax(theirs)).max())
        log(
            f"checked on {what}: max |logit difference| {logit_diff:.2e}, max |probability difference| "
            f"{prob_diff:.2e} (PyTorch vs onnxruntime)"
        )
        if not logit_diff <= TOLERANCE:  # NaN fails too
            raise UserError(
                f"the ONNX model differs from PyTorch by {logit_diff:.2e} in a logit (tolerance "
                f"{TOLERANCE:g}) on {what}: {out} was not written"
            )
    return {
        "path": str(out),
        "checked": len(arrays),
        "max_logit_diff": logit_diff,
        "max_prob_diff": prob_diff,
        "epoch": ckpt.get("epoch"),
    }
