"""`cnnlab data audit DIR --against OTHER`: the images of DIR that have a copy in another data set, and the
label conflicts among them (the same picture filed under different classes).

The definitions are the audit's (datatools/audit.py, on data/duplicates.py): an exact copy has the same bytes
(SHA-256); a near copy's 64x64 gray thumbnail (`THUMB`, through the decode cache) is within the threshold of the
image's. Only the DIR x OTHER pairs are compared (`close_pairs(..., other=...)`); the pairs inside each set are the
plain audit's business.

Classes: an OTHER class becomes a DIR class through the class map (`other_name=dir_name`), or by having a DIR
class's name. A copy in an OTHER class with no counterpart in DIR cannot conflict, since different names alone
do not say the classes differ: it counts as a copy, and in `against_unmapped_copies`, and the summary names
such classes, so a forgotten or misspelled map entry shows.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from cnnlab.data.duplicates import DEFAULT_THRESHOLD, close_pairs, file_hashes, thumbnails
from cnnlab.data.folders import Dataset, Sample, parse_class_map, scan
from cnnlab.datatools import audit
from cnnlab.errors import UserError, nearest
from cnnlab.files import atomic_write, output_folder

AGAINST_FIELDS = [
    "path",
    "class",
    "split",
    "other_path",
    "other_class",
    "other_as",
    "kind",
    "distance_gray",
    "conflict",
]


@dataclass
class _Other:
    """The other data set, read once: its classes as DIR's, hashes and thumbnails."""

    ds: Dataset
    samples: list[Sample]
    classes_as: list[str | None]  # OTHER label -> DIR class, None where DIR has no counterpart
    hashes: list[str]
    thumbs: torch.Tensor
    good: list[int]  # indices of the decodable samples, in `thumbs` order


@dataclass
class _Copy:
    """One DIR image and one of its copies in OTHER."""

    i: int  # into the audit's index (DIR, scan order)
    j: int  # into _Other.samples
    exact: bool
    dist: float | None  # 0-1 scale; None when neither file decodes (byte-identical, so still a copy)
    conflict: bool


def map_classes(other_classes: list[str], dir_classes: list[str], class_map) -> list[str | None]:
    """DIR's class for each OTHER class (None: no counterpart). A map entry for an OTHER class must name a
    DIR class; entries for other names are left to DIR's own test folders, as without --against."""
    mapping = parse_class_map(class_map)
    out = []
    for name in other_classes:
        target = mapping.get(name, name)
        if name in mapping and target not in dir_classes:
            raise nearest(target, dir_classes, f"--class-map target class (in {name}={target})")
        out.append(target if target in dir_classes else None)
    return out


def _load_other(ds: Dataset, classes_as, cache_dir) -> _Other:
    samples = [s for split in ds.splits for s in ds.splits[split]]
    thumbs, good = thumbnails(samples, ds.root, cache_dir)
    hashes = file_hashes([s.path for s in samples])
    return _Other(ds=ds, samples=samples, classes_as=classes_as, hashes=hashes, thumbs=thumbs, good=good)


def _cross_pairs(ds, idx, other: _Other, threshold: float, cache_dir) -> dict[tuple[int, int], float | None]:
    """(DIR index, OTHER index) -> distance, for every cross pair within the histogram's cap, plus every pair
    of byte-identical files (distance None where neither decodes)."""
    thumbs, good = thumbnails(idx.samples, ds.root, cache_dir)  # the audit's own, from the cache
    pairs, dist = close_pairs(thumbs, audit.HIST_FACTOR * threshold, other=other.thumbs)
    found = {(good[a], other.good[b]): d for (a, b), d in zip(pairs.tolist(), dist.tolist(), strict=True)}
    by_hash: dict[str, list[int]] = {}
    for j, h in enumerate(other.hashes):
        by_hash.setdefault(h, []).append(j)
    for i, h in enumerate(idx.hashes):
        for j in by_hash.get(h, ()):
            found.setdefault((i, j), None)
    return found


def _copies(ds, idx, other: _Other, found, threshold: float) -> list[_Copy]:
    """The pairs that are copies (byte-identical, or within the threshold), by DIR image, nearest first."""
    copies = []
    for (i, j), d in found.items():
        exact = idx.hashes[i] == other.hashes[j]
        if not exact and d > threshold + 1e-12:
            continue
        as_dir = other.classes_as[other.samples[j].label]
        copies.append(_Copy(i, j, exact, d, as_dir is not None and as_dir != ds.classes[idx.label_of[i]]))
    return sorted(copies, key=lambda c: (c.i, c.dist if c.dist is not None else -1.0, c.j))


def _summary(ds, idx, other: _Other, copies: list[_Copy], found, threshold: float) -> dict:
    """The report's `against_*` keys."""
    copied, conflicted = np.zeros(idx.n, bool), np.zeros(idx.n, bool)
    exact, unmapped = np.zeros(idx.n, bool), np.zeros(idx.n, bool)
    for c in copies:
        copied[c.i] = True
        conflicted[c.i] |= c.conflict
        exact[c.i] |= c.exact
        unmapped[c.i] |= other.classes_as[other.samples[c.j].label] is None
    nn = np.full(idx.n, np.inf)
    for (i, _j), d in found.items():
        if d is not None:
            nn[i] = min(nn[i], d)
    edges = audit.hist_edges(threshold)
    return {
        "against": str(other.ds.root),
        "against_images": {split: len(v) for split, v in other.ds.splits.items()},
        "against_unreadable": len(other.samples) - len(other.good),
        "against_skipped": len(other.ds.skipped),
        "against_classes": dict(zip(other.ds.classes, other.classes_as, strict=True)),
        "against_copies": int(copied.sum()),
        "against_exact_copies": int(exact.sum()),
        "against_label_conflicts": int(conflicted.sum()),
        "against_unmapped_copies": int(unmapped.sum()),
        "against_by_folder": _by_folder(ds, idx, copied, conflicted),
        "against_distance_histogram": {
            "what": "gray levels (0-255) from each image of this data set to its nearest image of the other",
            "edges": edges.tolist(),
            **{
                split: audit.nearest_hist(nn[(idx.split_of == split) & idx.readable], edges, threshold)
                for split in ds.splits
            },
        },
    }


def _by_folder(ds, idx, copied: np.ndarray, conflicted: np.ndarray) -> dict:
    """split -> class -> images, copies, conflicts."""
    out = {}
    for split in ds.splits:
        out[split] = {}
        for k, name in enumerate(ds.classes):
            here = (idx.split_of == split) & (idx.label_of == k)
            out[split][name] = {
                "images": int(here.sum()),
                "copies": int((here & copied).sum()),
                "conflicts": int((here & conflicted).sum()),
            }
    return out


def audit_against(root, other, threshold: float = DEFAULT_THRESHOLD, cache_dir=None, out=None, class_map=None) -> dict:
    """The audit of `root` (`run_audit`) plus its copies in the data set `other` and their labels.

    `class_map` (`name=dir_name,...`) maps `other`'s class names to `root`'s, and `root`'s own test folders as
    without `other`. With `out`, also writes against_copies.csv and the label conflicts' gallery.
    """
    dir_ds = scan(root, class_map=class_map, warn=False)  # the audit scans it again, warning then
    try:
        other_ds = scan(other)
    except UserError as e:
        raise UserError(f"--against: {e}") from None
    if other_ds.root == dir_ds.root:
        raise UserError(f"--against names the audited data set itself ({dir_ds.root})")
    classes_as = map_classes(other_ds.classes, dir_ds.classes, class_map)
    if out:  # before anything is decoded or written: the audit itself checks only its own data set
        output_folder(out, [dir_ds.root, other_ds.root], create=False)

    def extend(ds, idx, out_dir):
        o = _load_other(other_ds, classes_as, cache_dir)
        found = _cross_pairs(ds, idx, o, threshold, cache_dir)
        copies = _copies(ds, idx, o, found, threshold)
        summary = _summary(ds, idx, o, copies, found, threshold)
        return summary, (_write(ds, idx, o, copies, out_dir) if out_dir else [])

    return audit.run_audit(root, threshold=threshold, cache_dir=cache_dir, out=out, class_map=class_map, extend=extend)


# ------------------------------------------------------------------------------------------ outputs


def _write(ds, idx, other: _Other, copies: list[_Copy], out_dir: Path) -> list[str]:
    path = out_dir / "against_copies.csv"
    with atomic_write(path) as tmp, open(tmp, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(AGAINST_FIELDS)
        for c in copies:
            s = other.samples[c.j]
            w.writerow(
                [
                    idx.rel[c.i],
                    ds.classes[idx.label_of[c.i]],
                    str(idx.split_of[c.i]),
                    other.ds.rel(s.path),
                    other.ds.classes[s.label],
                    other.classes_as[s.label] or "",
                    "exact" if c.exact else "near",
                    "" if c.dist is None else round(c.dist * 255, 3),
                    int(c.conflict),
                ]
            )
    return ["against_copies.csv", *_conflict_gallery(ds, idx, other, copies, out_dir)]


def _conflict_gallery(ds, idx, other: _Other, copies: list[_Copy], out_dir: Path) -> list[str]:
    """Each conflicting image of DIR, then its copies in OTHER (the conflicting ones first), both classes shown."""
    from cnnlab.reporting import figures  # matplotlib only when figures are asked for

    by_image: dict[int, list[_Copy]] = {}
    for c in copies:
        by_image.setdefault(c.i, []).append(c)
    groups = []
    for i, cs in by_image.items():
        if not any(c.conflict for c in cs):
            continue
        cs = sorted(cs, key=lambda c: not c.conflict)  # stable: nearest first within each kind
        members = [
            {"path": str(idx.samples[i].path), "split": str(idx.split_of[i]), "class": ds.classes[idx.label_of[i]]}
        ]
        members += [
            {
                "path": str(other.samples[c.j].path),
                "split": "other",
                "class": other.ds.classes[other.samples[c.j].label],
            }
            for c in cs
        ]
        groups.append({"id": len(groups), "size": len(members), "members": members})
    files = []
    per_page = audit.GALLERY_ROWS_PER_PAGE
    for page in range(0, len(groups), per_page):
        number = page // per_page + 1
        name = "gallery_against_conflicts.png" if number == 1 else f"gallery_against_conflicts_{number}.png"
        figures.group_gallery(
            audit.gallery_rows(ds.root, groups[page : page + per_page], what="conflict"),
            out_dir / name,
            f"label conflicts against {other.ds.root.name} ({len(groups)})\n"
            "an image of this set, then its copies there",
        )
        files.append(name)
    return files


def format_against(r: dict) -> list[str]:
    """The summary's lines for --against (`format_audit(report, extra=...)`)."""
    n_other = sum(r["against_images"].values())
    unreadable = f", {r['against_unreadable']} unreadable" if r["against_unreadable"] else ""
    unreadable += f", {r['against_skipped']} skipped" if r.get("against_skipped") else ""
    mapped = [f"{k} -> {v}" for k, v in r["against_classes"].items() if v is not None]
    lines = [
        "",
        f"against {r['against']}: {n_other} images ("
        + ", ".join(f"{k} {v}" for k, v in r["against_images"].items())
        + f"{unreadable})",
        "its classes here: " + (", ".join(mapped) or "none"),
        f"images here with a copy there: {r['against_copies']} ({r['against_exact_copies']} byte-identical) "
        f"of {sum(r['images'].values())}; label conflicts: {r['against_label_conflicts']}",
        f"{'':34}{'images':>8}{'copies':>8}{'conflicts':>11}",
    ]
    for split, classes in r["against_by_folder"].items():
        for name, c in classes.items():
            lines.append(f"{(split + '/' + name)[:34]:34}{c['images']:>8}{c['copies']:>8}{c['conflicts']:>11}")
    unmapped = [k for k, v in r["against_classes"].items() if v is None]
    if unmapped:
        lines.append(
            f"classes there with no counterpart here (never a conflict): {', '.join(unmapped)}; "
            f"{r['against_unmapped_copies']} images here have a copy in them (map with --class-map)"
        )
    h = r["against_distance_histogram"]
    for split in r["against_by_folder"]:
        above = h[split]["smallest_above_threshold"]
        above = above if above is not None else f"> {h['edges'][-1]:g}"
        lines.append(
            f"nearest image there of each {split} image: copies at <= {h[split]['largest_within_threshold']}, "
            f"the others at >= {above} gray levels (threshold {r['threshold_gray']:g})"
        )
    return lines
