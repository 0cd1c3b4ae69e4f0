"""The files a prediction reads: paths and folders expanded to image files (`expand_paths`), decoded
(`read_images`), and grouped into batches of one shape (`shape_batches`). No torch here either."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np

from cnnlab.data.decode import BadImage, DecodeSettings, decode
from cnnlab.data.dicom import has_dicom_preamble
from cnnlab.data.folders import image_extensions, printable
from cnnlab.errors import UserError

# ------------------------------------------------------------------------------------------ prediction


def expand_paths(paths) -> list[Path]:
    """Files given, and the image files in folders given (hidden ones left out; broken links skipped, said): those
    of an image or DICOM extension, and files of any other extension (or none) with the DICOM preamble. A label
    file (`.csv`) given stands for the files of its test rows."""
    from cnnlab.data.labels import expand_label_files

    paths = expand_label_files(paths)
    exts = image_extensions()

    def is_image(q: Path) -> bool:  # only a file of no image extension is opened to look
        return q.suffix.lower() in exts or (q.is_file() and has_dicom_preamble(q))

    out = []
    for p in map(Path, paths):
        if p.is_dir():
            found = sorted(
                q
                for q in p.rglob("*")
                if not any(part.startswith(".") for part in q.relative_to(p).parts) and is_image(q)
            )
            for q in found:
                if q.is_file():
                    out.append(q)
                elif q.is_symlink():
                    warnings.warn(f"skipped {printable(q)}: broken link", UserWarning, stacklevel=2)
        elif p.is_file():
            out.append(p)
        else:
            raise UserError(f"no such image or folder: {p}")
    if not out:
        raise UserError("no images found in the given paths")
    return out


def read_images(paths, prep: DecodeSettings) -> tuple[list[Path], list[np.ndarray]]:
    """The images to predict (`expand_paths`), decoded: (files, arrays). Unreadable ones are skipped with a warning,
    unless a single file was given: then it is the error."""
    files, arrays = [], []
    for f in expand_paths(paths):
        try:
            arrays.append(decode(f, prep)[0])
            files.append(f)
        except BadImage as e:
            if len(paths) == 1 and Path(paths[0]).is_file():
                raise UserError(f"cannot read image {f}: {e}") from None
            warnings.warn(f"skipped {f}: {e}", UserWarning, stacklevel=2)
    if not files:
        raise UserError("none of the given images could be read")
    return files, arrays


def shape_batches(arrays: list[np.ndarray], batch_size: int) -> list[list[int]]:
    """Indices of the arrays in batches of one shape each (resize = keep gives several), at most batch_size long."""
    groups: dict[tuple, list[int]] = {}
    for i, a in enumerate(arrays):
        groups.setdefault(a.shape, []).append(i)
    return [members[k : k + batch_size] for members in groups.values() for k in range(0, len(members), batch_size)]
