"""The decode cache: images decoded once into uint8 tensors (`load_images`, `ImageSet`), kept outside the dataset.

Decoding and resizing full-size JPEGs every epoch dominated the assignment's run time. Here each file is
decoded once per preprocessing setting (JPEG draft mode decodes large files at a reduced scale), on all
cores, and stored in a cache keyed by the file's path, size and mtime and by the preprocessing settings:
a second run opens no image, and a changed file or setting re-decodes exactly what it affects. While the cache
file is unchanged it is also kept in the process's memory, so a study's runs share it. How one file is decoded
(`DecodeSettings`, `decode`) is in data/decode.py, which imports no torch.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import torch

from cnnlab.data.decode import BadImage, DecodeSettings, decode
from cnnlab.data.folders import Sample
from cnnlab.files import output_folder, torch_save

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


@dataclass
class ImageSet:
    """Decoded images of some samples. `images` is one N x C x S x S tensor, or a list for resize=keep."""

    images: torch.Tensor | list[torch.Tensor]
    labels: torch.Tensor
    samples: list[Sample]
    sizes: list[tuple[int, int]]
    modes: list[str]

    def __len__(self) -> int:
        return len(self.samples)


@dataclass
class CacheStats:
    hits: int = 0
    decoded: int = 0
    bad: int = 0
    seconds: float = 0.0


_IN_MEMORY: dict[Path, tuple[int, dict]] = {}  # cache file -> (its mtime, its store), for the last one read


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
        self.path = self.dir / f"{prep.key()}.pt"
        self.stats = CacheStats()

    def _read(self) -> dict:
        """The store, from this process's memory while the file is unchanged (a study's runs share it)."""
        try:
            stamp = self.path.stat().st_mtime_ns
        except OSError:
            return {"entries": {}, "bad": {}}
        held = _IN_MEMORY.get(self.path)
        if held is not None and held[0] == stamp:
            return held[1]
        try:
            store = torch.load(self.path, weights_only=True)
        except Exception:  # a damaged cache is rebuilt, never fatal
            return {"entries": {}, "bad": {}}
        _IN_MEMORY.clear()  # one store held at a time: memory stays that of one data set
        _IN_MEMORY[self.path] = (stamp, store)
        return store

    def _write(self, store: dict) -> None:
        torch_save(store, self.path)
        _IN_MEMORY.clear()
        _IN_MEMORY[self.path] = (self.path.stat().st_mtime_ns, store)

    def load(self, samples: list[Sample], progress: bool = False) -> tuple[ImageSet, list[tuple[str, str]]]:
        """Decode (or fetch) every sample; returns the images of the good ones and the (path, reason) of bad."""
        t0 = time.perf_counter()
        keys, gone = [], {}
        for s in samples:
            try:
                keys.append(file_key(s.path))
            except OSError as e:  # removed or moved since the scan: unusable, like a corrupt file
                gone[str(s.path)] = f"cannot read: {e.strerror or e}"
                keys.append(None)
        store = self._read()
        missing = [
            i for i, k in enumerate(keys) if k is not None and k not in store["entries"] and k not in store["bad"]
        ]
        if missing:
            output_folder(self.dir, [self.root], "cache folder")
            with _locked(self.dir / "lock"):
                store = self._read()  # another process may have filled it meanwhile
                missing = [
                    i
                    for i, k in enumerate(keys)
                    if k is not None and k not in store["entries"] and k not in store["bad"]
                ]
                self._decode_into(store, [samples[i].path for i in missing], [keys[i] for i in missing], progress)
                self._write(store)
        self.stats.decoded = len(missing)
        self.stats.hits = len(samples) - len(missing) - len(gone)

        good, bad = [], []
        for s, k in zip(samples, keys, strict=True):
            if k is None:
                bad.append((str(s.path), gone[str(s.path)]))
            elif k in store["bad"]:
                bad.append((str(s.path), store["bad"][k]))
            else:
                good.append((s, store["entries"][k]))
        self.stats.bad = len(bad)
        imgs = [e["image"] for _, e in good]
        stacked = torch.stack(imgs) if imgs and self.prep.resize != "keep" else imgs
        result = ImageSet(
            images=stacked,
            labels=torch.tensor([s.label for s, _ in good], dtype=torch.long),
            samples=[s for s, _ in good],
            sizes=[tuple(e["size"].tolist()) for _, e in good],
            modes=[e["mode"] for _, e in good],
        )
        self.stats.seconds = time.perf_counter() - t0
        return result, bad

    def _decode_into(self, store: dict, paths: list[Path], keys: list[str], progress: bool) -> None:
        from cnnlab.reporting.progress import progress_bar

        def work(p):
            try:
                return decode(p, self.prep)
            except BadImage as e:
                return str(e)

        with ThreadPoolExecutor(self.workers) as pool:
            results = pool.map(work, paths)
            for k, r in progress_bar(
                zip(keys, results, strict=True), total=len(keys), desc="decoding", unit="img", enabled=progress
            ):
                if isinstance(r, str):
                    store["bad"][k] = r
                else:
                    arr, size, mode = r
                    store["entries"][k] = {"image": torch.from_numpy(arr), "size": torch.tensor(size), "mode": mode}


def load_images(
    samples: list[Sample], root: Path, prep: DecodeSettings, cache_dir=None, progress=False, strict=False
) -> tuple[ImageSet, list[tuple[str, str]], CacheStats]:
    """Decode `samples` (paths under `root`) with `prep` through the cache, each file once per setting.

    Returns (ImageSet of the usable ones, (path, reason) of the unusable ones, CacheStats); with `strict`, an
    unusable file is a UserError instead."""
    cache = ImageCache(root, prep, cache_dir)
    images, bad = cache.load(samples, progress=progress)
    if bad and strict:
        from cnnlab.data.folders import report_skipped

        report_skipped(bad, strict=True)
    return images, bad, cache.stats
