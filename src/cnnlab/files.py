"""How cnnlab writes files: into checked output folders only, atomically, one process per run folder.

- `output_folder` is the one place an output path is checked: never inside a dataset (a dataset folder is
  read-only for cnnlab), never a file or under one, and created (or refused) with one clear error.
- `atomic_write` writes through a temporary file that replaces the target only when it is complete, and is
  removed when anything fails (a full disk included): a reader sees the old file or the new one, never half.
- `FolderLock` keeps a second process out of a run folder that one is writing.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import threading
from pathlib import Path

from cnnlab.errors import UserError

LOCK = ".cnnlab.lock"
FULL_BYTES = 1 << 20  # less free space than this after a failed write: the disk is full


def _within(path: Path, root: Path) -> bool:
    return path == root or root in path.parents


def output_folder(out, datasets=(), what: str = "output folder", create: bool = True) -> Path:
    """`out` as an absolute folder cnnlab may write into: outside every dataset in `datasets`, not a file, not
    under a file; created when `create`. Raises UserError otherwise."""
    out = Path(out).expanduser()
    resolved = out.resolve()
    for root in datasets:
        if root and _within(resolved, Path(root).expanduser().resolve()):
            raise UserError(f"{what} {out} is inside the dataset {root}: cnnlab never writes into a dataset")
    for p in [resolved, *resolved.parents]:
        if p.exists() and not p.is_dir():
            raise UserError(f"{what} {out} " + ("is a file" if p == resolved else f"lies under the file {p}"))
    if create:
        try:
            resolved.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise UserError(f"cannot create {what} {out}: {e.strerror or e}") from None
        if not os.access(resolved, os.W_OK | os.X_OK):
            raise UserError(f"cannot write into {what} {out}: permission denied")
    return resolved


def write_error(path: Path, e: BaseException) -> UserError:
    """One line for a failed write; a full disk says so (torch's zip writer reports one only as a RuntimeError,
    so the free space is asked)."""
    text = str(e)
    full = getattr(e, "errno", None) == errno.ENOSPC or "No space left" in text
    if not full and isinstance(e, RuntimeError):
        with contextlib.suppress(OSError):
            full = shutil.disk_usage(Path(path).parent).free < FULL_BYTES
    why = (
        "the disk is full"
        if full
        else (getattr(e, "strerror", None) or text.strip().splitlines()[0][:120] if text.strip() else type(e).__name__)
    )
    return UserError(f"cannot write {path}: {why}")


@contextlib.contextmanager
def atomic_write(path: Path):
    """Yields a temporary path beside `path`; on success it replaces `path`, on any failure it is removed.
    OS errors (and torch's zip writer's RuntimeError on a full disk) become one UserError."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}-{threading.get_ident()}")
    try:
        yield tmp
        os.replace(tmp, path)
    except (OSError, RuntimeError) as e:
        raise write_error(path, e) from None
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)


def write_text(path: Path, text: str) -> None:
    with atomic_write(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def torch_save(obj, path: Path) -> None:
    import torch

    with atomic_write(path) as tmp:
        torch.save(obj, tmp)


class FolderLock:
    """An exclusive, non-blocking lock on a folder (flock on a hidden file in it): the second process that
    wants the folder fails at once with one line, rather than mixing its files with the first's. The lock
    goes with the process, so a killed run leaves nothing to clean up."""

    def __init__(self, folder: Path, what: str = "run folder"):
        self.folder, self.what, self.file = Path(folder), what, None

    def __enter__(self):
        try:
            import fcntl
        except ImportError:  # pragma: no cover - not on Linux/macOS: no lock
            return self
        try:
            self.file = open(self.folder / LOCK, "a+")
        except OSError as e:
            raise write_error(self.folder / LOCK, e) from None
        try:
            fcntl.flock(self.file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            self.file.seek(0)
            holder = self.file.read().strip()
            self.file.close()
            self.file = None
            raise UserError(
                f"{self.what} {self.folder} is in use by another cnnlab process"
                + (f" (pid {holder})" if holder else "")
                + ": wait for it, or choose another --out"
            ) from None
        self.file.seek(0)
        self.file.truncate()
        self.file.write(str(os.getpid()))
        self.file.flush()
        return self

    def __exit__(self, *exc):
        if self.file is not None:
            self.file.close()  # closing releases the flock
            self.file = None
