"""Finding a folder-per-class dataset (`scan`, `Dataset`, `Sample`) and the images to score a run on (`scored_split`).

A dataset root either holds split folders (`train`/`training`, `val`/`valid`/`validation`, `test`/`testing`,
any case), each with one folder per class, or is itself a class-folder tree (then it has no test split). A root
that only wraps the data set (`archive/inner/train/...`, `archive/images/<class>/...`, a few levels at most) is
read through to the folder below, and the scan says which folder it used. A split folder's name never becomes
a class: layouts that would read that way (a class folder named `test`, split folders inside class folders,
class folders beside split folders, `images/` beside `labels/`) stop with one line.
Unusable files are skipped with a reason (`report_skipped`). Nothing here ever writes into the dataset.
"""

from __future__ import annotations

import os
import warnings
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

from cnnlab.errors import UserError

SPLIT_ALIASES = {
    "train": "train",
    "training": "train",
    "val": "val",
    "valid": "val",
    "validation": "val",
    "test": "test",
    "testing": "test",
}
IGNORED_DIRS = {"__pycache__", "__MACOSX"}
MAX_WRAPPING = 3  # folders holding nothing but one folder, read through down to the data set
# A folder of images beside a folder of annotations: a detection or segmentation layout, not classes.
IMAGE_DIR_NAMES = {"images", "image", "imgs", "img", "jpegimages", "pictures", "photos"}
LABEL_DIR_NAMES = {
    "labels",
    "label",
    "annotations",
    "annotation",
    "masks",
    "mask",
    "segmentationclass",
    "gt",
    "groundtruth",
    "ground_truth",
    "targets",
}


def image_extensions() -> set[str]:
    """Every extension Pillow can open, lower case (.jpg .jpeg .png .bmp .tif .webp ...), and DICOM's (.dcm .dicom).
    A file of any other extension (or none) is an image too when it has the DICOM preamble (`_unusable`)."""
    from cnnlab.data.dicom import DICOM_EXTENSIONS

    Image.init()
    return {ext.lower() for ext, fmt in Image.registered_extensions().items() if fmt in Image.OPEN} | DICOM_EXTENSIONS


@dataclass
class Sample:
    """One image file of a dataset: its absolute path, class index, split (train, val or test) and duplicate group
    (-1 when unknown or alone)."""

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
    folders: dict[str, Path] = field(default_factory=dict)  # split -> its folder (root itself for a class tree)
    notes: list[str] = field(default_factory=list)  # how the layout was read ("using archive/inner ..."), said once
    source: Path | None = None  # a label file's data set (data/labels.py): the CSV itself; root is its folder
    groups: dict[str, str] = field(default_factory=dict)  # a label file's group column: relative path -> group
    skipped_splits: dict[str, str] = field(default_factory=dict)  # a label file's skipped files: path -> split

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
    except OSError as e:
        raise UserError(f"cannot read folder {path}: {e.strerror or e}") from e
    if skipped is not None:
        skipped += [(str(p), "hidden folder") for p in dirs if _is_hidden(p.name)]
    return [p for p in dirs if not _is_hidden(p.name)]


def check_root(root: Path) -> Path:
    """The dataset root, resolved (a label file's folder); raises UserError when it does not exist, is not a folder
    (nor a label file) or cannot be read."""
    root = Path(root).expanduser()
    if root.suffix.lower() == ".csv" and not root.is_dir():
        from cnnlab.data.labels import check_label_file

        return check_label_file(root).parent
    if not root.exists():
        raise UserError(f"dataset path does not exist: {root}")
    if not root.is_dir():
        raise UserError(f"dataset path is not a folder: {root}")
    if not os.access(root, os.R_OK | os.X_OK):
        raise UserError(f"cannot read dataset folder {root}: permission denied")
    return root.resolve()


@dataclass
class Layout:
    """Where a data set's images are: `folder` (the root, or the folder it wraps) holds split folders
    (kind "splits") or is a tree of class folders (kind "classes", its one split "train")."""

    folder: Path
    splits: dict[str, Path]
    kind: str
    notes: list[str] = field(default_factory=list)


def _has_images(folder: Path, exts: set[str]) -> bool:
    """Whether `folder` holds an image file of its own (not in a sub-folder): of an image extension, or a DICOM
    file of any (opened only when its extension is no image's)."""
    from cnnlab.data.dicom import is_dicom

    def image(p: Path) -> bool:
        return not _is_hidden(p.name) and p.is_file() and (p.suffix.lower() in exts or is_dicom(p, exts))

    try:
        return any(image(p) for p in folder.iterdir())
    except OSError as e:
        raise UserError(f"cannot read folder {folder}: {e.strerror or e}") from e


def _names(dirs: list[Path]) -> str:
    return ", ".join(f"{printable(d.name)}/" for d in dirs)


def _wrapped_class_tree(root: Path) -> Path | None:
    """The class tree one or more folders down (`root/images/<class>/...`, files such as folds.csv beside it),
    or None: the folder `find_layout` reads through to, when it holds class folders rather than split folders."""
    layout = find_layout(root)
    return layout.folder if layout.kind == "classes" and layout.folder != Path(root) else None


def _wrapper_child(folder: Path, exts: set[str]) -> Path | None:
    """The one folder inside `folder`, when `folder` only wraps it: no image of its own, one non-hidden
    sub-folder that is itself no class folder (it holds folders, not images). Else None."""
    subs = _subdirs(folder)
    if len(subs) != 1 or _has_images(folder, exts):
        return None
    child = subs[0]
    if _has_images(child, exts) or not _subdirs(child):
        return None  # a class folder (of a one-class tree, refused later), or an empty one
    return child


def _split_folders(folder: Path, subs: list[Path], exts: set[str]) -> tuple[dict[str, Path], list[str]]:
    """The split folders among `subs` (the sub-folders of `folder`), checked; and a note on ignored folders."""
    found: dict[str, Path] = {}
    for d in subs:
        split = SPLIT_ALIASES.get(d.name.lower())
        if split is None:
            continue
        if split in found:
            raise UserError(f"two folders name the {split} split in {folder}: {found[split].name}, {d.name}")
        found[split] = d
    named = list(found.values())
    others = [d for d in subs if d not in named]
    class_like = [d for d in others if _has_images(d, exts)]
    if class_like:
        raise UserError(
            f"{printable(folder)} holds split folders ({_names(named)}) and also class folders beside "
            f"them ({_names(class_like)}): cannot tell which are the classes; expected only split "
            "folders (train/, val/, test/), each holding one folder per class, or only class folders"
        )
    for d in named:
        if not _subdirs(d) and _has_images(d, exts):
            raise UserError(
                f"split folder {printable(d)} holds images but no class folders: a split folder holds "
                f"one folder per class (and a class may not be named {d.name})"
            )
    notes = []
    ignored = [d for d in others if any(_has_images(c, exts) for c in _subdirs(d))]
    if ignored:
        notes.append(
            f"ignored folder(s) beside the split folders of {printable(folder)}: {_names(ignored)} "
            "(only train/, val/ and test/ folders are read)"
        )
    order = ["train", "val", "test"]
    return {k: found[k] for k in order if k in found}, notes


def find_layout(root: Path) -> Layout:
    """How the data set under `root` is laid out: its split folders, or its class tree, at `root` or read
    through up to MAX_WRAPPING folders that hold nothing but one folder (an archive unzipped a level deep)."""
    root = Path(root)
    exts = image_extensions()
    folder = root
    for _ in range(MAX_WRAPPING + 1):
        subs = _subdirs(folder)
        if any(d.name.lower() in SPLIT_ALIASES for d in subs):
            splits, notes = _split_folders(folder, subs, exts)
            return Layout(folder, splits, "splits", notes)
        child = _wrapper_child(folder, exts)
        if child is None:
            break
        folder = child
    return Layout(folder, {"train": folder}, "classes")


def _layout_notes(layout: Layout, root: Path, given) -> list[str]:
    """What to tell the user about how `layout` was read: the folder used when it is not the root itself."""
    notes = list(layout.notes)
    if layout.folder != root:
        shown = printable(Path(os.path.expanduser(str(given))) / layout.folder.relative_to(root))
        if layout.kind == "splits":
            names = [f"{printable(d.name)}/" for d in layout.splits.values()]
            what = names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]
            notes.insert(0, f"using {shown} (its {what} split folder{'s' if len(names) > 1 else ''})")
        else:
            notes.insert(0, f"using {shown} (its {len(_subdirs(layout.folder))} class folders)")
    return notes


def find_splits(root: Path) -> dict[str, Path]:
    """Map normalised split names to folders; a plain class tree (or one a few wrapping folders down) is 'train'."""
    return find_layout(Path(root)).splits


def printable(path) -> str:
    """A path as text that can always be written (a name that is not valid UTF-8 keeps its bytes as escapes)."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")


def _unusable(p: Path, exts: set[str]) -> str | None:
    """Why a file in a class folder cannot be used, or None."""
    if _is_hidden(p.name):
        return "hidden file"
    if p.suffix.lower() not in exts:
        from cnnlab.data.dicom import has_dicom_preamble

        if not has_dicom_preamble(p):  # only a file of no image extension is opened to look
            return "not an image file"
    try:
        p.name.encode("utf-8")
    except UnicodeEncodeError:
        return "file name is not valid UTF-8"
    try:
        size = p.stat().st_size  # follows links: a dangling link or a link loop fails here
    except OSError as e:
        return "broken link" if p.is_symlink() else f"cannot read: {e.strerror or e}"
    if not os.access(p, os.R_OK):  # found here, not halfway through hashing or decoding it
        return "cannot read: permission denied"
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
    """Scan a dataset root (or a label file: data/labels.py); raise UserError for anything that makes it unusable."""
    if Path(root).suffix.lower() == ".csv" and not Path(root).is_dir():
        from cnnlab.data.labels import scan_labels

        return scan_labels(root, class_map, strict, warn)
    given = root
    root = check_root(Path(root))
    exts = image_extensions()
    mapping = parse_class_map(class_map)
    layout = find_layout(root)
    split_dirs = layout.splits
    skipped: list[tuple[str, str]] = []
    per_split: dict[str, dict[str, list[Path]]] = {}
    for split, sdir in split_dirs.items():
        per_split[split] = _class_files(sdir, exts, skipped, mapping if split != "train" else {})

    ref_split = "train" if "train" in per_split else next(iter(per_split))
    classes = sorted(per_split[ref_split])
    if len(classes) < 2:
        hint = (
            f" ({classes[0]}/ holding the image files themselves is not a tree of class folders)"
            if classes[0].lower() in IMAGE_DIR_NAMES
            else ""
        )
        raise UserError(f"only one class ({classes[0]}) in {split_dirs[ref_split]}: need at least two{hint}")
    for split, names in per_split.items():
        if sorted(names) != classes:
            extra = sorted(set(names) - set(classes))
            missing = sorted(set(classes) - set(names))
            raise UserError(
                f"classes of {split} differ from {ref_split}: only in {split}: {extra or 'none'}; "
                f"missing from {split}: {missing or 'none'} (map names with --class-map test=train,...)"
            )

    splits = {
        split: [Sample(p, classes.index(name), split) for name in classes for p in names[name]]
        for split, names in per_split.items()
    }
    ds = Dataset(root, classes, splits, skipped, folders=dict(split_dirs), notes=_layout_notes(layout, root, given))
    if warn:
        for note in ds.notes:
            warnings.warn(note, UserWarning, stacklevel=2)
    report_skipped(ds.skipped, strict, warn)
    return ds


def _class_files(folder: Path, exts: set[str], skipped: list, mapping: dict[str, str]) -> dict[str, list[Path]]:
    """Class name (after `mapping`, folder name -> class) -> its image files, for one folder of class folders."""
    class_dirs = _subdirs(folder, skipped)
    if not class_dirs:
        raise UserError(f"no class folders in {folder}: expected one sub-folder per class")
    lower = {d.name.lower(): d for d in class_dirs}
    images, labels = sorted(set(lower) & IMAGE_DIR_NAMES), sorted(set(lower) & LABEL_DIR_NAMES)
    if images and labels:
        raise UserError(
            f"{printable(folder)} holds {_names([lower[images[0]]])} beside {_names([lower[labels[0]]])}: "
            "images and their annotations (a detection or segmentation layout), not one folder per class"
        )
    for cdir in class_dirs:
        if cdir.name.lower() in SPLIT_ALIASES:
            raise UserError(
                f"class folder {printable(cdir)} is named like a split folder: a split folder's name is "
                "never read as a class (expected <split>/<class>/ folders)"
            )
        try:  # names first: a class folder of 10,000 files costs no stat
            with os.scandir(cdir) as entries:
                inner = sorted(e.name for e in entries if e.name.lower() in SPLIT_ALIASES and e.is_dir())
        except OSError as e:
            raise UserError(f"cannot read class folder {cdir}: {e.strerror or e}") from e
        if inner:  # class/split/, or a data set beside other folders: its test images would be trained on
            raise UserError(
                f"folder {printable(cdir)} holds split folders ({', '.join(f'{n}/' for n in inner)}), so "
                "it is not a class folder: expected <split>/<class>/ folders (or give that folder itself "
                "as the data set)"
            )
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
    own training data, under other names) are not looked at; a label file's test rows. -> (folder, samples, skipped)."""
    if Path(root).suffix.lower() == ".csv" and not Path(root).is_dir():
        from cnnlab.data.labels import scored_split_labels

        return scored_split_labels(root, classes, class_map, strict)
    given = root
    root = check_root(Path(root))
    layout = find_layout(root)
    for note in _layout_notes(layout, root, given):
        warnings.warn(note, UserWarning, stacklevel=2)
    splits = layout.splits
    folder = splits.get("test")
    if folder is None:
        if layout.kind != "classes":
            raise UserError(
                f"no test split in {root}: expected a test/ or testing/ folder, or a folder of class "
                "folders to score whole"
            )
        folder = splits["train"]
    skipped: list[tuple[str, str]] = []
    found = _class_files(folder, image_extensions(), skipped, parse_class_map(class_map))
    unknown = sorted(set(found) - set(classes))
    if unknown:
        raise UserError(
            f"class folder(s) {', '.join(unknown)} in {folder} are not classes of the run {classes}: "
            "map them with --class-map THEIRS=OURS,..."
        )
    report_skipped(skipped, strict)
    return folder, [Sample(p, classes.index(name), "test") for name in classes for p in found.get(name, [])], skipped


def report_skipped(skipped: list[tuple[str, str]], strict: bool, warn: bool = True, first: int = 3) -> None:
    """Say which files were unusable (`skipped`: (path, reason) pairs; the `first` few named): a UserError with
    `strict`, else one warning (none when `warn` is false)."""
    if not skipped:
        return
    listed = "; ".join(f"{printable(p)} ({why})" for p, why in skipped[:first])
    more = f" and {len(skipped) - first} more" if len(skipped) > first else ""
    if strict:
        raise UserError(f"{len(skipped)} unusable file(s) (--strict): {listed}{more}")
    if warn:
        warnings.warn(f"skipped {len(skipped)} unusable file(s): {listed}{more}", UserWarning, stacklevel=2)
