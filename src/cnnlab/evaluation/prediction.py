"""Predictions for image files: the rows `cnnlab predict` prints, from a run (`predict_files`) or, through the same
`prediction_rows`, from an ONNX file on onnxruntime alone (`cnnlab.export.onnx_runtime`).

No torch at import: the ONNX path imports `prediction_rows` from here and must not pull torch in.
"""

from __future__ import annotations

from pathlib import Path

from cnnlab.data.decode import DecodeSettings
from cnnlab.data.folders import Sample, printable
from cnnlab.data.image_files import read_images


def prediction_rows(files: list[Path], probs, classes: list[str]) -> list[dict]:
    """The rows `cnnlab predict` prints, one a file: path, label, probs (from a checkpoint or an ONNX file)."""
    return [
        {
            "path": printable(f),
            "label": classes[int(pr.argmax())],
            "probs": {c: float(pr[i]) for i, c in enumerate(classes)},
        }
        for f, pr in zip(files, probs, strict=True)
    ]


def predict_files(run: Path, paths, batch_size: int = 256) -> list[dict]:
    """Rows of path, label and class probabilities for image files and folders, from the run's best checkpoint."""
    import torch

    from cnnlab.data.cache import ImageSet
    from cnnlab.evaluation.loading import load_run
    from cnnlab.training.loops import predict_logits

    cfg, ckpt, eng = load_run(run)
    prep = DecodeSettings.of(cfg.data)
    files, arrays = read_images(paths, prep)
    tensors = [torch.from_numpy(a) for a in arrays]
    images = ImageSet(
        images=torch.stack(tensors) if prep.resize != "keep" else tensors,
        labels=torch.zeros(len(files), dtype=torch.long),
        samples=[Sample(f, -1, "predict") for f in files],
        sizes=[],
        modes=[],
    )
    probs = predict_logits(eng, images, batch_size).softmax(1)
    return prediction_rows(files, probs, list(ckpt["classes"]))
