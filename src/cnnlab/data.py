"""Finding a folder-per-class dataset, validating it, and splitting train/validation without moving files.

A dataset root either holds split folders (`train`/`training`, `val`/`validation`, `test`/`testing`, any
case), each with one folder per class, or is itself a class-folder tree (then it has no test split).
Nothing here ever writes into the dataset.
"""

from __future__ import annotations

import csv
import hashlib
import os
import re
import warnings
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

from cnnlab.errors import UserError

SPLIT_ALIASES = {"train": "train", "training": "train", "val": "val", "valid": "val", "validation": "val",
                 "test": "test", "testing": "test"}
IGNORED_DIRS = {"__pycache__", "__MACOSX"}
# How validation is drawn from train: files; runs of files in name order; or the groups a file lists (and runs of
# files in name order for the files it does not list).
SPLIT_POLICIES = ("random", "blocks", "groups")


def image_extensions() -> set[str]:
    """Every extension Pillow can open, lower case (.jpg .jpeg .png .bmp .tif .webp ...)."""
    Image.init()
    return {ext.lower() for ext, fmt in Image.registered_extensions().items() if fmt in Image.OPEN}


@dataclass
class Sample:
    path: Path  # absolute
    label: int
    split: str  # train | val | test
    group: int = -1  # duplicate group id, -1 when unknown or alone


@dataclass
class Dataset:
    """A scanned dataset: classes and the samples of each split present on disk."""

    root: Path
    classes: list[str]
    splits: dict[str, list[Sample]]
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (path, reason)

    def counts(self, split: str) -> dict[str, int]:
        c = Counter(s.label for s in self.splits.get(split, []))
        return {name: c.get(i, 0) for i, name in enumerate(self.classes)}

    def rel(self, path: Path) -> str:
        return os.path.relpath(path, self.root)


def _is_hidden(name: str) -> bool:
    return name.startswith(".") or name in IGNORED_DIRS or name.startswith("~$")


def _subdirs(path: Path, skipped: list | None = None) -> list[Path]:
    try:
        dirs = sorted(p for p in path.iterdir() if p.is_dir())
    except PermissionError as e:
        raise UserError(f"cannot read folder {path}: permission denied") from e
    if skipped is not None:
        skipped += [(str(p), "hidden folder") for p in dirs if _is_hidden(p.name)]
    return [p for p in dirs if not _is_hidden(p.name)]


def check_root(root: Path) -> Path:
    root = Path(root).expanduser()
    if not root.exists():
        raise UserError(f"dataset path does not exist: {root}")
    if not root.is_dir():
        raise UserError(f"dataset path is not a folder: {root}")
    if not os.access(root, os.R_OK | os.X_OK):
        raise UserError(f"cannot read dataset folder {root}: permission denied")
    return root.resolve()


def _wrapped_class_tree(root: Path) -> Path | None:
    """The class tree one folder down (`root/images/<class>/...`, files such as folds.csv beside it), or None.

    Only when `root`'s one non-hidden sub-folder is not a split folder, holds two or more class folders and no
    image file of its own: read as a class tree, such a root would have a single class and be refused anyway.
    """
    subdirs = _subdirs(root)
    if len(subdirs) != 1 or subdirs[0].name.lower() in SPLIT_ALIASES:
        return None
    tree = subdirs[0]
    exts = image_extensions()
    if any(p.is_file() and p.suffix.lower() in exts for p in tree.iterdir()) or len(_subdirs(tree)) < 2:
        return None
    return tree


def find_splits(root: Path) -> dict[str, Path]:
    """Map normalised split names to folders; a plain class tree (or one a single folder down) is 'train'."""
    found: dict[str, Path] = {}
    for d in _subdirs(root):
        split = SPLIT_ALIASES.get(d.name.lower())
        if split is None:
            continue
        if split in found:
            raise UserError(f"two folders name the {split} split in {root}: {found[split].name}, {d.name}")
        found[split] = d
    order = ["train", "val", "test"]
    return {k: found[k] for k in order if k in found} or {"train": _wrapped_class_tree(root) or root}


def printable(path) -> str:
    """A path as text that can always be written (a name that is not valid UTF-8 keeps its bytes as escapes)."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")


def _unusable(p: Path, exts: set[str]) -> str | None:
    """Why a file in a class folder cannot be used, or None."""
    if _is_hidden(p.name):
        return "hidden file"
    if p.suffix.lower() not in exts:
        return "not an image file"
    try:
        p.name.encode("utf-8")
    except UnicodeEncodeError:
        return "file name is not valid UTF-8"
    try:
        size = p.stat().st_size  # follows links: a dangling link or a link loop fails here
    except OSError as e:
        return "broken link" if p.is_symlink() else f"cannot read: {e.strerror or e}"
    return "empty file" if size == 0 else None


def _scan_class_dir(d: Path, exts: set[str], skipped: list) -> list[Path]:
    files = []

    def unreadable(e: OSError) -> None:
        if Path(e.filename) == d:
            raise UserError(f"cannot read class folder {d}: {e.strerror or e}")
        skipped.append((str(e.filename), f"cannot read folder: {e.strerror or e}"))

    for dirpath, dirnames, filenames in os.walk(d, onerror=unreadable):
        skipped += [(os.path.join(dirpath, n), "hidden folder") for n in sorted(dirnames) if _is_hidden(n)]
        dirnames[:] = sorted(n for n in dirnames if not _is_hidden(n))
        for name in sorted(filenames):
            p = Path(dirpath) / name
            why = _unusable(p, exts)
            if why:
                skipped.append((str(p), why))
            else:
                files.append(p)
    return files


def parse_class_map(spec: str | dict | None) -> dict[str, str]:
    """`test_name=train_name,...` -> dict; lets a test split use other folder names for the same classes."""
    if not spec:
        return {}
    if isinstance(spec, dict):
        return dict(spec)
    out = {}
    for item in str(spec).split(","):
        if "=" not in item:
            raise UserError(f"bad --class-map entry '{item}': expected test_name=train_name")
        a, b = (s.strip() for s in item.split("=", 1))
        out[a] = b
    return out


def scan(root, class_map=None, strict: bool = False, warn: bool = True) -> Dataset:
    """Scan a dataset root; raise UserError for anything that makes it unusable."""
    root = check_root(Path(root))
    exts = image_extensions()
    mapping = parse_class_map(class_map)
    split_dirs = find_splits(root)
    skipped: list[tuple[str, str]] = []
    per_split: dict[str, dict[str, list[Path]]] = {}
    for split, sdir in split_dirs.items():
        per_split[split] = _class_files(sdir, exts, skipped, mapping if split != "train" else {})

    ref_split = "train" if "train" in per_split else next(iter(per_split))
    classes = sorted(per_split[ref_split])
    if len(classes) < 2:
        raise UserError(f"only one class ({classes[0]}) in {split_dirs[ref_split]}: need at least two")
    for split, names in per_split.items():
        if sorted(names) != classes:
            extra = sorted(set(names) - set(classes))
            missing = sorted(set(classes) - set(names))
            raise UserError(
                f"classes of {split} differ from {ref_split}: only in {split}: {extra or 'none'}; "
                f"missing from {split}: {missing or 'none'} (map names with --class-map test=train,...)")

    splits = {split: [Sample(p, classes.index(name), split) for name in classes for p in names[name]]
              for split, names in per_split.items()}
    ds = Dataset(root, classes, splits, skipped)
    report_skipped(ds.skipped, strict, warn)
    return ds


def _class_files(folder: Path, exts: set[str], skipped: list, mapping: dict[str, str]) -> dict[str, list[Path]]:
    """Class name (after `mapping`, folder name -> class) -> its image files, for one folder of class folders."""
    class_dirs = _subdirs(folder, skipped)
    if not class_dirs:
        raise UserError(f"no class folders in {folder}: expected one sub-folder per class")
    names: dict[str, list[Path]] = {}
    for cdir in class_dirs:
        files = _scan_class_dir(cdir, exts, skipped)
        if not files:
            raise UserError(f"class folder {cdir} holds no images")
        names.setdefault(mapping.get(cdir.name, cdir.name), []).extend(files)
    return names


def scored_split(root, classes: list[str], class_map=None, strict: bool = False) -> tuple[Path, list[Sample], list]:
    """The images on which to score a model of `classes`, from any data set: its test folder, or a bare tree of
    class folders, whole. Folder names are mapped by `class_map` (theirs=ours); a data set's other splits (its
    own training data, under other names) are not looked at. -> (folder, samples, skipped)."""
    root = check_root(Path(root))
    splits = find_splits(root)
    folder = splits.get("test")
    if folder is None:
        if set(splits) != {"train"} or (splits["train"] != root and splits["train"].name.lower() in SPLIT_ALIASES):
            raise UserError(f"no test split in {root}: expected a test/ or testing/ folder, or a folder of class "
                            "folders to score whole")
        folder = splits["train"]
    skipped: list[tuple[str, str]] = []
    found = _class_files(folder, image_extensions(), skipped, parse_class_map(class_map))
    unknown = sorted(set(found) - set(classes))
    if unknown:
        raise UserError(f"class folder(s) {', '.join(unknown)} in {folder} are not classes of the run {classes}: "
                        "map them with --class-map THEIRS=OURS,...")
    report_skipped(skipped, strict)
    return folder, [Sample(p, classes.index(name), "test") for name in classes for p in found.get(name, [])], skipped


def report_skipped(skipped: list[tuple[str, str]], strict: bool, warn: bool = True, first: int = 3) -> None:
    if not skipped:
        return
    listed = "; ".join(f"{printable(p)} ({why})" for p, why in skipped[:first])
    more = f" and {len(skipped) - first} more" if len(skipped) > first else ""
    if strict:
        raise UserError(f"{len(skipped)} unusable file(s) (--strict): {listed}{more}")
    if warn:
        warnings.warn(f"skipped {len(skipped)} unusable file(s): {listed}{more}", UserWarning, stacklevel=2)


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
            out.update((r, gid) for r in rels[start:start + size])
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


def group_split_groups(ds: Dataset, path: Path, size: int, duplicates: dict[str, int] | None = None) -> dict[str, int]:
    """Groups for split = groups: the file's groups; for the files it does not list, the blocked split's groups
    (runs of `size` files in name order, with its fallback for folders whose copies chain every run together).
    Copies never straddle the split: a copy group with a listed member joins that member's group."""
    duplicates = duplicates or {}
    listed = read_groups(path, ds)
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
        raise UserError(f"{ds.root} has a val folder: a validation manifest would replace it; use one or the other")
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
            raise UserError(f"{path}: {rel} is listed as '{ds.classes[listed[rel]]}' but lies in the "
                            f"'{ds.classes[s.label]}' folder")
        (val if rel in listed or g in in_val else train).append(s)
    missing = listed.keys() - {ds.rel(s.path) for s in val}
    if missing:
        raise UserError(f"{path}: {len(missing)} listed image(s) are not in the training folder, "
                        f"e.g. {sorted(missing)[0]}")
    for c, name in enumerate(ds.classes):
        if not any(s.label == c for s in train):
            raise UserError(f"{path}: validation takes every training image of class '{name}'")
    for s in val:
        s.split = "val"
    ds.splits["train"], ds.splits["val"] = train, val


def keep_listed(ds: Dataset, path: Path) -> None:
    """Train only on the training images a manifest lists (e.g. the other folds of a cross-validation); its test
    rows, if it has a split column, are never trained on."""
    listed = {ds.rel(s.path): s.label for s in read_manifest(path, ds.root, ds.classes) if s.split != "test"}
    kept = [s for s in ds.splits["train"] if ds.rel(s.path) in listed]
    for s in kept:
        if listed[ds.rel(s.path)] != s.label:
            raise UserError(f"{path}: {ds.rel(s.path)} is listed as '{ds.classes[listed[ds.rel(s.path)]]}' but lies "
                            f"in the '{ds.classes[s.label]}' folder")
    missing = listed.keys() - {ds.rel(s.path) for s in kept}
    if missing:
        raise UserError(f"{path}: {len(missing)} listed image(s) are not usable training images of {ds.root}, "
                        f"e.g. {sorted(missing)[0]}")
    ds.splits["train"] = kept


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
        raise UserError(f"the data at {root} no longer matches {path}: {len(changed)} listed file(s) are missing "
                        f"or changed, e.g. {changed[0]}")


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

