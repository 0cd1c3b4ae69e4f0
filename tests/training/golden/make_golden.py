"""Regenerate the golden histories of tests/test_golden.py: `python tests/golden/make_golden.py`.

The committed files were written by the code at commit 698ef8c (before the train.py split), on a
2-core AMD EPYC with AVX-512 BF16, torch 2.14.1; fingerprint.json records what they depend on.
Regenerate them only for a change meant to alter training numbers, and say so in the commit.
"""

from __future__ import annotations

import csv
import json
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE.parent))

from conftest import make_shapes  # noqa: E402

# Two configs that between them pass through every input path, loss, optimizer and checkpoint branch the
# refactor moved: fixed-size batches with augmentation, mixup, EMA, warm-up + cosine, class weights and
# label smoothing; variable-size buckets with oversampling, per-image normalisation, noise, JPEG, erasing,
# Nesterov SGD, the plateau scheduler and flip TTA.
CONFIGS = {
    "fixed": {"model": "simple-bn-dropout", "image_size": 32, "batch_size": 8, "epochs": 3, "seed": 3,
              "precision": "fp32", "threads": 1, "hflip": True, "rotate": 10.0, "brightness": 0.1, "mixup": 0.2,
              "ema": 0.9, "scheduler": "cosine", "warmup_epochs": 1, "imbalance": "weights",
              "label_smoothing": 0.1},
    "buckets": {"model": "resnet", "width": 8, "depth": 1, "resize": "keep", "image_size": 32, "batch_size": 8,
                "epochs": 3, "seed": 5, "precision": "fp32", "threads": 1, "normalize": "image",
                "imbalance": "oversample", "optimizer": "sgd", "lr": 0.02, "nesterov": True, "scheduler": "plateau",
                "tta": True, "jpeg": 0.3, "erase": 0.3, "noise": 0.05},
}


def dataset(root: Path) -> Path:
    """Shapes in two sizes (so resize=keep makes two buckets): 20, 20 and 14 training images, 4 test images
    per class."""
    make_shapes(root, splits=(("train", 14), ("test", 4)), size=(40, 36), seed=7)
    make_shapes(root / "wide", splits=(("train", 6),), size=(64, 40), seed=8)
    for d in sorted((root / "wide" / "train").iterdir())[:2]:
        for f in d.iterdir():
            f.rename(root / "train" / d.name / f"wide {f.name}")
    return root


# oneDNN picks its kernels by these instruction-set extensions beyond ATen's capability level (AMX tiles and
# AVX-512 FP16 on recent Intel CPUs): the same "AVX512" level can round differently in the last bits.
ONEDNN_FLAGS = ("amx_bf16", "amx_int8", "amx_tile", "avx512_bf16", "avx512_fp16", "avx512_vnni", "avx_vnni")


def cpu_flags() -> list[str]:
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line.split(":", 1)[1].split() for line in f if line.startswith("flags")), [])
    except OSError:
        flags = []
    return sorted(set(flags) & set(ONEDNN_FLAGS))


def fingerprint() -> dict:
    import torch

    return {"torch": torch.__version__.split("+")[0], "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "cpu_flags": cpu_flags()}


def scores(run: Path, data: Path, test_run, predict) -> dict:
    """The test figures and three images' class probabilities of a finished run."""
    res = test_run(run, str(data), log=lambda *a: None)
    images = sorted((data / "test").rglob("*.png"))[::4][:3]
    return {"macro_f1": res["macro_f1"], "accuracy": res["accuracy"], "confusion_matrix": res["confusion_matrix"],
            "probs": [r["probs"] for r in predict(run, [str(p) for p in images])]}


def main() -> None:
    from cnnlab.config import Config
    from cnnlab.evaluation.prediction import predict_files
    from cnnlab.evaluation.testing import test_run
    from cnnlab.training.trainer import fit

    with tempfile.TemporaryDirectory() as tmp:
        data = dataset(Path(tmp) / "data")
        for name, over in CONFIGS.items():
            fit(Config().update({"path": str(data), **over}), Path(tmp) / name, progress=False)
            rows = list(csv.DictReader(open(Path(tmp) / name / "history.csv", newline="")))
            with open(HERE / f"{name}.csv", "w", newline="") as f:
                w = csv.DictWriter(f, list(rows[0]))
                w.writeheader()
                w.writerows(rows)
        scored = scores(Path(tmp) / "fixed", data, test_run, predict_files)
    (HERE / "fixed_test.json").write_text(json.dumps(scored, indent=2) + "\n")
    (HERE / "fingerprint.json").write_text(json.dumps(fingerprint(), indent=2) + "\n")


if __name__ == "__main__":
    main()
