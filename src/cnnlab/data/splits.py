"""Splitting train/validation without moving a file, in memory: random (`split_train_val`), in blocks of files in
name order, by a groups file, or from a manifest (`split_by_manifest`); duplicate groups never straddle the split."""

from __future__ import annotations

import csv
import hashlib
import os
import re
from collections import Counter
from pathlib import Path

from cnnlab.data.folders import Dataset, Sample
from cnnlab.data.manifest import read_manifest
from cnnlab.errors import UserError

# How validation is drawn from train: files; runs of files in name order; or the groups a file lists (and runs of
# files in name order for the files it does not list).
SPLIT_POLICIES = ("random", "blocks", "groups")


# ---------------------------------------------------------------------------------------------- split


def _stable_rank(rel_path: str, seed: int) -> str:
    # A hash of the path and seed orders files the same way on every machine and Python version.
    return hashlib.sha1(f"{seed}:{rel_path}".encode()).hexdigest()


def natural_key(name: str) -> list:
    """'img (10).jpg' after 'img (9).jpg': digit runs compare as numbers."""
    return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", name)]


def block_groups(ds: Dataset, size: int, split: str = "train") -> dict[str, int]:
    """Relative path -> block id: each class folder's files in natural name order, cut into runs of `size`.

    Scans are often exported in sequence (one patient's slices after another), so neighbouring files are
    near-identical slices of one subject. Keeping each run on one side of the train/validation split makes
    validation measure unseen subjects rather than unseen slices of seen ones.
    """
    by_class: dict[int, list[str]] = {}
    for s in ds.splits.get(split, []):
        by_class.setdefault(s.label, []).append(ds.rel(s.path))
    out, gid = {}, 0
    for label in sorted(by_class):
        rels = sorted(by_class[label], key=lambda r: natural_key(os.path.basename(r)))
        for start in range(0, len(rels), size):
            out.update((r, gid) for r in rels[start : start + size])
            gid += 1
    return out


def merge_groups(*groupings: dict[str, int] | None) -> dict[str, int]:
    """One grouping whose groups are the connected unions of the given ones (path -> new id 0, 1, ...)."""
    parent: dict[str, str] = {}

    def find(x: str) -> str:
        while parent.setdefault(x, x) != x:
            parent[x] = x = parent[parent[x]]
        return x

    for grouping in groupings:
        first: dict[int, str] = {}
        for rel, g in (grouping or {}).items():
            root = find(rel)
            if g in first:
                parent[root] = find(first[g])
            else:
                first[g] = rel
    ids: dict[str, int] = {}
    return {rel: ids.setdefault(find(rel), len(ids)) for rel in sorted(parent)}


MAX_RUNS_PER_GROUP = 4  # a blocked-split group larger than this many runs falls back to its copy groups


def read_groups(path: Path, ds: Dataset, split: str = "train") -> dict[str, int]:
    """Relative path -> group id from a CSV with the columns path and group (e.g. a patient or a source); rows for
    files that are not in `split` are an error, files it does not list are left out."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"group file not found: {path}")
    known = {ds.rel(s.path) for s in ds.splits.get(split, [])}
    ids: dict[str, int] = {}
    out = {}
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        if not reader.fieldnames or not {"path", "group"} <= set(reader.fieldnames):
            raise UserError(f"group file {path} needs the columns path and group")
        for i, row in enumerate(reader, start=2):
            if row["path"] not in known:
                raise UserError(f"{path}:{i}: {row['path']} is not a {split} image of {ds.root}")
            out[row["path"]] = ids.setdefault(row["group"], len(ids))
    if not out:
        raise UserError(f"group file {path} lists no files")
    return out


def dicom_patients(ds: Dataset, split: str = "train") -> dict[str, str]:
    """Relative path -> PatientID of the DICOM files of `split` that have one: the groups of split = groups (and cv)
    when neither a group_file nor a label file's group column gives any. Reads headers only."""
    from cnnlab.data.dicom import is_dicom, patient_id
    from cnnlab.data.folders import image_extensions

    exts = image_extensions()
    found = {ds.rel(s.path): patient_id(s.path) for s in ds.splits.get(split, []) if is_dicom(s.path, exts)}
    return {rel: f"PatientID {pid}" for rel, pid in found.items() if pid}


def column_groups(ds: Dataset, split: str = "train") -> dict[str, int]:
    """Relative path -> group id from a label file's group column (`ds.groups`), for the files of `split`."""
    ids: dict[str, int] = {}
    return {
        rel: ids.setdefault(ds.groups[rel], len(ids))
        for rel in (ds.rel(s.path) for s in ds.splits.get(split, []))
        if rel in ds.groups
    }


def group_split_groups(
    ds: Dataset, path: Path | None, size: int, duplicates: dict[str, int] | None = None
) -> dict[str, int]:
    """Groups for split = groups: a label file's group column and the group file `path` (either or both: files
    either puts together stay together); for the files neither lists, the blocked split's groups (runs of `size`
    files in name order, with its fallback for folders whose copies chain every run together). Copies never
    straddle the split: a copy group with a listed member joins that member's group."""
    duplicates = duplicates or {}
    if path is None and not ds.groups:
        ds.groups = dicom_patients(ds)
    if path is None and not ds.groups:
        where = f"{ds.source} has no group column" if ds.source else "no group_file given"
        raise UserError(
            f"split = groups: {where} and no DICOM file has a PatientID (a group_file is a CSV path,group; a label "
            "file may have a group column)"
        )
    listed = merge_groups(column_groups(ds), read_groups(path, ds) if path else None)
    if not listed:
        raise UserError(f"split = groups: {ds.source} gives no train row a group")
    touching = {g for rel, g in duplicates.items() if rel in listed}
    blocked = {rel: g for rel, g in block_split_groups(ds, size, duplicates).items() if rel not in listed}
    return merge_groups({rel: g for rel, g in duplicates.items() if g in touching}, listed, blocked)


def block_split_groups(ds: Dataset, size: int, duplicates: dict[str, int] | None = None) -> dict[str, int]:
    """Groups for a blocked split: runs of `size` files in name order, joined with the duplicate groups.

    Copies never straddle the split. Where copies chain many runs into one group (a folder numbered in no
    meaningful order, e.g. merged from several sources), a group above MAX_RUNS_PER_GROUP runs would swallow a
    class's whole validation quota: it falls back to its duplicate groups alone.
    """
    duplicates = duplicates or {}
    merged = merge_groups(duplicates, block_groups(ds, size))
    sizes = Counter(merged.values())
    out, offset = {}, max(merged.values(), default=-1) + 1
    for rel, g in merged.items():
        if sizes[g] <= MAX_RUNS_PER_GROUP * size:
            out[rel] = g
        elif rel in duplicates:
            out[rel] = offset + duplicates[rel]
    return out


def split_train_val(ds: Dataset, fraction: float, seed: int, groups: dict[str, int] | None = None) -> None:
    """Move `fraction` of each class's train samples to a new 'val' split (in memory only).

    Deterministic: files (or duplicate groups) are ranked by a seeded hash of their relative path, the same on
    every machine. With `groups` (relative path -> group id), each group goes wholly to one side, even when its
    copies carry different labels, so validation holds no copies of training images. A dataset that already
    has a val folder keeps it.
    """
    if "val" in ds.splits or fraction <= 0:
        return
    units: dict[str, list[Sample]] = {}
    for s in ds.splits["train"]:
        rel = ds.rel(s.path)
        if groups and rel in groups:
            s.group = groups[rel]
            units.setdefault(f"group-{s.group}", []).append(s)
        else:
            units.setdefault(rel, []).append(s)
    count = Counter(s.label for s in ds.splits["train"])
    quota = {c: int(round(fraction * n)) for c, n in count.items()}
    taken: Counter = Counter()
    train, val = [], []
    for key in sorted(units, key=lambda k: _stable_rank(k, seed)):
        unit = units[key]
        need = Counter(s.label for s in unit)
        # A unit fits if no class goes over its quota; a class's first unit always fits, so none stays empty.
        if all(taken[c] + n <= quota[c] or taken[c] == 0 for c, n in need.items()):
            val += unit
            taken += need
        else:
            train += unit
    for c, n in count.items():
        if taken[c] == 0 or taken[c] == n:
            raise UserError(f"class '{ds.classes[c]}' has {n} image(s): too few for a {fraction:.0%} validation split")
    for s in val:
        s.split = "val"
    key = lambda s: (s.label, str(s.path))  # noqa: E731
    ds.splits["train"] = sorted(train, key=key)
    ds.splits["val"] = sorted(val, key=key)


def split_by_manifest(ds: Dataset, path: Path, groups: dict[str, int] | None = None) -> None:
    """Validate on the training images a manifest lists (its 'val' rows if it has a split column, e.g. a run's
    split.csv); train on the rest. With `groups`, a group with any listed member goes wholly to validation."""
    if "val" in ds.splits:
        where = f"{ds.source} has val rows" if ds.source else f"{ds.root} has a val folder"
        raise UserError(f"{where}: a validation manifest would replace it; use one or the other")
    listed = {ds.rel(s.path): s.label for s in read_manifest(path, ds.root, ds.classes, split="val")}
    groups = groups or {}
    in_val = {groups[r] for r in listed if r in groups}
    train, val = [], []
    for s in ds.splits["train"]:
        rel = ds.rel(s.path)
        g = groups.get(rel)
        if g is not None:
            s.group = g
        if rel in listed and listed[rel] != s.label:
            raise _label_clash(ds, path, rel, listed[rel], s.label)
        (val if rel in listed or g in in_val else train).append(s)
    missing = listed.keys() - {ds.rel(s.path) for s in val}
    if missing:
        raise UserError(
            f"{path}: {len(missing)} listed image(s) are not in the training folder, e.g. {sorted(missing)[0]}"
        )
    for c, name in enumerate(ds.classes):
        if not any(s.label == c for s in train):
            raise UserError(f"{path}: validation takes every training image of class '{name}'")
    for s in val:
        s.split = "val"
    ds.splits["train"], ds.splits["val"] = train, val


def _label_clash(ds: Dataset, path: Path, rel: str, listed: int, label: int) -> UserError:
    """The error for a file a manifest lists under another class than the data set gives it."""
    where = (
        f"is labelled '{ds.classes[label]}' in {ds.source}"
        if ds.source
        else f"lies in the '{ds.classes[label]}' folder"
    )
    return UserError(f"{path}: {rel} is listed as '{ds.classes[listed]}' but {where}")


def keep_listed(ds: Dataset, path: Path) -> None:
    """Train only on the training images a manifest lists (e.g. the other folds of a cross-validation); its test
    rows, if it has a split column, are never trained on. A label file's val rows are training images here: the
    manifest chooses among its train and val rows (its test rows are never looked at)."""
    listed = {ds.rel(s.path): s.label for s in read_manifest(path, ds.root, ds.classes) if s.split != "test"}
    pool = ds.splits["train"] + (ds.splits.pop("val", []) if ds.source else [])
    kept = [s for s in pool if ds.rel(s.path) in listed]
    for s in kept:
        s.split = "train"
        if listed[ds.rel(s.path)] != s.label:
            raise _label_clash(ds, path, ds.rel(s.path), listed[ds.rel(s.path)], s.label)
    missing = listed.keys() - {ds.rel(s.path) for s in kept}
    if missing:
        raise UserError(
            f"{path}: {len(missing)} listed image(s) are not usable training images of {ds.source or ds.root}, "
            f"e.g. {sorted(missing)[0]}"
        )
    ds.splits["train"] = kept


def group_folds(
    ds: Dataset, path: Path | None, size: int, n_folds: int = 5, seed: int = 42
) -> dict[str, list[tuple[str, str]]]:
    """Cross-validation folds by groups (split = groups: a label file's group column and/or the group file `path`,
    the blocked split's groups for files neither lists): fold "1", "2", ... -> [(relative path, class)], each
    group wholly in one fold, the largest groups first, each into the fold that holds fewest images so far.
    Folds the train images (and a label file's val rows, which `keep_listed` pools with them); test images never."""
    if ds.source and "val" in ds.splits:
        ds.splits["train"] = ds.splits["train"] + ds.splits.pop("val")
    groups = group_split_groups(ds, path, size)
    units: dict[str, list[Sample]] = {}
    for s in ds.splits.get("train", []):
        rel = ds.rel(s.path)
        units.setdefault(f"group-{groups[rel]}" if rel in groups else rel, []).append(s)
    n = min(n_folds, len(units))
    if n < 3:
        raise UserError(
            f"{ds.source or ds.root}: {len(units)} group(s) of training images: cross-validation by groups needs "
            "at least 3 (one to test, one to validate, the rest to train)"
        )
    folds: list[list[Sample]] = [[] for _ in range(n)]
    for key in sorted(units, key=lambda k: (-len(units[k]), _stable_rank(k, seed))):
        min(folds, key=len).extend(units[key])
    return {str(i + 1): [(ds.rel(s.path), ds.classes[s.label]) for s in fold] for i, fold in enumerate(folds)}
