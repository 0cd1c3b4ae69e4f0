"""The decode cache: images decoded once into uint8 (`load_images`, `ImageSet`), kept outside the dataset.

Decoding and resizing full-size JPEGs every epoch dominated the assignment's run time. Here each file is
decoded once per preprocessing setting (JPEG draft mode decodes large files at a reduced scale), on all
cores, into a store on disk (data/store.py: shard files and an index) keyed by the file's path, size and mtime
and by the preprocessing settings: a second run opens no image, and a changed file or setting re-decodes exactly
what it affects. A run's images are then read into memory when they fit easily, or else memory-mapped from the
store and read by the batches that need them (`data.cache`: auto, memory, mmap), so a data set larger than the
memory trains, and the processes of a study or of a data-parallel run share the page cache's one copy. How one
file is decoded (`DecodeSettings`, `decode`) is in data/decode.py, which imports no torch.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import torch

from cnnlab.data.decode import BadImage, DecodeSettings, decode
from cnnlab.data.folders import Sample
from cnnlab.data.store import (
    Entry,
    Index,
    MappedImages,
    ShardWriter,
    read_entries,
    read_index,
    read_stacked,
    write_index,
)
from cnnlab.files import output_folder

# ---------------------------------------------------------------------------------------------- cache


def default_cache_dir() -> Path:
    """The decode cache folder: $CNNLAB_CACHE, else the user cache folder (platformdirs) for cnnlab."""
    env = os.environ.get("CNNLAB_CACHE")
    if env:
        return Path(env)
    import platformdirs

    return Path(platformdirs.user_cache_dir("cnnlab"))


def file_key(path: Path) -> str:
    st = path.stat()
    return f"{path}|{st.st_size}|{st.st_mtime_ns}"


@contextlib.contextmanager
def _locked(lock_path: Path):
    """Serialise cache writers (parallel study jobs share a cache)."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not on Linux/macOS
        yield
        return
    with open(lock_path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


CACHE_MODES = ("auto", "memory", "mmap")
MEMORY_SHARE = 0.25  # auto: in memory when the images take at most this share of the available memory


def available_memory() -> int:
    """Bytes of memory available to new allocations (MemAvailable: free plus reclaimable page cache)."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):  # pragma: no cover - not POSIX
        return 8 << 30


def size_text(n: int) -> str:
    return f"{n / 1e9:.1f} GB" if n >= 1e9 else f"{n / 1e6:.0f} MB"


@dataclass
class ImageSet:
    """Decoded images of some samples. `images` is one N x C x S x S tensor, `MappedImages` (the same, read from
    the store by the batches that ask), or a list of tensors for resize=keep. `mapped` says which; `nbytes`
    is the pixels' size."""

    images: torch.Tensor | MappedImages | list[torch.Tensor]
    labels: torch.Tensor
    samples: list[Sample]
    sizes: list[tuple[int, int]]
    modes: list[str]

    def __len__(self) -> int:
        return len(self.samples)

    @property
    def mapped(self) -> bool:
        return isinstance(self.images, MappedImages)

    @property
    def nbytes(self) -> int:
        if isinstance(self.images, list):
            return sum(x.numel() for x in self.images)
        return self.images.nbytes if self.mapped else self.images.numel()


def cache_note(*sets: ImageSet) -> str:
    """One line of where a run's images are: `cache: memory-mapped, 6.1 GB on disk` or `cache: in memory, 140 MB`."""
    total = sum(s.nbytes for s in sets)
    if any(s.mapped for s in sets):
        return f"cache: memory-mapped, {size_text(total)} on disk"
    return f"cache: in memory, {size_text(total)}"


@dataclass
class CacheStats:
    hits: int = 0
    decoded: int = 0
    bad: int = 0
    seconds: float = 0.0


class ImageCache:
    """One store per (dataset root, preprocessing) in the cache folder; never inside the dataset."""

    def __init__(self, root: Path, prep: DecodeSettings, cache_dir: Path | None = None, workers: int | None = None):
        self.prep = prep
        self.workers = workers or os.cpu_count() or 1
        base = Path(cache_dir).expanduser() if cache_dir else default_cache_dir()
        self.root = root = Path(root).resolve()
        output_folder(base, [root], "cache folder", create=False)
        tag = hashlib.sha1(str(root).encode()).hexdigest()[:16]
        self.dir = base / tag
        self.store = self.dir / prep.key()
        self.stats = CacheStats()

    def load(
        self, samples: list[Sample], progress: bool = False, mode: str = "auto", copies: int = 1
    ) -> tuple[ImageSet, list[tuple[str, str]]]:
        """Decode (or find) every sample; returns the images of the good ones (in memory, or memory-mapped:
        `mode`) and the (path, reason) of the bad ones."""
        t0 = time.perf_counter()
        keys, gone = [], {}
        for s in samples:
            try:
                keys.append(file_key(s.path))
            except OSError as e:  # removed or moved since the scan: unusable, like a corrupt file
                gone[str(s.path)] = f"cannot read: {e.strerror or e}"
                keys.append(None)
        index = read_index(self.store)
        missing = [i for i, k in enumerate(keys) if k is not None and not index.knows(k)]
        if missing:
            output_folder(self.dir, [self.root], "cache folder")
            self.store.mkdir(exist_ok=True)
            with _locked(self.dir / "lock"):
                index = read_index(self.store)  # another process may have filled it meanwhile
                missing = [i for i, k in enumerate(keys) if k is not None and not index.knows(k)]
                writer = ShardWriter(self.store)
                try:
                    self._decode_into(
                        index, writer, [samples[i].path for i in missing], [keys[i] for i in missing], progress
                    )
                    write_index(self.store, index)
                except BaseException:
                    writer.abort()  # no index names these shards
                    raise
                (self.dir / f"{self.prep.key()}.pt").unlink(missing_ok=True)  # the store of cnnlab 0.1
        self.stats.decoded = len(missing)
        self.stats.hits = len(samples) - len(missing) - len(gone)
        good, bad = [], []
        for s, k in zip(samples, keys, strict=True):
            if k is None:
                bad.append((str(s.path), gone[str(s.path)]))
            elif k in index.bad:
                bad.append((str(s.path), index.bad[k]))
            else:
                good.append((s, index.entries[k]))
        self.stats.bad = len(bad)
        entries = [e for _, e in good]
        result = ImageSet(
            images=self._images(entries, mode, copies),
            labels=torch.tensor([s.label for s, _ in good], dtype=torch.long),
            samples=[s for s, _ in good],
            sizes=[e.size for e in entries],
            modes=[e.mode for e in entries],
        )
        self.stats.seconds = time.perf_counter() - t0
        return result, bad

    def _images(self, entries: list[Entry], mode: str, copies: int):
        if self.prep.resize == "keep":
            return read_entries(self.store, entries)  # variable sizes: in memory
        nbytes = sum(e.nbytes for e in entries) * copies  # every process of this machine would hold its own
        if entries and (mode == "mmap" or (mode == "auto" and nbytes > MEMORY_SHARE * available_memory())):
            return MappedImages(self.store, entries)
        return read_stacked(self.store, entries)

    def _decode_into(
        self, index: Index, writer: ShardWriter, paths: list[Path], keys: list[str], progress: bool
    ) -> None:
        """Decode `paths` on all cores, each image written to a new shard as it arrives (never all held)."""
        from cnnlab.reporting.progress import progress_bar

        def work(p):
            try:
                return decode(p, self.prep)
            except BadImage as e:
                return str(e)

        try:
            with ThreadPoolExecutor(self.workers) as pool:
                results = _bounded_map(pool, work, paths, window=8 * self.workers)
                for k, r in progress_bar(
                    zip(keys, results, strict=True), total=len(keys), desc="decoding", unit="img", enabled=progress
                ):
                    if isinstance(r, str):
                        index.bad[k] = r
                    else:
                        arr, size, mode = r
                        index.entries[k] = writer.add(arr, size, mode)
        finally:
            writer.close()


def _bounded_map(pool: ThreadPoolExecutor, fn, items: list, window: int):
    """`pool.map(fn, items)` in order, with at most `window` results waiting at once (pool.map would queue every
    item up front, and finished images would pile up behind one slow file)."""
    pending = deque()
    for item in items:
        pending.append(pool.submit(fn, item))
        if len(pending) >= window:
            yield pending.popleft().result()
    while pending:
        yield pending.popleft().result()


def load_images(
    samples: list[Sample],
    root: Path,
    prep: DecodeSettings,
    cache_dir=None,
    progress=False,
    strict=False,
    mode: str = "auto",
    copies: int = 1,
) -> tuple[ImageSet, list[tuple[str, str]], CacheStats]:
    """Decode `samples` (paths under `root`) with `prep` through the cache, each file once per setting.

    Returns (ImageSet of the usable ones, in memory or memory-mapped as `mode` says (auto: mapped when they
    would take more than a quarter of the available memory, counted `copies` times: the processes of this machine
    that hold them, e.g. a data-parallel run's ranks), (path, reason) of the unusable ones, CacheStats);
    with `strict`, an unusable file is a UserError instead."""
    cache = ImageCache(root, prep, cache_dir)
    images, bad = cache.load(samples, progress=progress, mode=mode, copies=copies)
    if bad and strict:
        from cnnlab.data.folders import report_skipped

        report_skipped(bad, strict=True)
    return images, bad, cache.stats
