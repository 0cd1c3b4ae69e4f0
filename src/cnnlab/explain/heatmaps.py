"""Explanations (`cnnlab explain`): heatmaps of what drove a run's prediction (Grad-CAM, Grad-CAM++ and the other
maps of METHODS, from the grad-cam package, through `evaluation.explain_arrays`), their overlays, and how well they
point at known boxes (`localisation`: the pointing game, strict and with a tolerance, and the heatmap's energy inside
the box, beside honest baselines: a random heatmap, the image centre, a class prior from the run's training boxes;
the scores in explain/pointing.py, the figures and files in explain/report.py).

API (kept stable for the web demo):
  heatmaps(run, paths, method=None, target=None, which="best", layer=None) -> [{path, label, prob, probs,
      target, heatmap, image}]: images decoded as `cnnlab predict` decodes them.
  explain_arrays(eng, arrays, classes, method=None, target=None, *, model_name, layer=None) -> the same dicts
      without path, for images already decoded (see evaluation/cam.py).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from cnnlab.data.boxes import read_boxes
from cnnlab.data.decode import BadImage, DecodeSettings, decode_with_geometry
from cnnlab.data.folders import check_root, printable
from cnnlab.data.image_files import read_images
from cnnlab.data.labels import protected_paths
from cnnlab.data.manifest import read_manifest
from cnnlab.errors import UserError
from cnnlab.evaluation.cam import METHODS, cam_class, explain_arrays, resolve_method
from cnnlab.evaluation.loading import load_run
from cnnlab.explain.pointing import ClassPrior, box_scores, class_prior, point_hits, tolerance_px
from cnnlab.explain.report import summarize, write_localisation
from cnnlab.files import output_folder

__all__ = ["METHODS", "box_scores", "explain_arrays", "explain_images", "heatmaps", "localisation", "read_boxes"]
GALLERY = 12  # hits and misses each in the --boxes gallery
SHEET = 64  # images at most in the contact sheet of `cnnlab explain IMAGES`


def heatmaps(
    run, paths, method: str | None = None, target: str | None = None, which: str = "best", layer: str | None = None
) -> list[dict]:
    """A heatmap for each image file (or folder of images), from the run's `which` checkpoint: dicts of path,
    label (the predicted class), prob (its probability), probs ({class: prob}), target (the class explained),
    heatmap (H x W float32 in [0, 1]) and image (H x W x C uint8), at the decoded image's size. layer: module names
    (comma-joined: their maps fused) instead of the model's default layer."""
    cam_class(method or "gradcam")  # an unknown method or a missing package, before the checkpoint loads
    cfg, ckpt, eng = load_run(Path(run), which)
    method = resolve_method(method, cfg.model.model)
    layer_modules(cfg, eng, layer)  # an unknown layer, before any image is read
    files, arrays = read_images(list(paths), DecodeSettings.of(cfg.data))
    classes = list(ckpt["classes"])
    rows = explain_arrays(eng, arrays, classes, method, target, model_name=cfg.model.model, layer=layer)
    return [{"path": printable(f), **r} for f, r in zip(files, rows, strict=True)]


def layer_modules(cfg, eng, layer: str | None) -> list[str]:
    """The module names a heatmap explains (the model's default layer when `layer` is None); UserError for an
    unknown name or a model without a spatial feature map."""
    from cnnlab.training.models import cam_layer

    names = {id(m): n for n, m in eng.model.named_modules()}
    import torch

    d = cfg.data
    example = torch.zeros(1, d.channels, d.image_size, d.image_size)
    return [names.get(id(m), type(m).__name__) for m in cam_layer(cfg.model.model, eng.model, layer, example)]


def _layer_label(layer: str | None) -> str:
    return ",".join(p.strip() for p in layer.split(",")) if layer else "default"


def _peak(heatmap: np.ndarray) -> tuple[int, int]:
    row, col = np.unravel_index(int(np.argmax(heatmap)), heatmap.shape)
    return int(col), int(row)


def explain_images(
    run, paths, out, method: str | None = None, target: str | None = None, layer: str | None = None
) -> list[dict]:
    """`cnnlab explain RUN IMAGES --out DIR`: an overlay PNG an image (NAME.png) and contact_sheet.png; the rows
    of `heatmaps`, each with `overlay`, the PNG written."""
    from cnnlab.reporting.figures import heatmap_grid
    from cnnlab.training import run_folder

    cfg = run_folder.read_config(Path(run))
    method = resolve_method(method, cfg.model.model)
    # The run's data and the folders of the images explained are both read-only.
    inputs = protected_paths(cfg.data.path) + [p if Path(p).is_dir() else Path(p).parent for p in paths]
    out = output_folder(out, datasets=inputs, create=False)
    rows = heatmaps(run, paths, method, target, layer=layer)
    out = output_folder(out, datasets=inputs)
    what = method + (f", layer {_layer_label(layer)}" if layer else "")
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
        heatmap_grid([cell], Path(r["overlay"]), title=f"{name} ({what})", cols=1, side=4.0)
        cells.append({**cell, "caption": f"{name[:20]}\n{caption}"})
    heatmap_grid(
        cells[:SHEET],
        out / "contact_sheet.png",
        cols=8,
        title=f"{what}: {run}" + (f" (first {SHEET} of {len(cells)})" if len(cells) > SHEET else ""),
    )
    return rows


# ------------------------------------------------------------------------------------ box scores


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


@dataclass
class _Job:
    """What scoring a chunk of images needs: the loaded run, the data and boxes, the heatmap asked for, the class
    prior, and where kept gallery cells (`shown`) and skipped images (`counts`) go."""

    eng: object
    cfg: object
    classes: list[str]
    root: Path
    table: dict
    method: str
    target: str | None
    layer: str | None
    prior: ClassPrior
    shown: dict = field(default_factory=lambda: {"hits": _Sample(), "misses": _Sample()})
    counts: dict = field(default_factory=lambda: {"skipped": [], "no_area": 0})


def _score(job: _Job, items) -> list[dict]:
    """Decode, explain and score one chunk of items; kept gallery cells go to `job.shown`, skips to `job.counts`."""
    prep, decoded = DecodeSettings.of(job.cfg.data), []
    for key, label in items:
        try:
            arr, _, _, geometry = decode_with_geometry(job.root / key, prep)
        except BadImage as e:
            job.counts["skipped"].append(f"{key} ({e})")
            continue
        mapped = [geometry.box(*b) for b in job.table[key]]
        decoded.append((key, label, arr, [b for b in mapped if b[2] > b[0] and b[3] > b[1]]))
    if not decoded:
        return []
    explained = explain_arrays(
        job.eng,
        [d[2] for d in decoded],
        job.classes,
        job.method,
        job.target,
        model_name=job.cfg.model.model,
        layer=job.layer,
    )
    rows = []
    for (key, label, _, boxes), e in zip(decoded, explained, strict=True):
        row = _row(job, key, label, e, boxes) if boxes else None
        if row is None:  # the crop cut the box away: nothing to point at
            job.counts["no_area"] += 1
            continue
        rows.append(row)
        caption = f"{Path(key).name[:16]}: {e['label']} {e['prob']:.0%}\n{row['energy_in_box']:.0%} of heat in box"
        job.shown["hits" if row["hit"] >= 0.5 else "misses"].add(
            lambda e=e, boxes=boxes, caption=caption: {
                "image": e["image"],
                "heatmap": e["heatmap"],
                "boxes": boxes,
                "point": _peak(e["heatmap"]),
                "caption": caption,
            }
        )
    return rows


def _row(job: _Job, key: str, label: int, e: dict, boxes) -> dict | None:
    """One image's scores (None when its boxes cover no pixel): the heatmap's, the centre point's and its class
    prior's (the true class's, else the predicted one's), strict and with the tolerance."""
    heat = e["heatmap"]
    tol = tolerance_px(heat.shape)
    s = box_scores(heat, boxes, tol)
    if s["area"] == 0:
        return None
    true = job.classes[label] if label >= 0 else ""
    h, w = heat.shape
    centre = point_hits((w / 2, h / 2), boxes, tol)
    prior = point_hits(job.prior.point(true or e["label"], heat.shape), boxes, tol)
    return {
        "path": key,
        "label": e["label"],
        "true": true,
        "target": e["target"],
        "prob": e["prob"],
        "hit": s["hit"],
        "hit_tol": s["hit_tol"],
        "energy_in_box": s["energy"],
        "box_area": s["area"],
        "tol_area": s["tol_area"],
        "tol_px": tol,
        "centre_hit": centre[0],
        "centre_hit_tol": centre[1],
        "prior_class": true or e["label"],
        "prior_hit": prior[0],
        "prior_hit_tol": prior[1],
    }


def localisation(
    run,
    boxes,
    data=None,
    manifest=None,
    method: str | None = None,
    target: str | None = None,
    out=None,
    which: str = "best",
    chunk: int = 64,
    layer: str | None = None,
) -> dict:
    """`cnnlab explain RUN --boxes CSV`: how well the heatmaps point at the boxes (`box_scores`, strict and with
    the tolerance), over the boxed images (those of the manifest's test rows, with a manifest), each box mapped
    through the run's decoding (crop, resize, pad), beside the baselines: a random heatmap, the centre point, the
    class prior of the run's own training boxes (`class_prior`, never the scored images'). layer: module names
    instead of the model's default (comma-joined: maps fused). With `out`: explain.json, localisation.csv (a row
    an image), explain.md and galleries hits.png, misses.png (`report.write_localisation`)."""
    cam_class(method or "gradcam")
    cfg, ckpt, eng = load_run(Path(run), which)
    method = resolve_method(method, cfg.model.model)
    modules = layer_modules(cfg, eng, layer)
    classes = list(ckpt["classes"])
    if not (data or cfg.data.path):
        raise UserError("no dataset given: pass --data DIR")
    root = check_root(Path(data or cfg.data.path))
    protected = protected_paths(data or cfg.data.path)
    if out:
        out = output_folder(out, datasets=protected, create=False)
    table = read_boxes(boxes)
    items, unboxed = _box_items(root, table, boxes, manifest, classes)
    prep = DecodeSettings.of(cfg.data)
    prior = class_prior(run, root, classes, table, prep, exclude=[k for k, _ in items])
    job, rows = _Job(eng, cfg, classes, root, table, method, target, layer, prior), []
    for start in range(0, len(items), chunk):
        rows += _score(job, items[start : start + chunk])
    if skipped := job.counts["skipped"]:
        warnings.warn(f"skipped {len(skipped)} unreadable image(s), e.g. {skipped[0]}", UserWarning, stacklevel=2)
    if not rows:
        raise UserError("no image could be scored: none was readable with a box left after the crop")
    result = {
        "run": str(run),
        "method": method,
        "layer": _layer_label(layer),
        "layer_modules": modules,
        "target": target or "predicted",
        "data": str(root),
        "boxes": str(boxes),
        "manifest": str(manifest) if manifest else None,
        **summarize(rows, classes),
        **prior.as_json(),
        "n_skipped": len(skipped),
        "n_box_cropped_away": job.counts["no_area"],
        "n_listed_without_box": unboxed,
        "decode": vars(prep) | {"normalize": cfg.data.normalize},
    }
    if out:
        write_localisation(output_folder(out, datasets=protected), result, rows, job.shown)
    return result
