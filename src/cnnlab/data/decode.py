"""How one file becomes a C x H x W uint8 array: `DecodeSettings` (size, resize, channels, crop, window; part of the
cache key), `decode`, and `decode_with_geometry` (with the `Geometry` that maps boxes into the decoded array).
Pillow reads the images, pydicom the DICOM files (data/dicom.py). 16-bit, 32-bit and float values become 8-bit by
the window (`parse_window`: LOW..HIGH to 0..255) or, without one, each image's own min..max; `value_summary` is
what `cnnlab data inspect` reports of a file's stored values.

No torch here: `cnnlab predict FILE.onnx` decodes with it on onnxruntime alone, exactly as training decoded.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from cnnlab.config import DataConfig
from cnnlab.data.dicom import BadDicom, dicom_values, is_dicom, read_dicom, to_uint8
from cnnlab.data.folders import image_extensions
from cnnlab.errors import UserError

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
    window: str = ""  # LOW:HIGH of 16-bit, float and DICOM values to 0..255; "" = each image's own (data.window)

    @classmethod
    def of(cls, d: DataConfig) -> DecodeSettings:
        return cls(d.image_size, d.resize, d.channels, d.crop, d.window)

    def key(self) -> str:
        key = f"v{CACHE_VERSION}-{self.image_size}-{self.resize}-c{self.channels}-{self.crop}"
        window = parse_window(self.window)  # no window: the key every cache before windows has
        return key if window is None else f"{key}-w{window[0]:.10g}_{window[1]:.10g}"


def parse_window(text: str) -> tuple[float, float] | None:
    """data.window "LOW:HIGH" (e.g. "0:4095", "-1000:400") -> (LOW, HIGH); "" -> None. Raises UserError unless it
    is two finite numbers with LOW < HIGH."""
    if not text:
        return None
    try:
        lo, hi = (float(v) for v in str(text).split(":"))
    except ValueError:
        raise UserError(
            f"window must be LOW:HIGH, two numbers (e.g. window=0:4095 or window=-1000:400), got '{text}'"
        ) from None
    if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
        raise UserError(f"window LOW:HIGH needs two finite numbers with LOW < HIGH, got '{text}'")
    return lo, hi


class BadImage(Exception):
    """A file that cannot be decoded (corrupt, truncated, not an image): skipped, not fatal."""


def bit_depth(mode: str) -> str:
    """The bit depth of a Pillow mode's values: "8" (L, RGB, P, ...), "16" (I;16...), "32" (I), "32-float" (F)."""
    return "16" if mode.startswith("I;16") else {"1": "1", "I": "32", "F": "32-float"}.get(mode, "8")


def _to_mode(im: Image.Image, channels: int, window: tuple[float, float] | None = None) -> Image.Image:
    """Any Pillow mode -> RGB or L. 16-bit, 32-bit and float images: `window` (LOW, HIGH) to 0..255, else their own
    range stretched; 8-bit images are never windowed (their values already are what a screen shows)."""
    if im.mode in ("I", "F") or im.mode.startswith("I;16"):
        a = np.asarray(im, dtype=np.float32)
        if window is not None:
            a = to_uint8(a, *window)
        else:
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


def _open_dicom(path: Path, channels: int, window) -> tuple[Image.Image, tuple[int, int], str]:
    """A DICOM file as an RGB or L image: (image, (w, h), "DICOM <photometric>"). Raises BadImage or UserError."""
    try:
        arr, size, mode = read_dicom(path, window)
    except BadDicom as e:
        raise BadImage(str(e)) from None
    except UserError:
        raise
    except Exception as e:  # pydicom's processing of an unusual file: that file is skipped
        raise BadImage(" ".join(f"{type(e).__name__}: {e}".split())) from None
    return _to_mode(Image.fromarray(arr, "L" if arr.ndim == 2 else "RGB"), channels), size, mode


def _open(path: Path, prep: DecodeSettings) -> tuple[Image.Image, tuple[int, int], str]:
    """The file as an RGB or L image, upright: (image, original (w, h), original mode). Raises BadImage (and
    UserError for a DICOM file that needs a package this installation lacks)."""
    window = parse_window(prep.window)  # a bad window is the user's error, never a bad file
    if is_dicom(path, image_extensions()):
        return _open_dicom(path, prep.channels, window)
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
            return _to_mode(im, prep.channels, window), size, mode
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
    """One file -> (C x H x W uint8 array, original (w, h), original mode; "DICOM <photometric>" for DICOM).
    Raises BadImage, or UserError (a bad window; a DICOM file that needs pydicom or a plugin not installed)."""
    return decode_with_geometry(path, prep)[:3]


def needs_values(mode: str) -> bool:
    """Whether a decoded file's mode (as `decode` gives it) leaves its bit depth or value range unknown: DICOM,
    16-bit, 32-bit and float images (an 8-bit image's are its mode's)."""
    return mode.startswith("DICOM") or bit_depth(mode) not in ("1", "8")


def value_summary(path: Path) -> dict:
    """What `cnnlab data inspect` reports of one file's stored values: bits ("8", "16", "32-float"; a DICOM file's
    BitsStored), min and max (a DICOM file's after its modality LUT) and, for DICOM, modality and window."""
    if is_dicom(path, image_extensions()):
        return dicom_values(path)
    with Image.open(path) as im:
        a = np.asarray(im)
        return {"bits": bit_depth(im.mode), "min": float(a.min()), "max": float(a.max())}
