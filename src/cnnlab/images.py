"""Decode images once into uint8 tensors, and keep them in a cache outside the dataset.

Decoding and resizing full-size JPEGs every epoch dominated the assignment's run time. Here each file is
decoded once per preprocessing setting (JPEG draft mode decodes large files at a reduced scale), on all
cores, and stored in a cache keyed by the file's path, size and mtime and by the preprocessing settings:
a second run opens no image, and a changed file or setting re-decodes exactly what it affects.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps

from cnnlab.config import DataConfig
from cnnlab.data import Sample
from cnnlab.files import output_folder, torch_save

RESIZE_POLICIES = ("squash", "pad", "keep")
CROP_POLICIES = ("none", "foreground")
CACHE_VERSION = 1


@dataclass(frozen=True)
class Prep:
    """How a file becomes a tensor: part of the cache key. A run's comes from its config (`Prep.of`); its values
    are checked with the rest of the config (cnnlab.checks), before anything is decoded."""

    image_size: int = 128
    resize: str = "squash"  # squash to a square | pad (keep aspect, pad) | keep (variable size, bucketed)
    channels: int = 3  # 3 = RGB, 1 = gray
    crop: str = "none"  # none | foreground (bounding box of the largest bright component)

    @classmethod
    def of(cls, d: DataConfig) -> Prep:
        return cls(d.image_size, d.resize, d.channels, d.crop)

    def key(self) -> str:
        return f"v{CACHE_VERSION}-{self.image_size}-{self.resize}-c{self.channels}-{self.crop}"


class BadImage(Exception):
    """A file that cannot be decoded (corrupt, truncated, not an image): skipped, not fatal."""


# --------------------------------------------------------------------------------------------- decode


def _to_mode(im: Image.Image, channels: int) -> Image.Image:
    """Any Pillow mode -> RGB or L. 16-bit and float images are stretched to their own range."""
    if im.mode in ("I", "F") or im.mode.startswith("I;16"):
        a = np.asarray(im, dtype=np.float32)
        lo, hi = float(a.min()), float(a.max())
        a = (a - lo) * (255.0 / (hi - lo)) if hi > lo else np.zeros_like(a)
        im = Image.fromarray(a.round().astype(np.uint8), "L")
    if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
        rgba = im.convert("RGBA")
        # Transparent pixels become black, like the padding.
        im = Image.alpha_composite(Image.new("RGBA", rgba.size, (0, 0, 0, 255)), rgba)
    return im.convert("L" if channels == 1 else "RGB")


def foreground_box(gray: np.ndarray, threshold: float = 0.08) -> tuple[int, int, int, int]:
    """Bounding box (left, top, right, bottom) of the largest bright connected component.

    Used to crop MRI slices to the head so that borders and scanner framing carry no label.
    """
    from scipy import ndimage

    mask = gray > max(threshold * 255.0, float(np.percentile(gray, 5)) + 10)
    mask = ndimage.binary_opening(mask, iterations=2)
    labels, n = ndimage.label(mask)
    h, w = gray.shape
    if n == 0:
        return 0, 0, w, h
    sizes = np.bincount(labels.ravel())[1:]
    ys, xs = np.nonzero(labels == (int(np.argmax(sizes)) + 1))
    top, bottom, left, right = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
    if (bottom - top) * (right - left) < 0.05 * h * w:  # tiny blob: do not trust it
        return 0, 0, w, h
    pad = int(0.02 * max(h, w))
    return max(0, left - pad), max(0, top - pad), min(w, right + pad), min(h, bottom + pad)


def _resize(im: Image.Image, prep: Prep) -> Image.Image:
    s = prep.image_size
    if prep.resize == "squash":
        return im.resize((s, s), Image.Resampling.BILINEAR)
    w, h = im.size
    scale = s / max(w, h)
    if prep.resize == "pad":
        nw, nh = max(1, round(w * scale)), max(1, round(h * scale))
        canvas = Image.new(im.mode, (s, s))
        canvas.paste(im.resize((nw, nh), Image.Resampling.BILINEAR), ((s - nw) // 2, (s - nh) // 2))
        return canvas
    # keep: longer side to s, each side rounded to a multiple of 16 so that sizes fall into few buckets.
    nw, nh = (max(16, int(round(v * scale / 16)) * 16) for v in (w, h))
    return im.resize((nw, nh), Image.Resampling.BILINEAR)


def decode(path: Path, prep: Prep) -> tuple[np.ndarray, tuple[int, int], str]:
    """One file -> (C x H x W uint8 array, original (w, h), original mode). Raises BadImage."""
    try:
        with warnings.catch_warnings(), Image.open(path) as im:
            # Over Pillow's pixel limit (a bomb, or a 30000x30000 scan): skipped like any unusable file.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            size, mode = im.size, im.mode
            if im.format == "JPEG":
                # Decode at 1/2, 1/4 or 1/8 scale when that still covers the target: several times faster.
                want = prep.image_size * (2 if prep.crop == "foreground" else 1)
                im.draft("L" if prep.channels == 1 else "RGB", (want, want))
            im = ImageOps.exif_transpose(im)
            im = _to_mode(im, prep.channels)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise BadImage(f"over Pillow's decompression-bomb limit of {Image.MAX_IMAGE_PIXELS} pixels") from None
    except Exception as e:  # only Pillow runs above: any failure (a bad EXIF block raises TypeError) is a bad file
        raise BadImage(f"{type(e).__name__}: {e}") from e
    if prep.crop == "foreground":
        im = im.crop(foreground_box(np.asarray(im.convert("L"))))
    arr = np.asarray(_resize(im, prep))
    arr = arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)
    return np.array(arr, order="C"), size, mode  # a writable copy (Pillow's buffer is read-only)


# ---------------------------------------------------------------------------------------------- cache


def default_cache_dir() -> Path:
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

    def __init__(self, root: Path, prep: Prep, cache_dir: Path | None = None, workers: int | None = None):
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
        keys = [file_key(s.path) for s in samples]
        store = self._read()
        missing = [i for i, k in enumerate(keys) if k not in store["entries"] and k not in store["bad"]]
        if missing:
            output_folder(self.dir, [self.root], "cache folder")
            with _locked(self.dir / "lock"):
                store = self._read()  # another process may have filled it meanwhile
                missing = [i for i, k in enumerate(keys) if k not in store["entries"] and k not in store["bad"]]
                self._decode_into(store, [samples[i].path for i in missing], [keys[i] for i in missing], progress)
                self._write(store)
        self.stats.decoded = len(missing)
        self.stats.hits = len(samples) - len(missing)

        good, bad = [], []
        for s, k in zip(samples, keys, strict=True):
            if k in store["bad"]:
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
        from tqdm import tqdm

        def work(p):
            try:
                return decode(p, self.prep)
            except BadImage as e:
                return str(e)

        with ThreadPoolExecutor(self.workers) as pool:
            results = pool.map(work, paths)
            for k, r in tqdm(zip(keys, results, strict=True), total=len(keys), desc="decoding",
                             disable=None if progress else True, leave=False, unit="img"):
                if isinstance(r, str):
                    store["bad"][k] = r
                else:
                    arr, size, mode = r
                    store["entries"][k] = {"image": torch.from_numpy(arr), "size": torch.tensor(size),
                                           "mode": mode}


def load_images(samples: list[Sample], root: Path, prep: Prep, cache_dir=None, progress=False,
                strict=False) -> tuple[ImageSet, list[tuple[str, str]], CacheStats]:
    cache = ImageCache(root, prep, cache_dir)
    images, bad = cache.load(samples, progress=progress)
    if bad and strict:
        from cnnlab.data import report_skipped

        report_skipped(bad, strict=True)
    return images, bad, cache.stats

