"""Explanations (`cnnlab explain`): heatmaps of what drove a run's prediction (Grad-CAM, Grad-CAM++ from the grad-cam
package, through `evaluation.explain_arrays`), their overlays, and how well they point at a known box (the pointing game
and the heatmap's energy inside the box, against a random heatmap's).

API (kept stable for the web demo):
  heatmaps(run, paths, method="gradcam", target=None, which="best") -> [{path, label, prob, probs, target, heatmap,
      image}]: images decoded as `cnnlab predict` decodes them.
  explain_arrays(eng, arrays, classes, method="gradcam", target=None, *, model_name) -> the same dicts without path,
      for images already decoded (see evaluation/cam.py).
"""

from __future__ import annotations

import csv
import json
import warnings
from pathlib import Path

import numpy as np

from cnnlab.data.decode import BadImage, DecodeSettings, decode_with_geometry
from cnnlab.data.folders import check_root, printable
from cnnlab.data.image_files import read_images
from cnnlab.data.manifest import read_manifest
from cnnlab.errors import UserError
from cnnlab.evaluation.cam import METHODS, cam_class, explain_arrays
from cnnlab.evaluation.loading import load_run
from cnnlab.files import output_folder, write_text

__all__ = ["METHODS", "box_scores", "explain_arrays", "explain_images", "heatmaps", "localisation", "read_boxes"]
GALLERY = 12  # hits and misses each in the --boxes gallery
SHEET = 64  # images at most in the contact sheet of `cnnlab explain IMAGES`


def heatmaps(run, paths, method: str = "gradcam", target: str | None = None, which: str = "best") -> list[dict]:
    """A heatmap for each image file (or folder of images), from the run's `which` checkpoint: dicts of path,
    label (the predicted class), prob (its probability), probs ({class: prob}), target (the class explained),
    heatmap (H x W float32 in [0, 1]) and image (H x W x C uint8), at the decoded image's size."""
    cam_class(method)  # an unknown method or a missing package, before the checkpoint loads
    cfg, ckpt, eng = load_run(Path(run), which)
    files, arrays = read_images(list(paths), DecodeSettings.of(cfg.data))
    rows = explain_arrays(eng, arrays, list(ckpt["classes"]), method, target, model_name=cfg.model.model)
    return [{"path": printable(f), **r} for f, r in zip(files, rows, strict=True)]


def _peak(heatmap: np.ndarray) -> tuple[int, int]:
    row, col = np.unravel_index(int(np.argmax(heatmap)), heatmap.shape)
    return int(col), int(row)


def explain_images(run, paths, out, method: str = "gradcam", target: str | None = None) -> list[dict]:
    """`cnnlab explain RUN IMAGES --out DIR`: an overlay PNG an image (NAME.png) and contact_sheet.png; the rows
    of `heatmaps`, each with `overlay`, the PNG written."""
    from cnnlab.reporting.figures import heatmap_grid
    from cnnlab.training import run_folder

    cfg = run_folder.read_config(Path(run))
    # The run's data and the folders of the images explained are both read-only.
    inputs = [cfg.data.path] * bool(cfg.data.path) + [p if Path(p).is_dir() else Path(p).parent for p in paths]
    out = output_folder(out, datasets=inputs, create=False)
    rows = heatmaps(run, paths, method, target)
    out = output_folder(out, datasets=inputs)
    cells, used = [], {"contact_sheet"}
    for r in rows:
        name = Path(r["path"]).stem
        stem, k = name, 1
        while stem in used:  # same name in two folders: both kept
            k += 1
            stem = f"{name}-{k}"
        used.add(stem)
        caption = f"{r['label']} {r['prob']:.1%}" + (f"\nheatmap: {r['target']}" if r["target"] != r["label"] else "")
        cell = {"image": r["image"], "heatmap": r["heatmap"], "caption": caption, "point": _peak(r["heatmap"])}
        r["overlay"] = str(out / f"{stem}.png")
        heatmap_grid([cell], Path(r["overlay"]), title=f"{name} ({method})", cols=1, side=4.0)
        cells.append({**cell, "caption": f"{name[:20]}\n{caption}"})
    heatmap_grid(
        cells[:SHEET],
        out / "contact_sheet.png",
        cols=8,
        title=f"{method}: {run}" + (f" (first {SHEET} of {len(cells)})" if len(cells) > SHEET else ""),
    )
    return rows


# ------------------------------------------------------------------------------------ box scores


def read_boxes(path) -> dict[str, list[tuple[float, float, float, float]]]:
    """A boxes CSV (path, cx, cy, w, h: centre and size relative to the original image, 0-1, the YOLO convention;
    paths relative to the data root) -> {path: [box, ...]}; several rows of one path are several boxes."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"boxes file not found: {path}")
    out: dict[str, list] = {}
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        if not reader.fieldnames or not {"path", "cx", "cy", "w", "h"} <= set(reader.fieldnames):
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


def box_mask(shape: tuple[int, int], boxes) -> np.ndarray:
    """H x W bool: the pixels whose centre lies in one of the boxes ((x0, y0, x1, y1) in continuous pixels)."""
    h, w = shape
    ys, xs = np.arange(h)[:, None] + 0.5, np.arange(w)[None, :] + 0.5
    mask = np.zeros(shape, dtype=bool)
    for x0, y0, x1, y1 in boxes:
        mask |= (xs >= x0) & (xs < x1) & (ys >= y0) & (ys < y1)
    return mask


def box_scores(heatmap: np.ndarray, boxes) -> dict:
    """Pointing game and energy of one heatmap against its boxes (pixels, as `box_mask` takes them).

    hit: 1 if the heatmap's maximum lies in a box; with several equal maxima, the share of them inside (a flat map
    scores the chance level, not a free hit). energy: the heatmap's share inside the boxes (a zero map: the area).
    area: the boxes' share of the image: a random heatmap's expected hit and energy."""
    heat = np.asarray(heatmap, dtype=np.float64)
    mask = box_mask(heat.shape, boxes)
    area = float(mask.mean())
    peaks = heat == heat.max()
    total = float(heat.sum())
    return {
        "hit": float(mask[peaks].mean()),
        "energy": float(heat[mask].sum() / total) if total > 0 else area,
        "area": area,
    }


class _Sample:
    """A uniform sample of k items from a stream (reservoir sampling, seeded: the same gallery every time)."""

    def __init__(self, k: int = GALLERY):
        self.k, self.n, self.items, self.rng = k, 0, [], np.random.default_rng(0)

    def add(self, make) -> None:
        """`make()` builds the item, only if it is kept."""
        self.n += 1
        if len(self.items) < self.k:
            self.items.append(make())
        elif (j := int(self.rng.integers(self.n))) < self.k:
            self.items[j] = make()


def _rel(path: Path, root: Path) -> str:
    try:
        return Path(path).relative_to(root).as_posix()
    except ValueError:
        return Path(path).resolve().relative_to(root).as_posix()


def _box_items(root: Path, table: dict, boxes_csv, manifest, classes: list[str]) -> tuple[list, int]:
    """The images to score, (relative path, true label or -1), and how many listed images have no box: every box
    row, or the manifest's (test) rows that have one."""
    labels: dict[str, int] = {}
    keys, unboxed = list(table), 0
    if manifest:
        try:
            labels = {_rel(s.path, root): s.label for s in read_manifest(Path(manifest), root, classes, split="test")}
        except ValueError:
            raise UserError(f"{manifest} lists images outside the data folder {root}") from None
        keys = [k for k in labels if k in table]
        unboxed = len(labels) - len(keys)
        if not keys:
            raise UserError(f"none of the images {manifest} lists has a box in {boxes_csv}")
    missing = [k for k in keys if not (root / k).is_file()]
    if missing:
        raise UserError(f"{boxes_csv}: {len(missing)} box row(s) name images that are not in {root}, e.g. {missing[0]}")
    return [(k, labels.get(k, -1)) for k in keys], unboxed


def _score(eng, cfg, classes, root: Path, items, table, method, target, shown, counts) -> list[dict]:
    """Decode, explain and score one chunk of items; kept gallery cells go to `shown`, skips to `counts`."""
    prep, decoded = DecodeSettings.of(cfg.data), []
    for key, label in items:
        try:
            arr, _, _, geometry = decode_with_geometry(root / key, prep)
        except BadImage as e:
            counts["skipped"].append(f"{key} ({e})")
            continue
        decoded.append((key, label, arr, [geometry.box(*b) for b in table[key]]))
    if not decoded:
        return []
    explained = explain_arrays(eng, [d[2] for d in decoded], classes, method, target, model_name=cfg.model.model)
    rows = []
    for (key, label, _, boxes), e in zip(decoded, explained, strict=True):
        s = box_scores(e["heatmap"], boxes)
        if s["area"] == 0:  # the crop cut the box away: nothing to point at
            counts["no_area"] += 1
            continue
        rows.append(
            {
                "path": key,
                "label": e["label"],
                "true": classes[label] if label >= 0 else "",
                "target": e["target"],
                "prob": e["prob"],
                "hit": s["hit"],
                "energy_in_box": s["energy"],
                "box_area": s["area"],
            }
        )
        caption = f"{Path(key).name[:16]}: {e['label']} {e['prob']:.0%}\n{s['energy']:.0%} of heat in box"
        shown["hits" if s["hit"] >= 0.5 else "misses"].add(
            lambda e=e, boxes=boxes, caption=caption: {
                "image": e["image"],
                "heatmap": e["heatmap"],
                "boxes": boxes,
                "point": _peak(e["heatmap"]),
                "caption": caption,
            }
        )
    return rows


def _summary(rows: list[dict], classes: list[str]) -> dict:
    mean = lambda rs, k: float(np.mean([r[k] for r in rs])) if rs else None  # noqa: E731
    out = {
        "n_images": len(rows),
        "pointing_game": mean(rows, "hit"),
        "energy_in_box": mean(rows, "energy_in_box"),
        "random_pointing_game": mean(rows, "box_area"),
        "random_energy_in_box": mean(rows, "box_area"),
    }
    known = [r for r in rows if r["true"]]
    by = "true" if known else "label"
    if known:
        correct = [r for r in known if r["label"] == r["true"]]
        out.update(
            accuracy=len(correct) / len(known),
            n_correct=len(correct),
            pointing_game_correct=mean(correct, "hit"),
            energy_in_box_correct=mean(correct, "energy_in_box"),
        )
    out["per_class"] = {
        c: {
            "n": len(rs),
            "pointing_game": mean(rs, "hit"),
            "energy_in_box": mean(rs, "energy_in_box"),
            "random_pointing_game": mean(rs, "box_area"),
        }
        for c in classes
        if (rs := [r for r in rows if r[by] == c])
    }
    out["per_class_by"] = "true class" if known else "predicted class"
    return out


def localisation(
    run,
    boxes,
    data=None,
    manifest=None,
    method: str = "gradcam",
    target: str | None = None,
    out=None,
    which: str = "best",
    chunk: int = 64,
) -> dict:
    """`cnnlab explain RUN --boxes CSV`: how well the heatmaps point at the boxes (`box_scores`), over the boxed
    images (those of the manifest's test rows, with a manifest), each box mapped through the run's decoding (crop,
    resize, pad). With `out`: explain.json, localisation.csv (a row an image) and galleries hits.png, misses.png."""
    cam_class(method)
    cfg, ckpt, eng = load_run(Path(run), which)
    classes = list(ckpt["classes"])
    if not (data or cfg.data.path):
        raise UserError("no dataset given: pass --data DIR")
    root = check_root(Path(data or cfg.data.path))
    if out:
        out = output_folder(out, datasets=[root], create=False)
    table = read_boxes(boxes)
    items, unboxed = _box_items(root, table, boxes, manifest, classes)
    shown, counts, rows = {"hits": _Sample(), "misses": _Sample()}, {"skipped": [], "no_area": 0}, []
    for start in range(0, len(items), chunk):
        rows += _score(eng, cfg, classes, root, items[start : start + chunk], table, method, target, shown, counts)
    if counts["skipped"]:
        warnings.warn(
            f"skipped {len(counts['skipped'])} unreadable image(s), e.g. {counts['skipped'][0]}",
            UserWarning,
            stacklevel=2,
        )
    if not rows:
        raise UserError("no image could be scored: none was readable with a box left after the crop")
    result = {
        "run": str(run),
        "method": method,
        "target": target or "predicted",
        "data": str(root),
        "boxes": str(boxes),
        "manifest": str(manifest) if manifest else None,
        **_summary(rows, classes),
        "n_skipped": len(counts["skipped"]),
        "n_box_cropped_away": counts["no_area"],
        "n_listed_without_box": unboxed,
        "decode": vars(DecodeSettings.of(cfg.data)) | {"normalize": cfg.data.normalize},
    }
    if out:
        _write_localisation(output_folder(out, datasets=[root]), result, rows, shown)
    return result


def _write_localisation(out: Path, result: dict, rows: list[dict], shown: dict) -> None:
    import io

    from cnnlab.reporting.figures import heatmap_grid

    write_text(out / "explain.json", json.dumps(result, indent=2))
    table = io.StringIO()
    writer = csv.DictWriter(table, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows({k: f"{v:.6g}" if isinstance(v, float) else v for k, v in r.items()} for r in rows)
    write_text(out / "localisation.csv", table.getvalue())
    for name, sample in shown.items():
        if sample.items:
            heatmap_grid(
                sample.items,
                out / f"{name}.png",
                cols=6,
                title=f"{name} of the pointing game ({result['method']}): {len(sample.items)} of "
                f"{sample.n}; green: the box, x: the heatmap's maximum",
            )
