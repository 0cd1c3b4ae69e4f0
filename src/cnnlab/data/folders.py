"""Finding a folder-per-class dataset, validating it, and splitting train/validation without moving files.

A dataset root either holds split folders (`train`/`training`, `val`/`validation`, `test`/`testing`, any
case), each with one folder per class, or is itself a class-folder tree (then it has no test split).
Nothing here ever writes into the dataset.
"""

from __future__ import annotations

import os
import warnings
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

from cnnlab.errors import UserError

SPLIT_ALIASES = {"train": "train", "training": "train", "val": "val", "valid": "val", "validation": "val",
                 "test": "test", "testing": "test"}
IGNORED_DIRS = {"__pycache__", "__MACOSX"}


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

