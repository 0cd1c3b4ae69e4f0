"""The built-in synthetic eclipse set written to disk (`synth_eclipse`, `cnnlab data synth-eclipse`).

The real "Solar Eclipse Classification" set is not shipped, so this writes look-alikes (data/eclipse_render.py)
in its layout (``train/<class>/``, ``test/<class>/``, Keras-augmented JPEGs at quality 75), on worker processes,
then ``boxes.csv``, then ``synth.json`` last. Everything is deterministic: each image draws from its own ``numpy``
Generator seeded by (seed, split, class, index), so worker count and scheduling never change a byte of the output.

``boxes.csv`` (`BOXES_FILE`): one row per image, ``path,cx,cy,w,h``, sorted by path (relative to the set, posix);
the box's centre and size relative to the saved image (0-1, the YOLO convention), written ``%.6f``. The box is
the Sun's disk, the photosphere of radius `sun_disk`, whole: the Moon in front of it, a horizon or clouds do not
shrink it, and the corona, prominences and glare around it are outside it (in a total eclipse it is the Moon's
dark disk, which covers the Sun's). It follows the augmentation: the part of the disk inside the rendered frame,
through the same affine map and flip (`keras_transform`), clipped to the saved frame, sampled every quarter pixel.
The boxes come from replaying each image's draws on copies of its generator, so they take no draw from it; a
finished set made before boxes existed gets its ``boxes.csv`` on a rerun, its images untouched.
"""

from __future__ import annotations

import copy
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
    keras_transform,
    render_eclipse,
    sun_disk,
)
from cnnlab.errors import UserError

# --------------------------------------------------------------------------------------------------
# Dataset writer
# --------------------------------------------------------------------------------------------------


def _image_rng(seed: int, split: str, class_index: int, index: int) -> np.random.Generator:
    """An independent stream per image; train and test never share one."""
    return np.random.default_rng(np.random.SeedSequence([seed, SPLITS.index(split), class_index, index]))


BOXES_FILE = "boxes.csv"
_BOX_STEP = 0.25  # pixels between the samples that find the visible part of the disk

Row = tuple[str, tuple[float, float, float, float]]  # relative path, (cx, cy, w, h)


def _image(job: tuple[str, int, int], out: Path | None, seed: int, size: int) -> Row:
    """Render one image, write it under `out` (None: only replay its draws), and return its box row."""
    split, class_index, index = job
    rng = _image_rng(seed, split, class_index, index)
    tag = int(rng.integers(10_000))  # Keras save_to_dir names files <prefix>_<index>_<random>.<fmt>
    rel = f"{split}/{CLASSES[class_index]}/Augmented_{index}_0_{tag}.jpeg"
    disk = sun_disk(KINDS[class_index], copy.deepcopy(rng), size)  # the render's first draws, on a copy
    img = render_eclipse(KINDS[class_index], rng, size)
    transform = keras_transform(img.shape, copy.deepcopy(rng))  # the augmentation's draws, on a copy
    if out is not None:
        buf = io.BytesIO()
        Image.fromarray(augment_keras_style(img, rng)).save(buf, format="JPEG", quality=JPEG_QUALITY)
        (out / rel).write_bytes(buf.getvalue())
    return rel, _disk_box(disk, transform, size)


def _disk_box(disk, transform, size: int) -> tuple[float, float, float, float]:
    """(cx, cy, w, h) relative to the augmented image: the bounding box of the disk's visible part.

    `disk`: centre y, x and radius in the rendered image (pixel j spans [j, j+1]). Output pixel o (array index)
    shows input point A o + offset; it shows the disk if that point is in the disk and inside the input frame.
    """
    a, offset, flip = transform
    centre, radius, step = np.array(disk[:2]) - 0.5, disk[2], _BOX_STEP  # array indices, as in the transform
    inv = np.linalg.inv(a)
    middle, half = inv @ (centre - offset), radius * np.linalg.norm(inv, axis=1)  # the disk's image: an ellipse
    lo, hi = np.maximum(middle - half, -0.5), np.minimum(middle + half, size - 0.5)
    ys, xs = (np.arange(lo[k] + step / 2, max(hi[k], lo[k] + step), step) for k in (0, 1))
    oy, ox = np.meshgrid(ys, xs, indexing="ij")
    iy, ix = a[0, 0] * oy + a[0, 1] * ox + offset[0], a[1, 0] * oy + a[1, 1] * ox + offset[1]
    inside = (iy - centre[0]) ** 2 + (ix - centre[1]) ** 2 <= radius * radius
    inside &= (iy >= -0.5) & (iy <= size - 0.5) & (ix >= -0.5) & (ix <= size - 0.5)
    rows, cols = np.flatnonzero(inside.any(axis=1)), np.flatnonzero(inside.any(axis=0))
    if rows.size:  # sample cells [s - step/2, s + step/2], array indices to pixel edges (+0.5)
        y0, y1, x0, x1 = ys[rows[0]], ys[rows[-1]], xs[cols[0]], xs[cols[-1]]
    else:  # the disk left the frame: one sample cell at the frame point nearest to it, so the row still exists
        y0 = y1 = float(np.clip(middle[0], step / 2 - 0.5, size - 0.5 - step / 2))
        x0 = x1 = float(np.clip(middle[1], step / 2 - 0.5, size - 0.5 - step / 2))
    y0, y1, x0, x1 = np.clip((y0 - step / 2, y1 + step / 2, x0 - step / 2, x1 + step / 2), -0.5, size - 0.5) + 0.5
    if flip:
        x0, x1 = size - x1, size - x0
    return float(x0 + x1) / (2 * size), float(y0 + y1) / (2 * size), float(x1 - x0) / size, float(y1 - y0) / size


def _write_chunk(jobs: list[tuple[str, int, int]], out: Path | None, seed: int, size: int) -> list[Row]:
    return [_image(job, out, seed, size) for job in jobs]


def _write_boxes(out: Path, rows: list[Row]) -> Path:
    """`out/boxes.csv`, sorted by path; through a temporary file, so a half-written one is never left."""
    lines = ["path,cx,cy,w,h"] + [rel + "".join(f",{v:.6f}" for v in box) for rel, box in sorted(rows)]
    path, tmp = out / BOXES_FILE, out / (BOXES_FILE + ".tmp")
    tmp.write_text("\n".join(lines) + "\n", encoding="utf-8")
    os.replace(tmp, path)
    return path


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
        "boxes": str(out / BOXES_FILE),
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
    """Write a synthetic eclipse set (`OUT/{train,test}/<class>/*.jpeg`, `OUT/boxes.csv`, then `OUT/synth.json`).

    Returns a summary: out, counts per split and class, images, size, seed, seconds, reused, boxes (the CSV).
    Re-running with identical parameters on a finished folder returns at once (reused=True); one without a
    boxes.csv (from an older cnnlab) first gets it, its images replayed in memory, never rewritten.
    """
    if size < MIN_SIZE:
        raise UserError(f"image size must be at least {MIN_SIZE} px, got {size}")
    if train_per_class < 0 or test_per_class < 0:
        raise UserError("image counts per class cannot be negative")
    out = Path(out)
    params = _params(train_per_class, test_per_class, size, int(seed))
    start = time.perf_counter()
    if _check_target(out, params):
        if not (out / BOXES_FILE).is_file():
            _write_boxes(out, _run_jobs(_jobs(params), None, params["seed"], size, workers, progress))
        return _summary(out, params, time.perf_counter() - start, reused=True)
    jobs = _jobs(params)
    for split in SPLITS:
        for name in CLASSES:
            (out / split / name).mkdir(parents=True, exist_ok=True)
    _write_boxes(out, _run_jobs(jobs, out, params["seed"], size, workers, progress))
    # Written last: a folder without it is an interrupted run and is refused rather than reused.
    (out / "synth.json").write_text(json.dumps(params, indent=2) + "\n")
    return _summary(out, params, time.perf_counter() - start, reused=False)


_CHUNK = 16  # images per task sent to a worker process
# Starting worker processes costs ~0.3 s, more than rendering a few dozen images serially.
SERIAL_BELOW = 64


def _jobs(params: dict) -> list[tuple[str, int, int]]:
    """(split, class index, image index) of every image of the set."""
    return [
        (split, ci, i) for split in SPLITS for ci in range(len(CLASSES)) for i in range(params[f"{split}_per_class"])
    ]


def _run_jobs(jobs, out: Path | None, seed: int, size: int, workers: int | None, progress: bool) -> list[Row]:
    """Render the jobs (written under `out`; None: replayed only) and return their box rows."""
    workers = workers or min(2, os.cpu_count() or 1)
    work = partial(_write_chunk, out=out, seed=seed, size=size)
    chunks = [jobs[i : i + _CHUNK] for i in range(0, len(jobs), _CHUNK)]
    bar = _progress_bar(len(jobs), progress)
    rows: list[Row] = []
    if workers <= 1 or len(jobs) < SERIAL_BELOW:
        for c in chunks:
            rows += work(c)
            bar(len(c))
        return rows
    with ProcessPoolExecutor(max_workers=workers) as pool:
        for done in pool.map(work, chunks):
            rows += done
            bar(len(done))
    return rows


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
