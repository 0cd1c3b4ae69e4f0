"""Label files: a data set described by a CSV instead of folders (`scan_labels` -> `Dataset`).

`--data labels.csv` (any .csv given where a data set folder is expected) lists the images in the columns
`path,label`, and optionally `split` (train/val/test under the folder layout's names, any case; blank = train) and
`group` (a patient, a source: split = groups and `cnnlab cv` keep each group on one side). Paths are relative to
the CSV's folder, which is the data set's root (`ds.rel`, a run's split.csv, resume, the decode cache), or absolute.
Column names are matched ignoring case and surrounding spaces; a UTF-8 byte order mark is allowed.

Every problem with the file itself is one UserError naming the file and line: a missing column, a row with more
fields than columns (an unquoted comma would shift the label), an empty path or label, an unknown split, a listed
file that does not exist, a path listed twice, fewer than two classes, a val or test class no train row has, a
group with train (or val) rows and test rows. Files that exist but cannot be used (empty, not an image ...) are
skipped with a reason, as a folder scan skips them (`report_skipped`, `strict`).

Nothing here writes. `protected_paths` is what an output must stay out of: the CSV itself and the folders holding
its images (for an image below the CSV's folder, the top folder there that holds it; else the image's own
folder). The CSV's folder itself only when images lie directly in it, so runs may go beside a project's label file.
"""

from __future__ import annotations

import csv
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

from cnnlab.data.folders import (
    SPLIT_ALIASES,
    Dataset,
    Sample,
    _unusable,
    image_extensions,
    parse_class_map,
    printable,
    report_skipped,
)
from cnnlab.errors import UserError

COLUMNS = ("path", "label", "split", "group")  # the first two required


@dataclass
class Row:
    """One row of a label file: its line, the image's path (absolute, normalised), label, split, group ('' if none)."""

    line: int
    path: Path
    label: str
    split: str  # train | val | test
    group: str


def is_label_file(path) -> bool:
    """Whether `path`, given as a data set, names a label file (a .csv that is not a folder)."""
    p = Path(path).expanduser()
    return p.suffix.lower() == ".csv" and not p.is_dir()


def check_label_file(path) -> Path:
    """The label file, resolved; UserError when it does not exist, is not a file or cannot be read."""
    p = Path(path).expanduser()
    if not p.exists():
        raise UserError(f"label file does not exist: {p}")
    if not p.is_file():
        raise UserError(f"label file is not a file: {p}")
    if not os.access(p, os.R_OK):
        raise UserError(f"cannot read label file {p}: permission denied")
    return p.resolve()


def _columns(fieldnames, where: Path) -> dict[str, str]:
    """Column wanted (COLUMNS) -> the name the file's header gives it."""
    names = {(n or "").strip().lower(): n for n in fieldnames or []}
    if not {"path", "label"} <= set(names):
        found = ", ".join(printable(n) for n in fieldnames or [] if n) or "none"
        raise UserError(
            f"{where}:1: a label file needs the columns path and label (split, group optional); found: {found}"
        )
    return {c: names[c] for c in COLUMNS if c in names}


def _row(where: Path, line: int, raw: dict, cols: dict[str, str]) -> Row | None:
    """One CSV record as a Row (None for a row of empty fields), checked."""
    if None in raw:
        raise UserError(f"{where}:{line}: more fields than columns (quote a path or label that holds a comma)")
    value = {c: (raw.get(name) or "").strip() for c, name in cols.items()}
    if not any((v or "").strip() for v in raw.values()):
        return None
    if not value["path"]:
        raise UserError(f"{where}:{line}: empty path")
    if not value["label"]:
        raise UserError(f"{where}:{line}: {value['path']} has no label")
    given = value.get("split", "")
    split = SPLIT_ALIASES.get(given.lower()) if given else "train"
    if split is None:
        raise UserError(
            f"{where}:{line}: unknown split '{given}' (expected train, val or test, or any of "
            f"{', '.join(sorted(set(SPLIT_ALIASES) - {'train', 'val', 'test'}))}; blank = train)"
        )
    p = Path(value["path"]).expanduser()
    p = Path(os.path.normpath(p if p.is_absolute() else where.parent / p))
    return Row(line, p, value["label"], split, value.get("group", ""))


def read_rows(path) -> tuple[Path, list[Row]]:
    """The label file (resolved) and its rows, every one checked: columns, splits, each listed path exists and is
    listed once, no group on both sides of the test split. -> (csv path, rows)."""
    where = check_label_file(path)
    rows: list[Row] = []
    try:
        with open(where, newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            cols = _columns(reader.fieldnames, where)
            for raw in reader:
                row = _row(where, reader.line_num, raw, cols)
                if row is not None:
                    rows.append(row)
    except UnicodeDecodeError:
        raise UserError(f"{where}: not a UTF-8 text file (save the label file as UTF-8 CSV)") from None
    except csv.Error as e:
        raise UserError(f"{where}:{reader.line_num}: not a readable CSV row: {e}") from None
    if not rows:
        raise UserError(f"{where} lists no images")
    first: dict[Path, int] = {}
    for r in rows:
        if first.setdefault(r.path, r.line) != r.line:
            raise UserError(
                f"{where}:{r.line}: {_shown(where, r.path)} is listed twice (first on line {first[r.path]})"
            )
        if not os.path.lexists(r.path):
            raise UserError(f"{where}:{r.line}: no such file: {_shown(where, r.path)}")
        if r.path.is_dir():
            raise UserError(f"{where}:{r.line}: {_shown(where, r.path)} is a folder, not an image file")
    _check_groups(where, rows)
    return where, rows


def _shown(where: Path, path: Path) -> str:
    """A listed path as the user wrote it: relative to the CSV's folder where it lies below it."""
    return printable(path.relative_to(where.parent) if path.is_relative_to(where.parent) else path)


def _check_groups(where: Path, rows: list[Row]) -> None:
    """A group with test rows and train or val rows would be tested on what was learnt: refused. A group with train
    and val rows (given so in the file) only measures validation on seen subjects: a warning."""
    seen: dict[str, Row] = {}
    warned = False
    for r in rows:
        if not r.group:
            continue
        f = seen.setdefault(r.group, r)
        if (f.split == "test") != (r.split == "test"):
            raise UserError(
                f"{where}:{r.line}: group '{r.group}' has {r.split} rows and {f.split} rows (line {f.line}): its "
                "images would be trained on and tested on; keep each group in one split"
            )
        if f.split != r.split and not warned:
            warned = True
            warnings.warn(
                f"{where}:{r.line}: group '{r.group}' has {r.split} and {f.split} rows (line {f.line}): validation "
                "then meets subjects the model trained on",
                UserWarning,
                stacklevel=3,
            )


def _usable(rows: list[Row]) -> tuple[list[Row], list[tuple[str, str]]]:
    """The rows whose files can be used, and (path, reason) for the others, as a folder scan skips them."""
    exts, good, skipped = image_extensions(), [], []
    for r in rows:
        why = _unusable(r.path, exts)
        if why:
            skipped.append((str(r.path), why))
        else:
            good.append(r)
    return good, skipped


def _classes(where: Path, rows: list[Row]) -> list[str]:
    """The classes: the labels of the train rows (of every row, for a file without train rows), at least two;
    every val and test label one of them."""
    train = [r for r in rows if r.split == "train"]
    classes = sorted({r.label for r in train or rows})
    if len(classes) < 2:
        raise UserError(
            f"{where}: only one class ({classes[0]}) in its {'train ' if train else ''}rows: need at least two"
        )
    for r in rows:
        if r.label not in classes:
            raise UserError(
                f"{where}:{r.line}: class '{r.label}' of a {r.split} row has no train rows (classes: "
                f"{', '.join(classes)}; map names with --class-map {r.split.upper()}_NAME=TRAIN_NAME,...)"
            )
    return classes


def scan_labels(path, class_map=None, strict: bool = False, warn: bool = True) -> Dataset:
    """The data set a label file describes: root its folder, `source` the file, `groups` its group column (relative
    path -> group), unusable files skipped with a reason (an error with `strict`). `class_map` (theirs=ours) renames
    the labels of val and test rows, as it renames a folder data set's test folders."""
    where, rows = read_rows(path)
    mapping = parse_class_map(class_map)
    for r in rows:
        if r.split != "train":
            r.label = mapping.get(r.label, r.label)
    classes = _classes(where, rows)
    good, skipped = _usable(rows)
    for c in classes:
        if not any(r.label == c and r.split == "train" for r in good) and any(r.split == "train" for r in rows):
            raise UserError(f"{where}: class '{c}' has no usable train image (its train rows were all skipped)")
    splits = {
        split: sorted((Sample(r.path, classes.index(r.label), split) for r in good if r.split == split), key=_order)
        for split in ("train", "val", "test")
        if any(r.split == split for r in good)
    }
    ds = Dataset(where.parent, classes, splits, skipped, source=where)
    ds.groups = {ds.rel(r.path): r.group for r in good if r.group}
    kept = {id(r) for r in good}  # by identity: `r not in good` compares rows field by field, n x n times
    ds.skipped_splits = {str(r.path): r.split for r in rows if id(r) not in kept}
    report_skipped(skipped, strict, warn)
    return ds


def _order(s: Sample) -> tuple:
    return s.label, str(s.path)


def scored_split_labels(path, classes: list[str], class_map=None, strict: bool = False) -> tuple[Path, list, list]:
    """A label file's test rows as the images to score a model of `classes` on (labels renamed by `class_map`,
    theirs=ours); -> (the CSV's folder, samples, skipped). The file's other rows are not used."""
    where, rows = read_rows(path)
    test = [r for r in rows if r.split == "test"]
    if not test:
        raise UserError(f"{where} has no test rows (split = test): nothing to score")
    mapping = parse_class_map(class_map)
    for r in test:
        r.label = mapping.get(r.label, r.label)
        if r.label not in classes:
            raise UserError(
                f"{where}:{r.line}: class '{r.label}' is not a class of the run {classes}: map it with "
                "--class-map THEIRS=OURS,..."
            )
    good, skipped = _usable(test)
    report_skipped(skipped, strict)
    return where.parent, sorted((Sample(r.path, classes.index(r.label), "test") for r in good), key=_order), skipped


def expand_label_files(paths) -> list:
    """The paths to predict, each label file among them replaced by its test rows' files (in the file's order;
    unusable ones skipped with a warning)."""
    out: list = []
    for p in paths:
        if not is_label_file(p):
            out.append(p)
            continue
        where, rows = read_rows(p)
        good, skipped = _usable([r for r in rows if r.split == "test"])
        report_skipped(skipped, strict=False)
        if not good:
            raise UserError(f"{where} has no {'usable ' if skipped else ''}test rows (split = test) to predict")
        out += [str(r.path) for r in good]
    return out


def protected_paths(data) -> list[Path]:
    """What an output must never be inside, for a data set (a `Dataset` or a path): a folder data set's root; for a
    label file, the file and the folders holding its images (below the CSV's folder: the top folder there that holds
    one, or the CSV's folder itself for an image directly in it; elsewhere, the image's own folder)."""
    if isinstance(data, Dataset):
        if data.source is None:
            return [data.root]
        where = data.source
        files = [s.path for split in data.splits.values() for s in split] + [Path(p) for p, _ in data.skipped]
    elif is_label_file(data) and Path(data).expanduser().is_file():
        where, rows = read_rows(data)
        files = [r.path for r in rows]
    else:
        return [Path(data)] if data else []
    out = {where}
    for f in files:
        parts = f.relative_to(where.parent).parts if f.is_relative_to(where.parent) else ()
        out.add(where.parent / parts[0] if len(parts) > 1 else where.parent if parts else f.parent)
    return sorted(out)
