"""Object boxes of a data set (`read_boxes`: a CSV of path, cx, cy, w, h, relative to the original image, the YOLO
convention), mapped into the decoded arrays (`decoded_boxes`: through the crop, resize and padding of
`DecodeSettings`), and rasterised (`box_mask`). Explain scores heatmaps against them; box-guided training
(`data.boxes`) reads those of its training images only.
"""

from __future__ import annotations

import csv
import hashlib
from pathlib import Path

import numpy as np

from cnnlab.data.decode import BadImage, DecodeSettings, decode_with_geometry
from cnnlab.errors import UserError

Box = tuple[float, float, float, float]  # (x0, y0, x1, y1) in continuous pixels of a decoded array
BOX_COLUMNS = ("path", "cx", "cy", "w", "h")


def read_boxes(path) -> dict[str, list[tuple[float, float, float, float]]]:
    """A boxes CSV (path, cx, cy, w, h: centre and size relative to the original image, 0-1, the YOLO convention;
    paths relative to the data root) -> {path: [box, ...]}; several rows of one path are several boxes."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"boxes file not found: {path}")
    out: dict[str, list] = {}
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        if not reader.fieldnames or not set(BOX_COLUMNS) <= set(reader.fieldnames):
            raise UserError(f"boxes file {path} needs the columns path, cx, cy, w, h")
        for i, row in enumerate(reader, start=2):
            try:
                box = tuple(float(row[k]) for k in ("cx", "cy", "w", "h"))
            except (TypeError, ValueError):
                raise UserError(f"{path}:{i}: cx, cy, w and h must be numbers") from None
            if not all(0 <= v <= 1 for v in box) or box[2] <= 0 or box[3] <= 0:
                raise UserError(f"{path}:{i}: cx, cy, w, h must lie in 0-1 (relative to the image), w and h > 0")
            out.setdefault(Path(row["path"]).as_posix(), []).append(box)
    if not out:
        raise UserError(f"boxes file {path} lists no boxes")
    return out


def file_record(path) -> dict:
    """What a run records of a boxes file: its absolute path, size in bytes and SHA-256."""
    path = Path(path).resolve()
    data = path.read_bytes()
    return {"path": str(path), "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}


def decoded_boxes(root: Path, rel_paths: list[str], table: dict, prep: DecodeSettings) -> dict[str, list[Box]]:
    """{relative path: its boxes in the decoded array's pixels} for the listed images that have a box (each image
    is opened again for its crop); boxes cropped away entirely are left out."""
    out: dict[str, list[Box]] = {}
    for rel in rel_paths:
        if rel not in table:
            continue
        try:
            geometry = decode_with_geometry(Path(root) / rel, prep)[3]
        except BadImage:
            continue  # the image itself is skipped by the loader, with its reason
        kept = [b for b in (geometry.box(*box) for box in table[rel]) if b[2] > b[0] and b[3] > b[1]]
        if kept:
            out[rel] = kept
    return out


def box_mask(shape: tuple[int, int], boxes) -> np.ndarray:
    """H x W bool: the pixels whose centre lies in one of the boxes ((x0, y0, x1, y1) in continuous pixels)."""
    h, w = shape
    ys, xs = np.arange(h)[:, None] + 0.5, np.arange(w)[None, :] + 0.5
    mask = np.zeros(shape, dtype=bool)
    for x0, y0, x1, y1 in boxes:
        mask |= (xs >= x0) & (xs < x1) & (ys >= y0) & (ys < y1)
    return mask
