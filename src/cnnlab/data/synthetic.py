"""The built-in synthetic eclipse set written to disk (`synth_eclipse`, `cnnlab data synth-eclipse`).

The real "Solar Eclipse Classification" set is not shipped, so this writes look-alikes (data/eclipse_render.py)
in its layout (``train/<class>/``, ``test/<class>/``, Keras-augmented JPEGs at quality 75), on worker processes,
with ``synth.json`` last. Everything is deterministic: each image draws from its own ``numpy`` Generator seeded
by (seed, split, class, index), so worker count and scheduling never change a byte of the output.
"""

from __future__ import annotations

import io
import json
import os
import time
from concurrent.futures import ProcessPoolExecutor
from functools import partial
from pathlib import Path

import numpy as np
from PIL import Image

from cnnlab.data.eclipse_render import (
    CLASSES,
    GENERATOR_VERSION,
    JPEG_QUALITY,
    KINDS,
    MIN_SIZE,
    SPLITS,
    augment_keras_style,
    render_eclipse,
)
from cnnlab.errors import UserError

# --------------------------------------------------------------------------------------------------
# Dataset writer
# --------------------------------------------------------------------------------------------------


def _image_rng(seed: int, split: str, class_index: int, index: int) -> np.random.Generator:
    """An independent stream per image; train and test never share one."""
    return np.random.default_rng(np.random.SeedSequence([seed, SPLITS.index(split), class_index, index]))


def _write_image(job: tuple[str, int, int], out: Path, seed: int, size: int) -> None:
    split, class_index, index = job
    rng = _image_rng(seed, split, class_index, index)
    tag = int(rng.integers(10_000))  # Keras save_to_dir names files <prefix>_<index>_<random>.<fmt>
    img = augment_keras_style(render_eclipse(KINDS[class_index], rng, size), rng)
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="JPEG", quality=JPEG_QUALITY)
    path = out / split / CLASSES[class_index] / f"Augmented_{index}_0_{tag}.jpeg"
    path.write_bytes(buf.getvalue())


def _write_chunk(jobs: list[tuple[str, int, int]], out: Path, seed: int, size: int) -> int:
    for job in jobs:
        _write_image(job, out, seed, size)
    return len(jobs)


def _params(train_per_class: int, test_per_class: int, size: int, seed: int) -> dict:
    return {
        "generator": "cnnlab.synth",
        "generator_version": GENERATOR_VERSION,
        "classes": list(CLASSES),
        "train_per_class": train_per_class,
        "test_per_class": test_per_class,
        "size": size,
        "seed": seed,
        "jpeg_quality": JPEG_QUALITY,
    }


def _summary(out: Path, params: dict, seconds: float, reused: bool) -> dict:
    counts = {split: {c: params[f"{split}_per_class"] for c in CLASSES} for split in SPLITS}
    return {
        "out": str(out),
        "counts": counts,
        "images": sum(sum(c.values()) for c in counts.values()),
        "size": params["size"],
        "seed": params["seed"],
        "seconds": round(seconds, 3),
        "reused": reused,
    }


def _check_target(out: Path, params: dict) -> bool:
    """True if `out` already holds this exact set; UserError if it holds anything else."""
    if out.exists() and not out.is_dir():
        raise UserError(f"'{out}' exists and is not a folder")
    if not out.exists() or not any(out.iterdir()):
        return False
    meta = out / "synth.json"
    try:
        previous = json.loads(meta.read_text())
    except (OSError, ValueError):
        previous = None
    if previous == params:
        return True
    what = "a synthetic set with other parameters" if previous else "other files"
    raise UserError(f"'{out}' is not empty (it holds {what}); choose a new folder or delete it first")


def synth_eclipse(
    out: str | Path,
    train_per_class: int = 200,
    test_per_class: int = 50,
    size: int = 128,
    seed: int = 0,
    workers: int | None = None,
    progress: bool = False,
) -> dict:
    """Write a synthetic eclipse set (`OUT/{train,test}/<class>/*.jpeg` plus `OUT/synth.json`).

    Returns a summary: out, counts per split and class, images, size, seed, seconds, reused.
    Re-running with identical parameters on a finished folder returns at once (reused=True).
    """
    if size < MIN_SIZE:
        raise UserError(f"image size must be at least {MIN_SIZE} px, got {size}")
    if train_per_class < 0 or test_per_class < 0:
        raise UserError("image counts per class cannot be negative")
    out = Path(out)
    params = _params(train_per_class, test_per_class, size, int(seed))
    if _check_target(out, params):
        return _summary(out, params, 0.0, reused=True)
    start = time.perf_counter()
    jobs = []
    for split in SPLITS:
        for ci, name in enumerate(CLASSES):
            (out / split / name).mkdir(parents=True, exist_ok=True)
            jobs += [(split, ci, i) for i in range(params[f"{split}_per_class"])]
    _run_jobs(jobs, out, params["seed"], size, workers, progress)
    # Written last: a folder without it is an interrupted run and is refused rather than reused.
    (out / "synth.json").write_text(json.dumps(params, indent=2) + "\n")
    return _summary(out, params, time.perf_counter() - start, reused=False)


_CHUNK = 16  # images per task sent to a worker process
# Starting worker processes costs ~0.3 s, more than rendering a few dozen images serially.
SERIAL_BELOW = 64


def _run_jobs(jobs, out: Path, seed: int, size: int, workers: int | None, progress: bool) -> None:
    workers = workers or min(2, os.cpu_count() or 1)
    work = partial(_write_chunk, out=out, seed=seed, size=size)
    chunks = [jobs[i : i + _CHUNK] for i in range(0, len(jobs), _CHUNK)]
    bar = _progress_bar(len(jobs), progress)
    if workers <= 1 or len(jobs) < SERIAL_BELOW:
        for c in chunks:
            bar(work(c))
        return
    with ProcessPoolExecutor(max_workers=workers) as pool:
        for done in pool.map(work, chunks):
            bar(done)


def _progress_bar(total: int, enabled: bool):
    if not enabled:
        return lambda n: None
    from cnnlab.reporting.progress import progress_bar

    bar = progress_bar(total=total, unit="img", desc="synth-eclipse", leave=True)

    def advance(n: int) -> None:
        bar.update(n)
        if bar.n >= total:
            bar.close()

    return advance
