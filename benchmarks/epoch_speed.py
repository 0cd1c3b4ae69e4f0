"""Seconds per training epoch: the assignment's pipeline against cnnlab's, same network, batch and input size.

    python benchmarks/epoch_speed.py --data ../shared/datasets/brain-tumor-mri [--limit 150] [--epochs 2] [--json]

(a) the assignment's way: torchvision ImageFolder with ToTensor() then Resize((128, 128)), decoding every JPEG
    every epoch, DataLoader(batch_size=256, shuffle=True), the BatchNorm+Dropout CNN in float32 made of torch.nn's
    own layers (nn.Sequential, nn.Dropout; cnnlab's own versions are part of (b)), Adam,
    class-weighted cross-entropy, predictions pulled to numpy every batch for the epoch's F1.
(b) cnnlab: the decode-once cache (timed cold, in a fresh cache folder), tensors batched in memory,
    channels_last, the configured precision, cnnlab's own train_one_epoch.
Both run in this one process, one after the other: a warm-up epoch, then E measured epochs each.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from cnnlab.config import Config, parse_sets
from cnnlab.data.cache import load_images
from cnnlab.data.decode import DecodeSettings
from cnnlab.data.folders import Dataset, scan
from cnnlab.studies.reports import machine
from cnnlab.training.models import build
from cnnlab.training.optimization import class_weights
from cnnlab.training.preparation import RunData, channel_stats
from cnnlab.training.trainer import Trainer

SIZE, BATCH = 128, 256


def _subset(samples, n_classes: int, limit: int | None):
    if not limit:
        return samples
    out = []
    for c in range(n_classes):
        out += sorted((s for s in samples if s.label == c), key=lambda s: str(s.path))[:limit]
    return out


def torch_layers(model: nn.Sequential) -> nn.Sequential:
    """The same network (layers, weights) made of torch.nn's own modules, as the assignment writes it: an
    nn.Sequential with nn.Dropout, not cnnlab's cheaper CPU versions (training/layers.py)."""
    plain = [nn.Dropout(m.p) if isinstance(m, nn.Dropout) else m for m in model]
    assert all(type(m).__module__.startswith("torch.nn") for m in plain), plain
    return nn.Sequential(*plain)


def seed_pipeline(train_dir: Path, keep: set[str], n_classes: int, weights: torch.Tensor, epochs: int) -> list[float]:
    """The assignment's loop, reproduced (its notebook's code is not copied; the pipeline is the same)."""
    from sklearn.metrics import f1_score
    from torchvision import datasets, transforms

    ds = datasets.ImageFolder(
        str(train_dir), transform=transforms.Compose([transforms.ToTensor(), transforms.Resize((SIZE, SIZE))])
    )
    ds.samples = [s for s in ds.samples if s[0] in keep]
    ds.imgs = ds.samples
    loader = torch.utils.data.DataLoader(ds, batch_size=BATCH, shuffle=True)
    torch.manual_seed(0)
    model = torch_layers(build(Config().model, 3, n_classes, SIZE))
    criterion = nn.CrossEntropyLoss(weight=weights)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    times = []
    for _ in range(epochs + 1):
        model.train()
        t0 = time.perf_counter()
        ys, ps = [], []
        for x, y in loader:
            out = model(x)
            loss = criterion(out, y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            ys.append(y.numpy())
            ps.append(out.argmax(1).detach().numpy())
        f1_score(np.concatenate(ys), np.concatenate(ps), average="macro")
        times.append(time.perf_counter() - t0)
    return times[1:]


def cnnlab_pipeline(cfg: Config, ds: Dataset, samples, epochs: int) -> dict:
    """cnnlab's own pieces: the cache, then a Trainer built as `cnnlab train` builds it, timed epoch by epoch."""
    root = ds.root
    with tempfile.TemporaryDirectory() as cache:
        t0 = time.perf_counter()
        images, _, stats = load_images(samples, root, DecodeSettings(SIZE, "squash", 3), cache)
        cold = time.perf_counter() - t0
        t0 = time.perf_counter()
        _, _, second = load_images(samples, root, DecodeSettings(SIZE, "squash", 3), cache)
        warm = time.perf_counter() - t0
    mean, std = channel_stats(images)
    # No validation is timed: the training images stand in for it.
    trainer = Trainer.build(cfg, RunData(Dataset(root, ds.classes, {"train": samples}), images, images, [], mean, std))
    times, waits = [], []
    for e in range(1, epochs + 2):
        t0 = time.perf_counter()
        r = trainer.train_epoch(e)
        times.append(time.perf_counter() - t0)
        waits.append(r["data_wait_s"])
    return {
        "engine": trainer.eng.describe(cfg.train.precision),
        "times": times[1:],
        "waits": waits[1:],
        "cold_decode_s": cold,
        "warm_load_s": warm,
        "decoded": stats.decoded,
        "second_decoded": second.decoded,
    }


def peak_rss_mb() -> float:
    """This process's peak resident memory (VmHWM) since the last reset."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def reset_peak_rss() -> None:
    # Linux: writing 5 to clear_refs resets VmHWM, so each pipeline's peak is measured on its own.
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


def flops_per_image(n_classes: int) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    model = torch_layers(build(Config().model, 3, n_classes, SIZE))  # the network's own count, whatever runs it
    x = torch.randn(8, 3, SIZE, SIZE)
    with FlopCounterMode(display=False) as fc:
        model(x).sum().backward()
    return fc.get_total_flops() / 8


# The CPU features an epoch's speed depends on: AVX2 or AVX-512, native bf16 (AVX-512 BF16, AMX).
FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_bf16")


def kernels() -> dict:
    """What this process runs: the CPU's SIMD flags (lscpu's), and the kernel levels ATen, oneDNN and MKL were
    allowed (the AVX2 emulation caps them with ATEN_CPU_CAPABILITY, ONEDNN_MAX_CPU_ISA, MKL_ENABLE_INSTRUCTIONS)."""
    try:
        flags = next(line.split(":", 1)[1].split() for line in open("/proc/cpuinfo") if line.startswith("flags"))
    except (OSError, StopIteration):
        flags = []
    return {
        "cpu_flags": [f for f in FLAGS if f in flags],
        "aten": torch.backends.cpu.get_cpu_capability(),
        **{k.lower(): os.environ[k] for k in ("ONEDNN_MAX_CPU_ISA", "MKL_ENABLE_INSTRUCTIONS") if k in os.environ},
    }


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", required=True)
    ap.add_argument("--limit", type=int, help="N images per class (sorted names)")
    ap.add_argument("--epochs", type=int, default=2, help="measured epochs per pipeline (after one warm-up)")
    ap.add_argument("--precision", default="auto", help="cnnlab precision: auto, fp32 or bf16")
    ap.add_argument("--skip-seed", action="store_true", help="time cnnlab only")
    ap.add_argument(
        "--set",
        dest="sets",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a cnnlab config override (e.g. channels_last=false), to compare settings",
    )
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)

    torch.set_num_threads(os.cpu_count() or 1)
    ds = scan(args.data)
    train_dir = ds.splits["train"][0].path.parent.parent
    n_classes = len(ds.classes)
    samples = _subset(ds.splits["train"], n_classes, args.limit)
    labels = torch.tensor([s.label for s in samples])
    weights = class_weights(labels, n_classes)
    cfg = Config().update(
        {
            "image_size": SIZE,
            "batch_size": BATCH,
            "precision": args.precision,
            "imbalance": "weights",
            "device": "cpu",
            **parse_sets(args.sets),
        }
    )

    seed_times = (
        []
        if args.skip_seed
        else seed_pipeline(train_dir, {str(s.path) for s in samples}, n_classes, weights, args.epochs)
    )
    seed_rss = peak_rss_mb()
    reset_peak_rss()
    torch.set_num_threads(cfg.train.threads or os.cpu_count() or 1)  # --set threads=N times cnnlab on N threads
    ours = cnnlab_pipeline(cfg, ds, samples, args.epochs)
    ours_rss = peak_rss_mb()
    flop = flops_per_image(n_classes)
    s_ours = float(np.mean(ours["times"]))
    result = {
        "machine": machine(),
        "kernels": kernels(),
        "data": str(ds.root),
        "images": len(samples),
        "limit": args.limit,
        "epochs_measured": args.epochs,
        "precision": args.precision,
        "threads": torch.get_num_threads(),
        "sets": args.sets,
        "seed_s_per_epoch": float(np.mean(seed_times)) if seed_times else None,
        "cnnlab_engine": ours["engine"],
        "cnnlab_s_per_epoch": s_ours,
        "ratio": float(np.mean(seed_times)) / s_ours if seed_times else None,
        "seed_images_per_s": len(samples) / float(np.mean(seed_times)) if seed_times else None,
        "cnnlab_images_per_s": len(samples) / s_ours,
        "data_wait_share": float(np.sum(ours["waits"]) / np.sum(ours["times"])),
        "cold_decode_s": ours["cold_decode_s"],
        "cache_hit_load_s": ours["warm_load_s"],
        "cache_hit_images_decoded": ours["second_decoded"],
        "gflop_per_image": flop / 1e9,
        "cnnlab_gflop_per_s": flop * len(samples) / s_ours / 1e9,
        "peak_rss_mb": ours_rss,
        "seed_peak_rss_mb": seed_rss if seed_times else None,
        "seed_epochs_s": seed_times,
        "cnnlab_epochs_s": ours["times"],
    }
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        for k, v in result.items():
            print(f"{k:>22}: {v:.3f}" if isinstance(v, float) else f"{k:>22}: {v}")
    return result


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
