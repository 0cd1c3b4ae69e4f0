"""`cnnlab data audit` (`run_audit`): exact and near duplicates within and across splits, label conflicts, and
test leakage (test images with a copy in train/val), on data/duplicates.py's hashes, thumbnails and `close_pairs`.

With an output folder it writes audit.json, leak_free_test.csv (the test images without a copy in train/val, as a
manifest), distance_hist.png and galleries of the copy groups; `format_audit` is the text the command prints.
"""

from __future__ import annotations

import csv
import json
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from cnnlab.data.decode import BadImage, DecodeSettings, decode
from cnnlab.data.duplicates import (
    DEFAULT_THRESHOLD,
    close_pairs,
    component_labels,
    file_hashes,
    hash_edges,
    sorted_groups,
    thumbnails,
)
from cnnlab.data.folders import Dataset, Sample, scan
from cnnlab.data.labels import protected_paths
from cnnlab.data.manifest import MANIFEST_FIELDS
from cnnlab.errors import UserError
from cnnlab.files import atomic_write, output_folder, write_text

TRAIN_SIDE = ("train", "val")  # the splits a model learns from or is chosen on
HIST_FACTOR = 3  # the distance histogram is exact up to HIST_FACTOR * threshold
GALLERY_LARGEST = 8
GALLERY_COLUMNS = 8
GALLERY_ROWS_PER_PAGE = 30


# -------------------------------------------------------------------------------------------- audit


def _scope(splits: list[str]) -> str:
    kinds = set(splits)
    return next(iter(kinds)) if len(kinds) == 1 else "across"


@dataclass
class _Index:
    """Every image of every split in scan order, and the pairs within the histogram cap (indices into it)."""

    samples: list[Sample]
    rel: list[str]
    split_of: np.ndarray
    label_of: np.ndarray
    hashes: list[str]
    readable: np.ndarray  # decoded, so compared by pixels too, not only by bytes
    pairs: torch.Tensor  # M x 2, i < j in thumbnail order, within HIST_FACTOR * threshold
    dist: torch.Tensor  # M, 0-1 scale
    near_pairs: list[list[int]]  # the pairs within the threshold itself

    @property
    def n(self) -> int:
        return len(self.samples)


def _index(ds: Dataset, threshold: float, cache_dir) -> _Index:
    samples = [s for split in ds.splits for s in ds.splits[split]]
    hashes = file_hashes([s.path for s in samples])
    thumbs, good = thumbnails(samples, ds.root, cache_dir)
    good_idx = np.array(good, dtype=np.int64)
    # Up to HIST_FACTOR * threshold, not just the threshold: the distance histogram needs the pairs above it.
    pairs, dist = close_pairs(thumbs, HIST_FACTOR * threshold)
    pairs = torch.from_numpy(good_idx)[pairs] if len(pairs) else pairs  # back to indices into `samples`
    readable = np.zeros(len(samples), dtype=bool)
    readable[good_idx] = True
    return _Index(
        samples=samples,
        rel=[ds.rel(s.path) for s in samples],
        split_of=np.array([s.split for s in samples]),
        label_of=np.array([s.label for s in samples]),
        hashes=hashes,
        readable=readable,
        pairs=pairs,
        dist=dist,
        near_pairs=pairs[dist <= threshold + 1e-12].tolist(),
    )


def _copy_groups(idx: _Index) -> tuple[list[list[int]], list[list[int]]]:
    """Exact groups (byte-identical files) and near groups (connected components of "exact or near copy")."""
    exact_edges = hash_edges(idx.hashes)
    exact = sorted_groups(component_labels(idx.n, exact_edges), idx.rel)
    near = sorted_groups(component_labels(idx.n, exact_edges + [tuple(p) for p in idx.near_pairs]), idx.rel)
    return exact, near


def _copied_from(idx: _Index, target: np.ndarray, reference: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Masks of the `target` images with a byte-identical copy, and with an exact or near copy, in `reference`."""
    ref_hashes = {h for h, r in zip(idx.hashes, reference, strict=True) if r}
    exact = np.array([h in ref_hashes for h in idx.hashes]) & target
    either = exact.copy()
    for i, j in idx.near_pairs:
        either[i] |= bool(target[i] and reference[j])
        either[j] |= bool(target[j] and reference[i])
    return exact, either


def _leakage(idx: _Index, ds: Dataset) -> tuple[dict, np.ndarray]:
    """The report's leakage counts, and the mask of the test images with no copy on the train side."""
    test = idx.split_of == "test"
    exact_in_train, near_in_train = _copied_from(idx, test, np.isin(idx.split_of, TRAIN_SIDE))
    val_exact, val_near = _copied_from(idx, idx.split_of == "val", idx.split_of == "train")
    leak_free = test & ~near_in_train & idx.readable
    has_test, has_val = "test" in ds.splits, "val" in ds.splits
    counts = {
        "test_exact_in_train": int(exact_in_train[test].sum()) if has_test else None,
        "test_near_in_train": int(near_in_train[test].sum()) if has_test else None,
        "test_leak_free": int(leak_free.sum()) if has_test else None,
        "val_exact_in_train": int(val_exact.sum()) if has_val else None,
        "val_near_in_train": int(val_near.sum()) if has_val else None,
    }
    return counts, leak_free


def _nearest_train_side(idx: _Index) -> np.ndarray:
    """Distance (0-1) from each image to its nearest train-side image other than itself; inf above the cap."""
    train_side = np.isin(idx.split_of, TRAIN_SIDE)
    nn = np.full(idx.n, np.inf)
    for (i, j), d in zip(idx.pairs.tolist(), idx.dist.tolist(), strict=True):
        if train_side[j]:
            nn[i] = min(nn[i], d)
        if train_side[i]:
            nn[j] = min(nn[j], d)
    return nn


def _distance_histogram(idx: _Index, threshold: float, has_test: bool) -> dict:
    """Nearest train-side distances in gray levels, binned up to the cap; exact below it, "above_cap" past it."""
    nn = _nearest_train_side(idx)
    edges = hist_edges(threshold)
    return {
        "what": "gray levels (0-255) from each image to its nearest train-side image other than itself",
        "edges": edges.tolist(),
        "train": nearest_hist(nn[(idx.split_of == "train") & idx.readable], edges, threshold),
        **({"test": nearest_hist(nn[(idx.split_of == "test") & idx.readable], edges, threshold)} if has_test else {}),
    }


def hist_edges(threshold: float) -> np.ndarray:
    """Bin edges in gray levels, from 0 to the cap (HIST_FACTOR * threshold), 8 bins per threshold."""
    return np.round(np.linspace(0, HIST_FACTOR * threshold * 255, 4 * HIST_FACTOR * 2 + 1), 3)


def nearest_hist(nn: np.ndarray, edges: np.ndarray, threshold: float) -> dict:
    """Nearest distances (0-1, inf above the cap) binned in gray levels, and the two sides of the threshold."""
    d = nn * 255
    return {
        "counts": np.histogram(d[np.isfinite(d)], bins=edges)[0].tolist(),
        "above_cap": int((~np.isfinite(d)).sum()),
        "largest_within_threshold": _r(d[d <= threshold * 255 + 1e-9], max),
        "smallest_above_threshold": _r(d[np.isfinite(d) & (d > threshold * 255 + 1e-9)], min),
    }


def _r(values: np.ndarray, pick) -> float | None:
    return round(float(pick(values)), 3) if len(values) else None


def _group_counts(idx: _Index, ds: Dataset, exact_groups, near_groups) -> dict:
    def scopes(groups):
        c = Counter(_scope(idx.split_of[m].tolist()) for m in groups)
        return {k: c.get(k, 0) for k in [*ds.splits, "across"]}

    def cross_label(groups):
        return [m for m in groups if len(set(idx.label_of[m].tolist())) > 1]

    return {
        "exact_groups": len(exact_groups),
        "exact_redundant": sum(len(m) - 1 for m in exact_groups),
        "exact_groups_by_split": scopes(exact_groups),
        "near_groups": len(near_groups),
        "near_redundant": sum(len(m) - 1 for m in near_groups),
        "near_groups_by_split": scopes(near_groups),
        "largest_group": max((len(m) for m in near_groups), default=0),
        "cross_label_groups": len(cross_label(near_groups)),
        "cross_label_exact_groups": len(cross_label(exact_groups)),
    }


def _group_listing(idx: _Index, ds: Dataset, near_groups) -> list[dict]:
    return [
        {
            "id": gid,
            "size": len(m),
            "exact": len({idx.hashes[i] for i in m}) == 1,
            "classes": sorted({ds.classes[idx.label_of[i]] for i in m}),
            "members": [
                {"path": idx.rel[i], "split": str(idx.split_of[i]), "class": ds.classes[idx.label_of[i]]} for i in m
            ],
        }
        for gid, m in enumerate(near_groups)
    ]


def run_audit(
    root, threshold: float = DEFAULT_THRESHOLD, cache_dir=None, out=None, class_map=None, extend=None
) -> dict:
    """Exact and near duplicates within and across splits, label conflicts, and test leakage.

    `threshold`: near-copy distance, mean absolute difference on the 0-1 scale. With `out`, writes
    audit.json, leak_free_test.csv (test images without an exact or near copy in train/val, manifest
    format), distance_hist.png and the galleries. `extend(ds, idx, out_dir) -> (keys, files written)` adds
    to the report before audit.json is written (`cnnlab.datatools.audit_against` uses it for `--against`).
    """
    t0 = time.perf_counter()
    if not 0 <= threshold < 1:
        raise UserError(f"threshold must be between 0 and 255 gray levels, got {threshold * 255:g}")
    ds = scan(root, class_map=class_map)
    out_dir = output_folder(out, protected_paths(ds)) if out else None  # before the slow part: a bad --out fails
    idx = _index(ds, threshold, cache_dir)
    exact_groups, near_groups = _copy_groups(idx)
    leakage, leak_free = _leakage(idx, ds)
    report = {
        "dataset": str(ds.root),
        **({"labels": str(ds.source)} if ds.source else {}),  # a label file: its classes and splits
        "classes": ds.classes,
        "images": {split: len(v) for split, v in ds.splits.items()},
        "unreadable": int((~idx.readable).sum()),
        "skipped": len(ds.skipped),  # unusable files the scan left out (not images, unreadable, empty ...)
        "threshold": threshold,
        "threshold_gray": round(threshold * 255, 4),
        "method": "near copy: mean |difference| <= threshold between 64x64 gray thumbnails (squash resize), "
        "all pairs, exact; groups: connected components of exact-or-near",
        **_group_counts(idx, ds, exact_groups, near_groups),
        **leakage,
        "distance_histogram": _distance_histogram(idx, threshold, has_test="test" in ds.splits),
        "groups": _group_listing(idx, ds, near_groups),
    }
    more_files = []
    if extend:
        more, more_files = extend(ds, idx, out_dir)
        report.update(more)
    if out_dir:
        group_id = np.full(idx.n, -1)
        for gid, members in enumerate(near_groups):
            group_id[members] = gid
        written = _write_outputs(report, ds, idx, leak_free, group_id, out_dir)
        report["written"] = written[:-1] + more_files + written[-1:]  # audit.json last, as it is written last
    report["seconds"] = round(time.perf_counter() - t0, 2)
    if out_dir:
        write_text(out_dir / "audit.json", json.dumps(report, indent=2) + "\n")
    return report


# ------------------------------------------------------------------------------------------ outputs


def write_leak_free(path: Path, ds: Dataset, samples, rel, keep: np.ndarray, group_id) -> int:
    """Test images without a copy in train, in the manifest format (path,class,split,group)."""
    rows = [(rel[i], ds.classes[samples[i].label], "test", int(group_id[i])) for i in np.flatnonzero(keep)]
    with atomic_write(path) as tmp, open(tmp, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(MANIFEST_FIELDS)
        w.writerows(rows)
    return len(rows)


def _write_outputs(report, ds, idx: _Index, leak_free, group_id, out_dir: Path) -> list[str]:
    from cnnlab.reporting import figures  # matplotlib only when figures are asked for

    files = []
    if "test" in ds.splits:
        write_leak_free(out_dir / "leak_free_test.csv", ds, idx.samples, idx.rel, leak_free, group_id)
        files.append("leak_free_test.csv")
    figures.distance_histogram(report, out_dir / "distance_hist.png")
    files.append("distance_hist.png")
    groups = report["groups"]
    if groups:
        figures.group_gallery(
            gallery_rows(ds.root, groups[:GALLERY_LARGEST]),
            out_dir / "gallery_largest.png",
            f"largest duplicate groups ({min(len(groups), GALLERY_LARGEST)} of {len(groups)})",
        )
        files.append("gallery_largest.png")
    cross = [g for g in groups if len(g["classes"]) > 1]
    for page in range(0, len(cross), GALLERY_ROWS_PER_PAGE):
        number = page // GALLERY_ROWS_PER_PAGE + 1
        name = "gallery_cross_label.png" if number == 1 else f"gallery_cross_label_{number}.png"
        figures.group_gallery(
            gallery_rows(ds.root, cross[page : page + GALLERY_ROWS_PER_PAGE]),
            out_dir / name,
            f"groups whose copies carry different labels ({len(cross)})",
        )
        files.append(name)
    return files + ["audit.json"]


def gallery_rows(root: Path, groups: list[dict], what: str = "group") -> list[tuple[str, list]]:
    """`reporting.group_gallery` rows: each group's first members, decoded, captioned split/class/file name.

    A member's path is relative to `root`, or absolute (a member of another data set)."""
    prep = DecodeSettings(96, "pad", 1)
    # One column count for the whole page, so the "+N" of a longer group counts what is left off.
    cols = min(GALLERY_COLUMNS, max(len(g["members"]) for g in groups))
    rows = []
    for g in groups:
        cells = []
        for m in g["members"][:cols]:
            try:
                im = decode(Path(root) / m["path"], prep)[0][0]
            except BadImage:
                im = np.zeros((96, 96), dtype=np.uint8)  # unreadable: a black tile, still captioned
            cells.append((im, f"{m['split']}/{m['class'][:14]}\n{Path(m['path']).name[:18]}"))
        more = f" +{len(g['members']) - cols}" if len(g["members"]) > cols else ""
        rows.append((f"{what} {g['id']}\n{g['size']} files{more}", cells))
    return rows


def format_audit(r: dict, extra: list[str] | tuple[str, ...] = ()) -> str:
    """The terminal summary; `extra` lines go before the list of files written."""
    splits = list(r["images"])
    cols = [*splits, "across"]
    lines = [
        f"audit of {r['dataset']}: {sum(r['images'].values())} images ("
        + ", ".join(f"{k} {v}" for k, v in r["images"].items())
        + ")"
        + (f", labels and splits from {r['labels']}" if r.get("labels") else ""),
        f"near copy: mean |difference| <= {r['threshold_gray']:g}/255 between 64x64 gray thumbnails",
        "",
        f"{'':26}{'groups':>8}{'redundant':>11}" + "".join(f"{'in ' + c if c != 'across' else c:>12}" for c in cols),
    ]
    for name, key in (("exact (byte-identical)", "exact"), ("exact or near", "near")):
        by = r[f"{key}_groups_by_split"]
        lines.append(
            f"{name:26}{r[f'{key}_groups']:>8}{r[f'{key}_redundant']:>11}"
            + "".join(f"{by.get(c, 0):>12}" for c in cols)
        )
    lines.append(
        f"{'label conflicts':26}{r['cross_label_groups']:>8}  groups with copies in different "
        f"classes ({r['cross_label_exact_groups']} of them byte-identical)"
    )
    if r.get("test_near_in_train") is not None:
        n_test = r["images"]["test"]
        lines += [
            "",
            f"test images with a copy in train: {r['test_exact_in_train']} byte-identical, "
            f"{r['test_near_in_train']} exact or near, of {n_test}",
            f"leak-free test images: {r['test_leak_free']}",
        ]
        t = r["distance_histogram"]["test"]
        above = t["smallest_above_threshold"]
        above = above if above is not None else f"> {r['distance_histogram']['edges'][-1]:g}"
        lines.append(
            f"nearest train image of each test image: copies at <= {t['largest_within_threshold']}, "
            f"the others at >= {above} gray levels (threshold {r['threshold_gray']:g})"
        )
    if r.get("val_near_in_train") is not None:
        lines.append(
            f"validation images with a copy in train: {r['val_exact_in_train']} byte-identical, "
            f"{r['val_near_in_train']} exact or near, of {r['images']['val']}"
        )
    if r["unreadable"]:
        lines.append(f"unreadable images (exact comparison only): {r['unreadable']}")
    if r.get("skipped"):
        lines.append(f"skipped files (unusable, not audited): {r['skipped']}")
    lines += extra
    if r.get("written"):
        lines.append("wrote " + ", ".join(r["written"]))
    lines.append(f"{r['seconds']:.1f} s")
    return "\n".join(lines)
