"""How a heatmap points at its boxes, and the baselines it must beat (`cnnlab explain --boxes`).

All in the heatmap's pixels: the decoded array after the run's crop, resize and padding, where `Geometry.box`
puts the boxes ((x0, y0, x1, y1), continuous: pixel i covers [i, i + 1), its centre at i + 0.5).

- `box_scores`: one heatmap against its boxes: the strict pointing game (its maximum inside a box), with a
  tolerance (a maximum within `tolerance_px` of a box: 15/224 of the heatmap's longer side, 15 px at 224), and
  the energy in the boxes; with the areas a random heatmap would score.
- `point_hits`: the same game played by a fixed point (the heatmap's centre, a class prior).
- `ClassPrior` (`class_prior`): for each class, the densest point of the boxes of the run's own training images
  of that class (its split.csv train rows), never of the images scored; a class without a training box points
  at the centre.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from cnnlab.data.boxes import box_mask, decoded_boxes
from cnnlab.data.decode import BadImage, DecodeSettings, decode_with_geometry
from cnnlab.data.manifest import read_manifest
from cnnlab.errors import UserError

TOLERANCE = 15 / 224  # of the heatmap's longer side: 15 px at 224 px, the pointing game's usual tolerance


def tolerance_px(shape: tuple[int, int]) -> float:
    """The pointing game's tolerance for an H x W heatmap, in its pixels."""
    return TOLERANCE * max(shape)


def box_distance(xs, ys, boxes) -> np.ndarray:
    """The distance of each point (xs, ys: broadcastable arrays) to the nearest box rectangle (0 inside)."""
    xs, ys = np.asarray(xs, dtype=np.float64), np.asarray(ys, dtype=np.float64)
    out = np.full(np.broadcast(xs, ys).shape, np.inf)
    for x0, y0, x1, y1 in boxes:
        dx = np.maximum(np.maximum(x0 - xs, 0), xs - x1)
        dy = np.maximum(np.maximum(y0 - ys, 0), ys - y1)
        out = np.minimum(out, np.hypot(dx, dy))
    return out


def near_mask(shape: tuple[int, int], boxes, tol: float) -> np.ndarray:
    """H x W bool: the pixels whose centre lies within `tol` of a box (a superset of `box_mask`)."""
    h, w = shape
    ys, xs = np.arange(h)[:, None] + 0.5, np.arange(w)[None, :] + 0.5
    return (box_distance(xs, ys, boxes) <= tol) | box_mask(shape, boxes)


def box_scores(heatmap: np.ndarray, boxes, tol: float | None = None) -> dict:
    """Pointing game and energy of one heatmap against its boxes (pixels, as `box_mask` takes them).

    hit: 1 if the heatmap's maximum lies in a box; with several equal maxima, the share of them inside (a flat map
    scores the chance level, not a free hit). energy: the heatmap's share inside the boxes (a zero map: the area).
    area: the boxes' share of the image: a random heatmap's expected hit and energy. With `tol` (pixels), also
    hit_tol (the share of the maxima within tol of a box) and tol_area (the share of the image within tol)."""
    heat = np.asarray(heatmap, dtype=np.float64)
    mask = box_mask(heat.shape, boxes)
    area = float(mask.mean())
    peaks = heat == heat.max()
    total = float(heat.sum())
    out = {
        "hit": float(mask[peaks].mean()),
        "energy": float(heat[mask].sum() / total) if total > 0 else area,
        "area": area,
    }
    if tol is not None:
        near = near_mask(heat.shape, boxes, tol)
        out.update(hit_tol=float(near[peaks].mean()), tol_area=float(near.mean()))
    return out


def point_hits(point: tuple[float, float], boxes, tol: float) -> tuple[float, float]:
    """(strict, with tolerance) hits of a fixed point (x, y) in continuous pixels: strict as `box_mask` counts a
    pixel centre (x0 <= x < x1, y0 <= y < y1), with tolerance when within `tol` of a box."""
    x, y = point
    strict = any(x0 <= x < x1 and y0 <= y < y1 for x0, y0, x1, y1 in boxes)
    near = strict or float(box_distance(x, y, boxes)) <= tol
    return float(strict), float(near)


def densest_point(density: np.ndarray) -> tuple[int, int]:
    """(row, col) of the maximum; ties: the tied point nearest their centroid (the first such, row-major)."""
    tied = np.argwhere(density == density.max())
    dist = ((tied - tied.mean(axis=0)) ** 2).sum(axis=1)
    row, col = tied[int(np.argmin(dist))]
    return int(row), int(col)


@dataclass
class ClassPrior:
    """Each class's densest point of its training boxes, relative to the canvas ((u, v) in 0-1; None: no training
    box, the centre instead), how many training images made it, and where they came from."""

    grid: int
    points: dict[str, tuple[float, float] | None]
    images: dict[str, int]
    source: dict = field(default_factory=dict)

    def point(self, cls: str, shape: tuple[int, int]) -> tuple[float, float]:
        """The point (x, y) an H x W heatmap of class `cls` is pointed at: the prior, or the centre."""
        h, w = shape
        u, v = self.points.get(cls) or (0.5, 0.5)
        return u * w, v * h

    def as_json(self) -> dict:
        """The JSON keys: class_prior_images, class_prior_points, class_prior_fallback, class_prior_source."""
        points = {}
        for c, p in self.points.items():
            u, v = p or (0.5, 0.5)
            points[c] = {
                "x": round(u * self.grid, 3),
                "y": round(v * self.grid, 3),
                "x_rel": round(u, 6),
                "y_rel": round(v, 6),
                "images": self.images.get(c, 0),
                "fallback": None if p else "centre (no training box of this class)",
            }
        return {
            "class_prior_images": sum(self.images.values()),
            "class_prior_points": points,
            "class_prior_fallback": [c for c, p in self.points.items() if p is None],
            "class_prior_source": self.source,
        }


def _canvas_boxes(root: Path, rels: list[str], table: dict, prep: DecodeSettings) -> dict[str, list]:
    """{relative path: its boxes relative to its decoded canvas (0-1)}; for resize=keep each image's own canvas."""
    if prep.resize != "keep":
        s = float(prep.image_size)
        return {k: [tuple(v / s for v in b) for b in bs] for k, bs in decoded_boxes(root, rels, table, prep).items()}
    out = {}
    for rel in rels:
        try:
            geometry = decode_with_geometry(Path(root) / rel, prep)[3]
        except BadImage:
            continue
        w, h = geometry.canvas
        kept = [b for b in (geometry.box(*box) for box in table[rel]) if b[2] > b[0] and b[3] > b[1]]
        if kept:
            out[rel] = [(x0 / w, y0 / h, x1 / w, y1 / h) for x0, y0, x1, y1 in kept]
    return out


def _train_rows(run: Path, root: Path, classes: list[str]) -> list[tuple[str, str]]:
    """(relative path, class) of the run's split.csv train rows, read against `root`."""
    from cnnlab.training import run_folder

    samples = read_manifest(Path(run) / run_folder.SPLIT, root, classes, split="train")
    out = []
    for s in samples:
        try:
            out.append((Path(s.path).relative_to(root).as_posix(), classes[s.label]))
        except ValueError:
            continue  # an absolute path outside the data: it has no row in a boxes file relative to the root
    return out


def class_prior(run, root: Path, classes: list[str], table: dict, prep: DecodeSettings, exclude=()) -> ClassPrior:
    """The class prior of a run: the boxes of its split.csv train rows (less `exclude`, the images scored),
    summed as masks on an image_size grid (canvas-relative), each class's densest point. A split that cannot be
    read against `root` gives no prior (every class at the centre), with the reason in `source["note"]`."""
    from cnnlab.training import run_folder

    grid, exclude = prep.image_size, set(exclude)
    source = {"split": str(Path(run) / run_folder.SPLIT), "grid": [grid, grid]}
    try:
        rows = _train_rows(Path(run), Path(root), classes)
    except UserError as e:
        rows, source["note"] = [], f"no class prior from the run's split: {e}"
    boxed = [(k, c) for k, c in rows if k in table]
    kept = [(k, c) for k, c in boxed if k not in exclude]
    source.update(train_rows=len(rows), train_rows_boxed=len(boxed), left_out_scored=len(boxed) - len(kept))
    rel_boxes = _canvas_boxes(Path(root), [k for k, _ in kept], table, prep)
    density = {c: np.zeros((grid, grid)) for c in classes}
    images = dict.fromkeys(classes, 0)
    for k, c in kept:
        mask = box_mask((grid, grid), [tuple(v * grid for v in b) for b in rel_boxes.get(k, [])])
        if mask.any():  # an image counts once where its boxes overlap
            density[c] += mask
            images[c] += 1
    points = {}
    for c in classes:
        if images[c]:
            row, col = densest_point(density[c])
            points[c] = ((col + 0.5) / grid, (row + 0.5) / grid)
        else:
            points[c] = None
    return ClassPrior(grid, points, images, source)
