"""Record the golden figures of tests/training/test_golden.py, for the kernel set of this process.

The goldens are the figures of cnnlab 0.4.0, the version whose assignment network trains each convolution and its
max-pooling as one step on the CPU (its bias added after the pooling; CHANGELOG.md). Before it they were those of
0.3.0 (Dropout's CPU mask from 16 random bits a value), 0.2.0 (augmentation drawn per image), and before that those of
the code before the redesign (commit 698ef8c), which the tree matched to the last digit on the sets recorded then;
each of those versions changed the numbers on purpose and re-recorded them. Record with this tree:

    PYTHONPATH=src python tests/training/golden/make_golden.py
    # the AVX2 set, on any x86-64 CPU with AVX2 (what the CI's second pass emulates; the vendor is part of it):
    ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 MKL_ENABLE_INSTRUCTIONS=AVX2 PYTHONPATH=src \
        python tests/training/golden/make_golden.py

Each kernel set is a folder kernels/VENDOR-NAME/: fingerprint.json (what the figures depend on: torch version,
ATen's CPU kernel level, oneDNN's and MKL's instruction-set caps, the extensions oneDNN dispatches on, the CPU
vendor), each config's history (NAME.csv) and every optimizer step's loss (NAME-steps.json), and the fixed run's
test figures. The train/validation split (split-NAME.csv) and the labels of every training batch
(labels-NAME.json) depend on no kernel and are shared.

kernels/intel-avx512+amx_bf16+amx_int8+... and kernels/intel-avx2 were written on a 2-core Intel Xeon with AMX, torch
2.14.1. A session on another vendor's CPU adds its own sets beside them (the same command); the sets of 0.1.0 on
AMD EPYC CPUs (AVX2 only; AVX-512 BF16) were removed with the change, not re-recorded. Regenerate only for a
change meant to alter training numbers, and say so in the commit and CHANGELOG.md.

legacy-run/ is a run written before the redesign (checkpoint format 1); its predict.json was written on the CPU
of legacy-run/fingerprint.json, where its predictions must match to the last digit.
"""

from __future__ import annotations

import csv
import json
import os
import sys
import tempfile
from contextlib import contextmanager
from pathlib import Path

HERE = Path(__file__).parent
KERNELS = HERE / "kernels"

# Two configs that between them pass through every input path, loss, optimizer and checkpoint branch the
# refactor moved: fixed-size batches with augmentation, mixup, EMA, warm-up + cosine, class weights and
# label smoothing; variable-size buckets with oversampling, per-image normalisation, noise, JPEG, erasing,
# Nesterov SGD, the plateau scheduler and flip TTA. One thread each: the figures do not depend on the cores.
CONFIGS = {
    "fixed": {
        "model": "simple-bn-dropout",
        "image_size": 32,
        "batch_size": 8,
        "epochs": 3,
        "seed": 3,
        "precision": "fp32",
        "threads": 1,
        "hflip": True,
        "rotate": 10.0,
        "brightness": 0.1,
        "mixup": 0.2,
        "ema": 0.9,
        "scheduler": "cosine",
        "warmup_epochs": 1,
        "imbalance": "weights",
        "label_smoothing": 0.1,
    },
    "buckets": {
        "model": "resnet",
        "width": 8,
        "depth": 1,
        "resize": "keep",
        "image_size": 32,
        "batch_size": 8,
        "epochs": 3,
        "seed": 5,
        "precision": "fp32",
        "threads": 1,
        "normalize": "image",
        "imbalance": "oversample",
        "optimizer": "sgd",
        "lr": 0.02,
        "nesterov": True,
        "scheduler": "plateau",
        "tta": True,
        "jpeg": 0.3,
        "erase": 0.3,
        "noise": 0.05,
    },
}
SPLIT_COLUMNS = ("path", "class", "split")


def make_shapes(root: Path, splits, size, seed, classes=("circle", "square", "triangle")) -> None:
    """tests/conftest.py's make_shapes as the goldens were recorded with it (kept here, so that neither a change
    there nor that conftest's imports, which the code before the redesign lacks, touch the goldens)."""
    import numpy as np
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(seed)
    for split, n in splits:
        for c, name in enumerate(classes):
            d = root / split / name
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
                im.save(d / f"img {i:03d}.png")


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
# Instruction-set levels without those extensions, lowest first, as ONEDNN_MAX_CPU_ISA and MKL_ENABLE_INSTRUCTIONS
# name them. Capped at one of them, oneDNN (MKL) runs the kernels it runs on a CPU of that level; under any other
# cap the fingerprint keeps the cap's name and the flags: too specific a fingerprint only costs an exact
# comparison, never a false one.
ONEDNN_LEVELS = ("SSE41", "AVX", "AVX2", "AVX512_CORE")
MKL_LEVELS = ("SSE4_2", "AVX", "AVX2", "AVX512")


def cpu_info() -> tuple[str, int, list[str]]:
    """(vendor, level: the index in ONEDNN_LEVELS, the ONEDNN_FLAGS it has) of this CPU, from /proc/cpuinfo."""
    vendor, flags = "", set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() == "vendor_id" and not vendor:
                    vendor = value.strip()
                elif key.strip() == "flags" and not flags:
                    flags = set(value.split())
    except OSError:
        pass
    avx2 = {"avx", "avx2", "fma"}
    levels = ({"sse4_1"}, {"avx"}, avx2, avx2 | {"avx512f", "avx512bw", "avx512dq", "avx512vl"})
    level = max((i for i, need in enumerate(levels) if need <= flags), default=0)
    return vendor, level, sorted(flags & set(ONEDNN_FLAGS))


def _capped(env: str, levels: tuple[str, ...], level: int) -> tuple[str, bool]:
    """(the level a library runs at on a CPU of `level` under the cap $env names, if any; whether that cap is one
    of `levels`, which leaves out the extensions)."""
    cap = os.environ.get(env, "").upper()
    if cap in levels:
        return levels[min(levels.index(cap), level)], True
    return (levels[level] if cap in ("", "ALL") else cap), False


def fingerprint() -> dict:
    """What the figures depend on to the last bit, beyond the code and the data: the torch build; the kernel
    level of ATen, of oneDNN (convolutions) and of MKL (matrix products) on this CPU, as ATEN_CPU_CAPABILITY,
    ONEDNN_MAX_CPU_ISA and MKL_ENABLE_INSTRUCTIONS cap them; the extensions oneDNN dispatches on, unless capped
    away; and the CPU vendor (MKL takes other paths on AMD than on Intel). Not the thread count: every run here
    uses one thread."""
    import torch

    vendor, level, flags = cpu_info()
    onednn, plain = _capped("ONEDNN_MAX_CPU_ISA", ONEDNN_LEVELS, level)
    return {
        "torch": torch.__version__.split("+")[0],
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "cpu_flags": [] if plain else flags,
        "onednn_isa": onednn,
        "mkl_isa": _capped("MKL_ENABLE_INSTRUCTIONS", MKL_LEVELS, level)[0],
        "cpu_vendor": vendor,
    }


VENDORS = {"AuthenticAMD": "amd", "GenuineIntel": "intel"}


def kernel_set_name(fp: dict) -> str:
    vendor = VENDORS.get(fp["cpu_vendor"], fp["cpu_vendor"].lower() or "unknown")
    return f"{vendor}-" + "+".join([fp["cpu_capability"].lower(), *fp["cpu_flags"]])


def recorded_sets() -> dict[str, dict]:
    """Each recorded kernel set's folder name -> its fingerprint."""
    return {
        d.name: json.loads((d / "fingerprint.json").read_text())
        for d in sorted(KERNELS.iterdir())
        if (d / "fingerprint.json").is_file()
    }


def matching_set() -> Path | None:
    """The recorded kernel set of this process, if any: there the figures must match to the last digit."""
    fp = fingerprint()
    return next((KERNELS / name for name, rec in recorded_sets().items() if rec == fp), None)


@contextmanager
def recording():
    """What the training loop does, read off torch as it runs: yields {"losses": every optimizer step's loss,
    from its backward pass; "labels": the targets of every training loss (per batch, and again per mixup
    partner)}, which depend on no kernel: the split, the order, the oversampling, the mixup pairs of every epoch."""
    import torch
    import torch.nn.functional as F

    seen, backward, cross_entropy = {"losses": [], "labels": []}, torch.Tensor.backward, F.cross_entropy

    def recorded_backward(self, *args, **kwargs):
        if self.dim() == 0 and self.requires_grad:
            seen["losses"].append(float(self.detach()))
        return backward(self, *args, **kwargs)

    def recorded_cross_entropy(logits, target, *args, **kwargs):
        if torch.is_grad_enabled() and logits.requires_grad:
            seen["labels"].append(target.tolist())
        return cross_entropy(logits, target, *args, **kwargs)

    torch.Tensor.backward, F.cross_entropy = recorded_backward, recorded_cross_entropy
    try:
        yield seen
    finally:
        torch.Tensor.backward, F.cross_entropy = backward, cross_entropy


def read_split(path: Path) -> list[tuple[str, ...]]:
    with open(path, newline="", encoding="utf-8") as f:
        return [tuple(row[k] for k in SPLIT_COLUMNS) for row in csv.DictReader(f)]


def train(fit, config, name: str, data: Path, out: Path) -> dict:
    """Train config `name` on `data` into `out`; -> what `recording` saw."""
    with recording() as seen:
        fit(config().update({"path": str(data), **CONFIGS[name]}), out)
    return seen


@contextmanager
def one_thread():
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def scores(run: Path, data: Path, test_run, predict) -> dict:
    """The test figures and three images' class probabilities of a finished run (one thread)."""
    images = sorted((data / "test").rglob("*.png"))[::4][:3]
    with one_thread():
        res = test_run(run, str(data))
        probs = [r["probs"] for r in predict(run, [str(p) for p in images])]
    return {
        "macro_f1": res["macro_f1"],
        "accuracy": res["accuracy"],
        "confusion_matrix": res["confusion_matrix"],
        "probs": probs,
    }


def _quiet(f):
    """`f` with its progress and log lines off, whichever way its version takes them."""
    import functools
    import inspect

    params = inspect.signature(f).parameters
    if "reporter" in params:
        from cnnlab.reporting.reporter import Reporter

        return functools.partial(f, reporter=Reporter.quiet())
    return functools.partial(
        f,
        **({"progress": False} if "progress" in params else {}),
        **({"log": lambda *a: None} if "log" in params else {}),
    )


def code():
    """fit, Config, test_run and predict of the cnnlab on the path (this tree's, or 698ef8c's), all quiet."""
    from cnnlab.config import Config

    try:
        from cnnlab.evaluation.prediction import predict_files as predict
        from cnnlab.evaluation.testing import test_run
        from cnnlab.training.trainer import fit
    except ImportError:  # the code before the redesign
        from cnnlab.evaluate import predict, test_run
        from cnnlab.train import fit
    return _quiet(fit), Config, _quiet(test_run), predict


def main(out: Path | None = None) -> None:
    """Record this kernel set into kernels/NAME (or `out`, split files included, to compare by hand)."""
    import cnnlab

    fit, config, test_run, predict = code()
    fp = fingerprint()
    shared = out or HERE
    out = out or KERNELS / kernel_set_name(fp)
    out.mkdir(parents=True, exist_ok=True)
    print(f"recording {out} with {Path(cnnlab.__file__).parent}: {fp}")
    with tempfile.TemporaryDirectory() as tmp:
        data = dataset(Path(tmp) / "data")
        for name in CONFIGS:
            seen = train(fit, config, name, data, Path(tmp) / name)
            with open(Path(tmp) / name / "history.csv", newline="") as f:
                rows = list(csv.DictReader(f))
            with open(out / f"{name}.csv", "w", newline="") as f:
                w = csv.DictWriter(f, [k for k in rows[0] if not k.startswith("val_recall_")])  # as before
                w.writeheader()
                w.writerows({k: r[k] for k in w.fieldnames} for r in rows)
            (out / f"{name}-steps.json").write_text(json.dumps(seen["losses"], indent=1) + "\n")
            labels = ",\n".join(map(json.dumps, seen["labels"]))  # a line a batch
            (shared / f"labels-{name}.json").write_text(f"[\n{labels}\n]\n")
            with open(shared / f"split-{name}.csv", "w", newline="", encoding="utf-8") as f:
                csv.writer(f).writerows([SPLIT_COLUMNS, *read_split(Path(tmp) / name / "split.csv")])
        scored = scores(Path(tmp) / "fixed", data, test_run, predict)
    (out / "fixed_test.json").write_text(json.dumps(scored, indent=2) + "\n")
    (out / "fingerprint.json").write_text(json.dumps(fp, indent=2) + "\n")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else None)
