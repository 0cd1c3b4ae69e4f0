"""A data set larger than memory would hold comfortably: decode it into the store, train one epoch memory-mapped.

    python benchmarks/big_data.py --images 40000 --size 224 [--subset 4000] [--workdir DIR] [--json]

1. Generates N images (4 classes of smooth random texture with a bright disc, square, bar or ring; JPEG
   quality 90, `--size` px square) into WORKDIR/images/train/<class>/, on every core; a folder generated before
   with the same N and size is reused.
2. Decodes them into a fresh decode cache (WORKDIR/cache) at `--size` px, RGB: `decode_images_per_s`, and the
   decoded pixels' size on disk (`data_gb`).
3. Trains one epoch of a small network (cnnlab's resnet, width 8, one block a stage, bf16 where the CPU has it)
   on all N with `--set cache=mmap`, in a child process whose peak resident memory (`peak_rss_gb`: the
   child's ru_maxrss from wait4, mapped file pages it touched included) is what the claim is about.
4. Trains the same epoch on the first `--subset` images (which fit in memory) with `cache=memory` and
   `cache=mmap`, alternated, `--repeats` times each: `throughput_ratio` = the median mapped / the median in-memory
   training images/s on the same images (one run of an epoch varies by up to 10% on a shared 2-core machine).

Training images/s is the run's own `images_per_s` (history.csv: training images / the epoch's seconds, which
include validating 5% of the images, the same share in every run); the runs use the machine's cores as `cnnlab
train` does by default. The full-N mapped rate is reported beside the subset's (`train_images_per_s`).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

CLASSES = ("disc", "square", "bar", "ring")
TRAIN = [
    *("--model", "resnet", "--set", "width=8", "--set", "depth=1", "--set", "dropout=0"),
    *("--epochs", "1", "--batch-size", "64", "--set", "eval_batch_size=128", "--set", "val_fraction=0.05"),
    *("--set", "hflip=true", "-q"),
]


def _render(job: tuple[Path, int, int, int]) -> None:
    """Images [start, stop) of class `c` at `size` px: a smooth random texture and the class's shape."""
    import numpy as np
    from PIL import Image, ImageDraw

    folder, c, size, (start, stop) = job[0], job[1], job[2], job[3]
    for i in range(start, stop):
        rng = np.random.default_rng([c, i])
        low = rng.integers(0, 120, (8, 8, 3), dtype=np.uint8)
        im = Image.fromarray(low).resize((size, size), Image.BICUBIC)
        draw = ImageDraw.Draw(im)
        x, y = (int(v) for v in rng.integers(size // 4, 3 * size // 4, 2))
        r, col = int(rng.integers(size // 10, size // 5)), tuple(int(v) for v in rng.integers(150, 256, 3))
        box = [x - r, y - r, x + r, y + r]
        if c == 0:
            draw.ellipse(box, fill=col)
        elif c == 1:
            draw.rectangle(box, fill=col)
        elif c == 2:
            draw.rectangle([x - r, y - r // 4, x + r, y + r // 4], fill=col)
        else:
            draw.ellipse(box, outline=col, width=max(2, r // 4))
        im.save(folder / f"{i:06d}.jpeg", quality=90)


def generate(root: Path, n: int, size: int) -> float:
    """N images under root/train/<class>/ (reused when root/made.json says the same); -> seconds."""
    marker = root / "made.json"
    if marker.is_file() and json.loads(marker.read_text()) == {"images": n, "size": size}:
        return 0.0
    shutil.rmtree(root, ignore_errors=True)
    t0, per = time.perf_counter(), n // len(CLASSES)
    jobs = []
    for c, name in enumerate(CLASSES):
        folder = root / "train" / name
        folder.mkdir(parents=True)
        count = per + (1 if c < n % len(CLASSES) else 0)
        jobs += [(folder, c, size, (s, min(s + 500, count))) for s in range(0, count, 500)]
    with ProcessPoolExecutor(os.cpu_count()) as pool:
        list(pool.map(_render, jobs))
    marker.write_text(json.dumps({"images": n, "size": size}))
    return time.perf_counter() - t0


def decode(root: Path, size: int, cache: Path) -> dict:
    """Decode every image into a fresh store -> images/s and the pixels' size on disk."""
    from cnnlab.data.cache import load_images
    from cnnlab.data.decode import DecodeSettings
    from cnnlab.data.folders import scan

    shutil.rmtree(cache, ignore_errors=True)
    samples = scan(root).splits["train"]
    t0 = time.perf_counter()
    images, bad, stats = load_images(samples, root, DecodeSettings(size), cache, mode="mmap")
    seconds = time.perf_counter() - t0
    on_disk = sum(p.stat().st_size for p in cache.rglob("shard-*.u8"))
    return {"decoded": len(images), "bad": len(bad), "decode_s": round(seconds, 1),
            "decode_images_per_s": round(stats.decoded / seconds, 1), "data_gb": round(on_disk / 1e9, 2)}  # fmt: skip


def train(data: Path, out: Path, size: int, cache: Path, mode: str, extra: list[str]) -> dict:
    """One epoch in a child process -> its images/s (history.csv) and its peak resident memory (wait4)."""
    shutil.rmtree(out, ignore_errors=True)
    cmd = [sys.executable, "-m", "cnnlab", "train", "--data", str(data), "--out", str(out), "--image-size", str(size)]
    cmd += [*TRAIN, "--set", f"cache={mode}", *extra]
    env = {**os.environ, "CNNLAB_CACHE": str(cache)}
    t0 = time.perf_counter()
    child = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    err = child.stderr.read().decode()
    _, status, usage = os.wait4(child.pid, 0)
    child.returncode = os.waitstatus_to_exitcode(status)
    if child.returncode:
        sys.exit(f"failed ({child.returncode}): {' '.join(cmd)}\n{err[-2000:]}")
    with open(out / "history.csv", newline="") as f:
        row = next(csv.DictReader(f))
    return {
        "images_per_s": round(float(row["images_per_s"]), 1),
        "epoch_s": round(float(row["epoch_s"]), 1),
        "wall_s": round(time.perf_counter() - t0, 1),
        "peak_rss_gb": round(usage.ru_maxrss * 1024 / 1e9, 3),
    }


def subset(root: Path, n: int, dest: Path) -> Path:
    """A label file of the first n images (every class in turn), so the subset trains from the same store."""
    from cnnlab.data.folders import scan

    rows = sorted(scan(root).splits["train"], key=lambda s: (int(s.path.stem), s.label))[:n]
    dest.parent.mkdir(parents=True, exist_ok=True)
    with open(dest, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "label"])
        w.writerows([(os.path.relpath(s.path, dest.parent), CLASSES[s.label]) for s in rows])
    return dest


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=40000)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--subset", type=int, default=4000, help="images of the in-memory comparison")
    ap.add_argument("--repeats", type=int, default=3, help="subset runs of each kind, alternated (median)")
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/cnnlab-big-data"))
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    work = args.workdir
    images, cache = work / "images", work / "cache"
    generated_s = generate(images, args.images, args.size)
    dec = decode(images, args.size, cache)
    full = train(images, work / "run-mmap-full", args.size, cache, "mmap", [])
    labels = subset(images, min(args.subset, args.images), work / "subset" / "labels.csv")
    memory, mapped = [], []
    for i in range(args.repeats):  # alternated, so that a slower spell of the machine hits both
        memory.append(train(labels, work / f"run-memory-subset-{i}", args.size, cache, "memory", []))
        mapped.append(train(labels, work / f"run-mmap-subset-{i}", args.size, cache, "mmap", []))
    rate = {k: statistics.median(r["images_per_s"] for r in runs) for k, runs in (("memory", memory), ("mmap", mapped))}
    from cnnlab.studies.reports import machine

    result = {
        "machine": machine(),
        "date": time.strftime("%Y-%m-%d"),
        "images": args.images,
        "size": args.size,
        "generate_s": round(generated_s, 1),
        **dec,
        "peak_rss_gb": full["peak_rss_gb"],
        "train_images_per_s": full["images_per_s"],
        "subset": min(args.subset, args.images),
        "repeats": args.repeats,
        "train_images_per_s_memory": rate["memory"],
        "train_images_per_s_mmap_subset": rate["mmap"],
        "throughput_ratio": round(rate["mmap"] / rate["memory"], 3),
        "full_vs_memory_ratio": round(full["images_per_s"] / rate["memory"], 3),
        "peak_rss_gb_memory_subset": max(r["peak_rss_gb"] for r in memory),
        "runs": {"mmap_full": full, "memory_subset": memory, "mmap_subset": mapped},
        "images_per_s_source": "history.csv images_per_s (training images / epoch seconds, validation included)",
    }
    print(json.dumps(result, indent=1) if args.json else "\n".join(f"{k}: {v}" for k, v in result.items()))
    return result


if __name__ == "__main__":
    main()
