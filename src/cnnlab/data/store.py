"""The decode cache's store on disk: uint8 pixels in shard files, and an index of where each image lies.

One store is a folder per (dataset root, preprocessing). Its shards (`shard-<id>.u8`, at most `SHARD_BYTES`
each) hold the decoded images' bytes one after another, each image H x W x C (channels last: a batch read from a
shard is then already in the layout the network reads, with no second copy); a shard is written once, by one decode, and
never changed. `index.pt` says, for each file key (path, size, mtime), the shard, the byte offset, the shape, the
original size and the mode, and for each unusable file its reason; it is replaced atomically after the shards it
names are on disk, so a reader never sees an index that points at missing bytes, and a decode that dies leaves
only a shard no index names (removed by the next writer). `MappedImages` reads fixed-size images of a store by
the batches that need them, through memory maps whose pages it hands back to the kernel as it goes: the process
stays small however large the data, and every process reading a store shares the page cache's one copy.
"""

from __future__ import annotations

import contextlib
import mmap
import os
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from cnnlab.files import torch_save, write_error

SHARD_BYTES = 1 << 30  # a shard ends after the image that takes it past 1 GiB
INDEX = "index.pt"
FORMAT = 3  # 1: one torch file holding every image (cnnlab 0.1); 2: shards of C x H x W images; 3: H x W x C
RELEASE_BYTES = 64 << 20  # MappedImages hands its mapped pages back after reading this much


@dataclass
class Entry:
    """Where one decoded image lies: shard file name, byte offset, shape (C, H, W), original size (w, h), mode."""

    shard: str
    offset: int
    shape: tuple[int, int, int]
    size: tuple[int, int]
    mode: str

    @property
    def nbytes(self) -> int:
        c, h, w = self.shape
        return c * h * w


@dataclass
class Index:
    """A store's index: file key -> Entry, and file key -> the reason it cannot be used."""

    entries: dict[str, Entry] = field(default_factory=dict)
    bad: dict[str, str] = field(default_factory=dict)

    def knows(self, key: str) -> bool:
        return key in self.entries or key in self.bad

    def to_state(self) -> dict:
        keys = list(self.entries)
        shards = sorted({e.shard for e in self.entries.values()})
        at = {s: i for i, s in enumerate(shards)}
        rows = [[at[e.shard], e.offset, *e.shape, *e.size] for e in self.entries.values()]
        return {
            "format": FORMAT,
            "keys": keys,
            "shards": shards,
            "table": torch.tensor(rows, dtype=torch.long).reshape(-1, 7),
            "modes": [e.mode for e in self.entries.values()],
            "bad_keys": list(self.bad),
            "bad_reasons": list(self.bad.values()),
        }

    @classmethod
    def from_state(cls, state: dict) -> Index:
        if state.get("format") != FORMAT:
            raise ValueError("another format")
        table = state["table"].tolist()
        shards = state["shards"]
        entries = {
            k: Entry(shards[r[0]], r[1], tuple(r[2:5]), tuple(r[5:7]), m)
            for k, r, m in zip(state["keys"], table, state["modes"], strict=True)
        }
        return cls(entries, dict(zip(state["bad_keys"], state["bad_reasons"], strict=True)))


def read_index(folder: Path) -> Index:
    """The store's index, with every entry whose shard is missing or too short left out (so it is decoded
    again); an empty index for a new, damaged or older-format store."""
    try:
        index = Index.from_state(torch.load(folder / INDEX, weights_only=True))
    except Exception:  # missing, damaged, another format: rebuilt, never fatal
        return Index()
    sizes: dict[str, int] = {}
    for name in {e.shard for e in index.entries.values()}:
        try:
            sizes[name] = (folder / name).stat().st_size
        except OSError:
            sizes[name] = -1
    index.entries = {k: e for k, e in index.entries.items() if e.offset + e.nbytes <= sizes[e.shard]}
    return index


def write_index(folder: Path, index: Index) -> None:
    """Replace the index atomically, then remove the shards it no longer names (the caller holds the lock)."""
    torch_save(index.to_state(), folder / INDEX)
    named = {e.shard for e in index.entries.values()}
    for p in folder.glob("shard-*.u8"):
        if p.name not in named:
            p.unlink(missing_ok=True)


class ShardWriter:
    """Appends decoded images to new shard files of `folder` (a new one past SHARD_BYTES) -> their Entries.
    `abort` removes what it wrote (a decode that failed: no index will name it). A full disk is one UserError."""

    def __init__(self, folder: Path):
        self.folder, self.file, self.name, self.offset, self.written = folder, None, "", 0, []

    def add(self, arr: np.ndarray, size: tuple[int, int], mode: str) -> Entry:
        arr = np.ascontiguousarray(arr, dtype=np.uint8)
        try:
            if self.file is None or self.offset >= SHARD_BYTES:
                self.close()
                self.name, self.offset = f"shard-{uuid.uuid4().hex[:12]}.u8", 0
                self.written.append(self.folder / self.name)
                self.file = open(self.folder / self.name, "wb")
            self.file.write(np.ascontiguousarray(arr.transpose(1, 2, 0)).tobytes())  # H x W x C
        except OSError as e:
            raise write_error(self.folder / self.name, e) from None
        entry = Entry(self.name, self.offset, tuple(arr.shape), tuple(int(v) for v in size), mode)
        self.offset += arr.nbytes
        return entry

    def close(self) -> None:
        """Flush the open shard to the disk (before the index that names it is written)."""
        if self.file is not None:
            f, self.file = self.file, None
            try:
                f.flush()
                os.fsync(f.fileno())
                f.close()
            except OSError as e:
                with contextlib.suppress(OSError):
                    f.close()
                raise write_error(self.folder / self.name, e) from None

    def abort(self) -> None:
        with contextlib.suppress(OSError):
            if self.file is not None:
                self.file.close()
        self.file = None
        for path in self.written:
            path.unlink(missing_ok=True)


def read_entries(folder: Path, entries: list[Entry]) -> list[torch.Tensor]:
    """The images of `entries`, read into memory (one tensor each)."""
    out, files = [], {}
    try:
        for e in entries:
            f = files.get(e.shard) or files.setdefault(e.shard, open(folder / e.shard, "rb"))
            f.seek(e.offset)
            c, h, w = e.shape
            hwc = torch.frombuffer(bytearray(f.read(e.nbytes)), dtype=torch.uint8).view(h, w, c)
            out.append(hwc.permute(2, 0, 1).contiguous())
    finally:
        for f in files.values():
            f.close()
    return out


def read_stacked(folder: Path, entries: list[Entry]) -> torch.Tensor:
    """Fixed-size images of `entries` read into one N x C x H x W tensor."""
    if not entries:
        return torch.zeros(0, dtype=torch.uint8)
    out = torch.empty((len(entries), *entries[0].shape), dtype=torch.uint8)
    for i, x in enumerate(read_entries(folder, entries)):
        out[i] = x
    return out


class MappedImages:
    """Fixed-size images of a store, read from its memory-mapped shards by the batches that ask (`gather`, or
    `images[idx]` as on a tensor). A batch is a fresh tensor (channels_last when `channels_last`, as the
    in-memory path stores a set); the mapped pages it touched are handed back to the kernel every RELEASE_BYTES,
    so they stay in the page cache, shared, but not in this process's resident memory."""

    def __init__(self, folder: Path, entries: list[Entry]):
        self.folder, self.channels_last = Path(folder), False
        self.item_shape = entries[0].shape
        nbytes = entries[0].nbytes
        names = sorted({e.shard for e in entries})
        self._maps = {n: self._map(n) for n in names}
        self._views = {n: np.frombuffer(m, dtype=np.uint8) for n, m in self._maps.items()}
        at = {n: i for i, n in enumerate(names)}
        self._names = names
        self._shard = np.array([at[e.shard] for e in entries], dtype=np.int64)
        self._offset = np.array([e.offset for e in entries], dtype=np.int64)
        self._nbytes, self._read = nbytes, 0

    def _map(self, name: str) -> mmap.mmap:
        with open(self.folder / name, "rb") as f:
            return mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)

    def __len__(self) -> int:
        return len(self._shard)

    @property
    def shape(self) -> tuple[int, ...]:
        return (len(self), *self.item_shape)

    @property
    def nbytes(self) -> int:
        return len(self) * self._nbytes

    def gather(self, idx) -> torch.Tensor:
        """The images at `idx` (a LongTensor, list or array), B x C x H x W uint8."""
        rows = np.asarray(idx.tolist() if isinstance(idx, torch.Tensor) else idx, dtype=np.int64).reshape(-1)
        out = np.empty((len(rows), self._nbytes), dtype=np.uint8)  # each row an H x W x C image
        for j, (s, off) in enumerate(zip(self._shard[rows], self._offset[rows], strict=True)):
            out[j] = self._views[self._names[s]][off : off + self._nbytes]
        self._read += out.nbytes
        if self._read >= RELEASE_BYTES:
            self.release()
        c, h, w = self.item_shape
        x = torch.from_numpy(out).view(len(rows), h, w, c).permute(0, 3, 1, 2)  # channels_last strides, no copy
        return x if self.channels_last else x.contiguous()

    def __getitem__(self, i):
        if isinstance(i, int | np.integer):
            return self.gather([int(i)])[0]
        return self.gather(i)

    def __iter__(self):
        for chunk in self.split(256):
            yield from chunk

    def split(self, n: int):
        """Chunks of n images in order, as Tensor.split gives them (for statistics over the whole set)."""
        for start in range(0, len(self), n):
            yield self.gather(np.arange(start, min(start + n, len(self))))

    def release(self) -> None:
        """Hand the mapped pages back to the kernel (they stay in the page cache); a no-op where madvise is not."""
        self._read = 0
        advice = getattr(mmap, "MADV_DONTNEED", None)
        if advice is None:
            return
        for m in self._maps.values():
            if len(m):
                m.madvise(advice)
