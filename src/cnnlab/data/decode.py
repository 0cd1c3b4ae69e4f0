"""How one file becomes a C x H x W uint8 array: `DecodeSettings` (size, resize, channels, crop; part of the cache
key), `decode`, and `decode_with_geometry` (with the `Geometry` that maps boxes into the decoded array).

No torch here: `cnnlab predict FILE.onnx` decodes with it on onnxruntime alone, exactly as training decoded.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from cnnlab.config import DataConfig

RESIZE_POLICIES = ("squash", "pad", "keep")
CROP_POLICIES = ("none", "foreground")
CACHE_VERSION = 1  # part of the decode cache's key: raise it when decoding changes


@dataclass(frozen=True)
class DecodeSettings:
    """How a file becomes a tensor: part of the cache key. A run's comes from its config (`DecodeSettings.of`);
    its values are checked with the rest of the config (`cnnlab.training.check_config`), before anything is
    decoded."""

    image_size: int = 128
    resize: str = "squash"  # squash to a square | pad (keep aspect, pad) | keep (variable size, bucketed)
    channels: int = 3  # 3 = RGB, 1 = gray
    crop: str = "none"  # none | foreground (bounding box of the largest bright component)

    @classmethod
    def of(cls, d: DataConfig) -> DecodeSettings:
        return cls(d.image_size, d.resize, d.channels, d.crop)

    def key(self) -> str:
        return f"v{CACHE_VERSION}-{self.image_size}-{self.resize}-c{self.channels}-{self.crop}"


class BadImage(Exception):
    """A file that cannot be decoded (corrupt, truncated, not an image): skipped, not fatal."""


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


def _placement(w: int, h: int, prep: DecodeSettings) -> tuple[tuple[int, int], tuple[int, int], tuple[int, int]]:
    """Where a w x h image lands in the decoded array: (its resized size, its offset, the array's (w, h))."""
    s = prep.image_size
    if prep.resize == "squash":
        return (s, s), (0, 0), (s, s)
    scale = s / max(w, h)
    if prep.resize == "pad":
        nw, nh = max(1, round(w * scale)), max(1, round(h * scale))
        return (nw, nh), ((s - nw) // 2, (s - nh) // 2), (s, s)
    # keep: longer side to s, each side rounded to a multiple of 16 so that sizes fall into few buckets.
    nw, nh = (max(16, int(round(v * scale / 16)) * 16) for v in (w, h))
    return (nw, nh), (0, 0), (nw, nh)


def _resize(im: Image.Image, prep: DecodeSettings) -> Image.Image:
    size, offset, canvas = _placement(*im.size, prep)
    im = im.resize(size, Image.Resampling.BILINEAR)
    if prep.resize != "pad":
        return im
    out = Image.new(im.mode, canvas)
    out.paste(im, offset)
    return out


@dataclass(frozen=True)
class Geometry:
    """How `decode` moved an image's pixels: crop, then resize (and pad). Coordinates are continuous pixels
    (pixel i covers [i, i+1)), as Pillow's resize maps them."""

    size: tuple[int, int]  # (w, h) of the image as opened, before the crop (a JPEG may open at 1/2, 1/4, 1/8)
    crop: tuple[int, int, int, int]  # (left, top, right, bottom) in those pixels
    resized: tuple[int, int]  # the cropped image's size after resizing
    offset: tuple[int, int]  # where it lies in the decoded array (pad)
    canvas: tuple[int, int]  # the decoded array's (w, h)

    def box(self, cx: float, cy: float, w: float, h: float) -> tuple[float, float, float, float]:
        """A box given as centre and size relative to the original image (0-1, YOLO) -> (x0, y0, x1, y1) in the
        decoded array's pixels, clipped to the image's part of it (a box cropped away entirely has no area)."""
        (W, H), (left, top, right, bottom) = self.size, self.crop
        sx, sy = self.resized[0] / (right - left), self.resized[1] / (bottom - top)
        ox, oy = self.offset

        def x(v):
            return ox + (min(max(v * W, left), right) - left) * sx

        def y(v):
            return oy + (min(max(v * H, top), bottom) - top) * sy

        return x(cx - w / 2), y(cy - h / 2), x(cx + w / 2), y(cy + h / 2)


def _open(path: Path, prep: DecodeSettings) -> tuple[Image.Image, tuple[int, int], str]:
    """The file as an RGB or L image, upright: (image, original (w, h), original mode). Raises BadImage."""
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
            return _to_mode(im, prep.channels), size, mode
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise BadImage(f"over Pillow's decompression-bomb limit of {Image.MAX_IMAGE_PIXELS} pixels") from None
    except Exception as e:  # only Pillow runs above: any failure (a bad EXIF block raises TypeError) is a bad file
        raise BadImage(f"{type(e).__name__}: {e}") from e


def decode_with_geometry(path: Path, prep: DecodeSettings) -> tuple[np.ndarray, tuple[int, int], str, Geometry]:
    """`decode`, and the `Geometry` that maps a point or box of the original image into the decoded array."""
    im, size, mode = _open(path, prep)
    crop = (0, 0, *im.size)
    if prep.crop == "foreground":
        crop = tuple(int(v) for v in foreground_box(np.asarray(im.convert("L"))))
        im_cropped = im.crop(crop)
    else:
        im_cropped = im
    geometry = Geometry(im.size, crop, *_placement(*im_cropped.size, prep))
    arr = np.asarray(_resize(im_cropped, prep))
    arr = arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)
    return np.array(arr, order="C"), size, mode, geometry  # a writable copy (Pillow's buffer is read-only)


def decode(path: Path, prep: DecodeSettings) -> tuple[np.ndarray, tuple[int, int], str]:
    """One file -> (C x H x W uint8 array, original (w, h), original mode). Raises BadImage."""
    return decode_with_geometry(path, prep)[:3]
