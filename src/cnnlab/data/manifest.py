"""The manifest CSV (`path,class,split,group`, e.g. a run's split.csv): written (`write_manifest`), read back as
samples (`read_manifest`), and checked against the files it lists (`check_sizes`)."""

from __future__ import annotations

import csv
from pathlib import Path

from cnnlab.data.folders import Dataset, Sample
from cnnlab.errors import UserError

MANIFEST_FIELDS = ["path", "class", "split", "group"]


def write_manifest(ds: Dataset, path: Path, splits=("train", "val", "test"), sizes: bool = False) -> None:
    """The samples of `splits` as CSV (MANIFEST_FIELDS); with `sizes`, each file's size in bytes too, so that a
    later reader can tell whether the files are still the ones listed (`check_sizes`)."""
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(MANIFEST_FIELDS + (["bytes"] if sizes else []))
        for split in splits:
            for s in ds.splits.get(split, []):
                row = [ds.rel(s.path), ds.classes[s.label], split, s.group]
                w.writerow(row + ([s.path.stat().st_size] if sizes else []))


def check_sizes(path: Path, root: Path) -> None:
    """Raise if a file a manifest lists with its size (a run's split.csv) is missing or has another size now."""
    changed = []
    with open(path, newline="", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            if row.get("bytes"):
                p = Path(root) / row["path"]
                if not p.is_file() or p.stat().st_size != int(row["bytes"]):
                    changed.append(row["path"])
    if changed:
        raise UserError(
            f"the data at {root} no longer matches {path}: {len(changed)} listed file(s) are missing "
            f"or changed, e.g. {changed[0]}"
        )


def manifest_classes(path: Path) -> list[str]:
    """The class names a manifest lists, sorted as a scan sorts class folders."""
    with open(path, newline="", encoding="utf-8") as f:
        return sorted({row["class"] for row in csv.DictReader(f)})


def read_manifest(path: Path, root: Path, classes: list[str], split: str | None = None) -> list[Sample]:
    """Samples listed in a manifest CSV (columns path, class[, split]); paths relative to `root`."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"manifest not found: {path}")
    out = []
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        if not reader.fieldnames or not {"path", "class"} <= set(reader.fieldnames):
            raise UserError(f"manifest {path} needs the columns path and class")
        for i, row in enumerate(reader, start=2):
            if split and row.get("split") and row["split"] != split:
                continue
            if row["class"] not in classes:
                raise UserError(f"{path}:{i}: class '{row['class']}' is not one of the run's classes {classes}")
            p = Path(row["path"])
            p = p if p.is_absolute() else Path(root) / p
            if not p.is_file():
                raise UserError(f"{path}:{i}: image not found: {p}")
            out.append(Sample(p, classes.index(row["class"]), row.get("split") or split or "test"))
    if not out:
        raise UserError(f"manifest {path} lists no images")
    return out
