"""A model exported by `cnnlab export`, run on onnxruntime alone.

Nothing here imports torch: `cnnlab predict FILE.onnx` needs only onnxruntime, numpy and Pillow. The file holds
the network with its normalisation (and flip TTA), so predicting is decoding as cnnlab does (data/decode.py, with the
`DecodeSettings` the file's metadata describes), then one call of the graph on uint8 N x C x H x W batches.
"""

from __future__ import annotations

import importlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cnnlab.data.decode import CROP_POLICIES, RESIZE_POLICIES, DecodeSettings, parse_window
from cnnlab.data.image_files import read_images, shape_batches
from cnnlab.errors import UserError
from cnnlab.evaluation.prediction import prediction_rows

# The metadata `cnnlab export` writes (metadata_props, all strings; lists as JSON), the ones needed to predict first.
META_KEYS = (
    "classes",
    "image_size",
    "resize",
    "channels",
    "crop",
    "window",
    "normalize",
    "mean",
    "std",
    "tta",
    "cnnlab_version",
    "epoch",
)
NEEDED = META_KEYS[:5]
INSTALL = "pip install onnx onnxruntime (or: pip install cnnlab[export])"


def need(module: str):
    """onnx or onnxruntime, imported now; one error line that says how to install them when missing."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise UserError(f"{module} is not installed: {INSTALL}") from None


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0][:160] if text else type(e).__name__


@dataclass
class OnnxModel:
    path: Path
    session: Any  # onnxruntime.InferenceSession
    classes: list[str]
    prep: DecodeSettings
    meta: dict[str, str]


def open_model(path: Path) -> OnnxModel:
    """An exported file, ready to run on the CPU; one error line for a missing, damaged or foreign file."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"no such ONNX file: {path}")
    ort = need("onnxruntime")
    try:
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    except Exception as e:  # onnxruntime's own exception types: a truncated file, not ONNX at all, a bad graph
        raise UserError(f"{path} is damaged or not an ONNX model ({_first_line(e)})") from None
    meta = dict(session.get_modelmeta().custom_metadata_map)
    missing = [k for k in NEEDED if k not in meta]
    if missing:
        raise UserError(f"{path} was not written by `cnnlab export` (no {', '.join(missing)} in its metadata)")
    try:
        classes = json.loads(meta["classes"])
        prep = DecodeSettings(
            int(meta["image_size"]), meta["resize"], int(meta["channels"]), meta["crop"], meta.get("window", "")
        )
        parse_window(prep.window)
    except (ValueError, TypeError) as e:
        raise UserError(f"{path} has damaged cnnlab metadata ({_first_line(e)})") from None
    if (
        not isinstance(classes, list)
        or prep.resize not in RESIZE_POLICIES
        or prep.crop not in CROP_POLICIES
        or prep.channels not in (1, 3)
        or prep.image_size < 1
    ):
        raise UserError(f"{path} has damaged cnnlab metadata (classes {meta['classes'][:80]}, {prep})")
    return OnnxModel(path, session, [str(c) for c in classes], prep, meta)


def onnx_logits(model: OnnxModel, arrays: list[np.ndarray], batch_size: int = 256) -> np.ndarray:
    """Logits of C x H x W uint8 arrays, in their order: arrays of one shape go through together, in batches."""
    out = np.empty((len(arrays), len(model.classes)), dtype=np.float32)
    name = model.session.get_inputs()[0].name
    for idx in shape_batches(arrays, batch_size):
        try:
            out[idx] = model.session.run(None, {name: np.stack([arrays[i] for i in idx])})[0]
        except Exception as e:  # a graph that does not take these images: not what `cnnlab export` writes
            raise UserError(f"cannot run {model.path} on {arrays[idx[0]].shape} images ({_first_line(e)})") from None
    return out


def softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def predict_onnx(path: Path, paths, batch_size: int = 256) -> list[dict]:
    """`cnnlab predict FILE.onnx IMAGES`: the same rows as `evaluation.predict_files` gives for the run it
    came from."""
    model = open_model(path)
    files, arrays = read_images(paths, model.prep)
    return prediction_rows(files, softmax(onnx_logits(model, arrays, batch_size)), model.classes)
