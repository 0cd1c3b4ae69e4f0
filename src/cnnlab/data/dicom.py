"""DICOM files as images, read with pydicom (imported on first use: `pip install 'cnnlab[dicom]'`). No torch here.

A DICOM file is a `.dcm` or `.dicom` file, or one of any other extension (or none) that is no Pillow image and has
the DICOM preamble (`has_dicom_preamble`: bytes 128..132 are b"DICM"). `read_dicom` makes one single-frame image
8-bit: the modality LUT (rescale slope and intercept: CT in Hounsfield units), then a window (`data.window`, else
the file's own VOI LUT or first window, else the image's own min..max), MONOCHROME1 inverted so that bright means
dense; colour (RGB, YBR as RGB, palette) is 8 bits a channel and never windowed. `dicom_tags` and `patient_id`
read the header alone; `dicom_values` is what `cnnlab data inspect` reports. `to_uint8` is the linear map of a
value window to 0..255 that 16-bit and float images share (data/decode.py).
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from cnnlab.errors import UserError

DICOM_EXTENSIONS = frozenset({".dcm", ".dicom"})
PREAMBLE = 128  # bytes before the b"DICM" prefix of a DICOM file
PIXEL_KEYWORDS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")


class BadDicom(Exception):
    """A DICOM file cnnlab cannot use (multi-frame, no pixel data, damaged); the message is the reason."""


def has_dicom_preamble(path) -> bool:
    """Whether bytes 128..132 of the file are b"DICM", the DICOM file format's prefix (False when unreadable)."""
    try:
        with open(path, "rb") as f:
            f.seek(PREAMBLE)
            return f.read(4) == b"DICM"
    except OSError:
        return False


def is_dicom(path, image_exts) -> bool:
    """A `.dcm`/`.dicom` file, or one whose extension is not in `image_exts` (Pillow's) that has the DICOM preamble:
    an ordinary .png or .jpg costs no open()."""
    suffix = Path(path).suffix.lower()
    return suffix in DICOM_EXTENSIONS or (suffix not in image_exts and has_dicom_preamble(path))


def to_uint8(a: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """Values `lo`..`hi` linearly to 0..255, those outside clipped, rounded; an empty range (lo >= hi) is black."""
    if not hi > lo:
        return np.zeros(np.shape(a), np.uint8)
    x = (np.asarray(a, np.float64) - lo) * (255.0 / (hi - lo))
    return np.clip(x, 0, 255).round().astype(np.uint8)


def _pydicom():
    try:
        import pydicom
    except ImportError:
        raise UserError("reading DICOM needs pydicom: pip install 'cnnlab[dicom]'") from None
    try:
        import pydicom.pixels  # noqa: F401  (pydicom 3)
    except ImportError:
        raise UserError(
            f"reading DICOM needs pydicom 3 or newer (found {pydicom.__version__}): pip install -U 'cnnlab[dicom]'"
        ) from None
    return pydicom


def _one_line(e: BaseException) -> str:
    return " ".join(f"{type(e).__name__}: {e}".split())


def _read(path, stop_before_pixels: bool = False):
    """The dataset of a DICOM file (pixel data deferred: read when used). Raises BadDicom."""
    pydicom = _pydicom()
    try:
        return pydicom.dcmread(path, stop_before_pixels=stop_before_pixels, defer_size="64 KB")
    except Exception as e:  # only pydicom runs here: any failure is a file it cannot read
        raise BadDicom(f"not a readable DICOM file: {_one_line(e)}") from None


def _first(ds, keyword: str) -> float | None:
    """The first value of a numeric (possibly multi-valued) element, or None when absent, empty or not a number."""
    v = ds.get(keyword)
    if v is not None and not isinstance(v, (str, bytes)) and hasattr(v, "__len__"):
        v = v[0] if len(v) else None
    try:
        return None if v is None or v == "" else float(v)
    except (TypeError, ValueError):
        return None


def _frames(ds) -> int:
    try:
        return int(ds.get("NumberOfFrames") or 1)
    except (TypeError, ValueError):
        return 1


def _tags(ds) -> dict:
    def text(keyword):
        v = ds.get(keyword)
        return None if v is None or str(v).strip() == "" else str(v).strip()

    def integer(keyword):
        v = _first(ds, keyword)
        return None if v is None else int(v)

    return {
        "PatientID": text("PatientID"),
        "Modality": text("Modality"),
        "WindowCenter": _first(ds, "WindowCenter"),
        "WindowWidth": _first(ds, "WindowWidth"),
        "BitsStored": integer("BitsStored"),
        "PhotometricInterpretation": text("PhotometricInterpretation"),
        "Rows": integer("Rows"),
        "Columns": integer("Columns"),
        "NumberOfFrames": _frames(ds),
    }


def dicom_tags(path) -> dict:
    """A DICOM file's header, read without its pixel data: PatientID, Modality, WindowCenter and WindowWidth (the
    first window; None when absent), BitsStored, PhotometricInterpretation, Rows, Columns, NumberOfFrames (1 when
    absent). Raises BadDicom for a file pydicom cannot read, UserError without pydicom."""
    return _tags(_read(path, stop_before_pixels=True))


def patient_id(path) -> str | None:
    """A DICOM file's PatientID, or None when it has none or is no readable DICOM file (the group of a patient-wise
    split)."""
    try:
        return dicom_tags(path)["PatientID"]
    except BadDicom:
        return None


def _missing_plugin(ds, path, text: str) -> str | None:
    """pydicom's "Unable to decompress ... missing dependencies" error as one line naming the transfer syntax and
    what to install; None for any other error."""
    m = re.search(r"Unable to decompress '(.+?)' pixel data because.*?missing dependencies:(.*)", text, re.S)
    if not m:
        return None
    name, body = m.groups()
    uid = str(getattr(ds, "file_meta", {}).get("TransferSyntaxUID", "")) or "unknown UID"
    options = []
    for line in body.strip().splitlines():
        plugin, _, needs = line.strip().partition(" - requires ")
        packages = [p for p in re.split(r", | and ", needs) if p and p != "numpy"]
        if packages:
            options.append((plugin != "pylibjpeg", " ".join(f"'{p}'" for p in packages)))
    head = f"cannot decode DICOM {path}: its transfer syntax '{name}' ({uid}) needs a decoder plugin pydicom lacks"
    if not options:
        return f"{head}; none of pydicom's plugins for it is usable here"
    options.sort()
    others = "; or ".join(p for _, p in options[1:])
    return f"{head}: pip install {options[0][1]}" + (f" (or {others})" if others else "")


def _pixels(ds, path) -> np.ndarray:
    """The stored pixel values of a single-frame image (colour as RGB). Raises BadDicom, or UserError when no
    installed plugin decodes its transfer syntax."""
    frames = _frames(ds)
    if frames > 1:
        raise BadDicom(
            f"multi-frame DICOM with {frames} frames: cnnlab reads single-frame images (split the series into "
            "one file per frame)"
        )
    if not any(k in ds for k in PIXEL_KEYWORDS):
        raise BadDicom("DICOM file without pixel data (not an image)")
    try:
        return ds.pixel_array
    except Exception as e:  # pydicom's decoders: a missing plugin is the user's to fix, anything else the file's
        missing = _missing_plugin(ds, path, str(e))
        if missing:
            raise UserError(missing) from None
        raise BadDicom(f"cannot decode its pixel data: {_one_line(e)}") from None


def _own_window(values: np.ndarray, ds) -> np.ndarray | None:
    """The file's own VOI LUT, else its first window (WindowCenter/WindowWidth, its VOILUTFunction), through
    pydicom's apply_voi_lut, as 0..255; None when it has neither."""
    from pydicom.pixels import apply_voi_lut

    voi = ds.get("VOILUTSequence")
    if voi and voi[0].get("LUTDescriptor") is not None and voi[0].get("LUTData") is not None:
        top = 2 ** int(voi[0].LUTDescriptor[2]) - 1  # a LUT's output: 0 .. 2^bits - 1
        return to_uint8(apply_voi_lut(np.rint(values).astype(np.int64), ds), 0, top)
    if _first(ds, "WindowCenter") is None or _first(ds, "WindowWidth") is None:
        return None
    try:
        with np.errstate(over="ignore"):  # the probe's extremes overflow a SIGMOID's exp, to its limits
            y0, y1 = apply_voi_lut(np.array([-1e30, 1e30]), ds)  # the window's output range
        return to_uint8(apply_voi_lut(values, ds), y0, y1)
    except ValueError as e:  # a width below 1, an unknown VOILUTFunction
        raise BadDicom(f"its window (WindowCenter/WindowWidth) is unusable: {_one_line(e)}") from None


def _colour(arr: np.ndarray) -> np.ndarray:
    if arr.dtype == np.uint8:
        return arr
    if np.issubdtype(arr.dtype, np.integer):
        return to_uint8(arr, 0, np.iinfo(arr.dtype).max)
    return to_uint8(arr, float(arr.min()), float(arr.max()))


def _gray(arr: np.ndarray, ds, window: tuple[float, float] | None) -> np.ndarray:
    from pydicom.pixels import apply_modality_lut

    values = np.asarray(apply_modality_lut(arr, ds), np.float64)  # modality units (CT: Hounsfield)
    out = to_uint8(values, *window) if window is not None else _own_window(values, ds)
    if out is None:  # no window anywhere: the image's own range, as 16-bit images
        out = to_uint8(values, float(values.min()), float(values.max()))
    return out


def read_dicom(path, window: tuple[float, float] | None = None) -> tuple[np.ndarray, tuple[int, int], str]:
    """One single-frame DICOM file -> (H x W gray or H x W x 3 RGB uint8, original (w, h), "DICOM <photometric>").

    Gray: the modality LUT, then `window` (LOW, HIGH: those values to 0..255, outside clipped) if given, else the
    file's own VOI LUT or first window, else the image's min..max; MONOCHROME1 inverted (bright = dense, as in
    MONOCHROME2). Colour: RGB (pydicom turns YBR into RGB; a palette is applied), never windowed. Raises BadDicom
    (multi-frame, no pixel data, unreadable) or UserError (no pydicom; no plugin for its transfer syntax)."""
    ds = _read(path)
    photometric = str(ds.get("PhotometricInterpretation", "") or "MONOCHROME2").strip().upper()
    arr = _pixels(ds, path)
    size = (int(arr.shape[1]), int(arr.shape[0]))
    if photometric == "PALETTE COLOR":
        from pydicom.pixels import apply_color_lut

        arr = apply_color_lut(arr, ds)
    if arr.ndim == 3:
        return _colour(arr), size, f"DICOM {photometric}"
    out = _gray(arr, ds, window)
    return (255 - out if photometric == "MONOCHROME1" else out), size, f"DICOM {photometric}"


def dicom_values(path) -> dict:
    """What `cnnlab data inspect` reports of a DICOM file: bits (its BitsStored), min and max of its stored values
    after the modality LUT, modality, and its own window ("CENTER/WIDTH", "VOI LUT", or "none")."""
    from pydicom.pixels import apply_modality_lut

    ds = _read(path)
    arr = _pixels(ds, path)
    tags = _tags(ds)
    if arr.ndim == 2:
        arr = apply_modality_lut(arr, ds)
    centre, width = tags["WindowCenter"], tags["WindowWidth"]
    window = f"{centre:g}/{width:g}" if centre is not None and width is not None else "none"
    if ds.get("VOILUTSequence"):
        window = "VOI LUT"
    return {
        "bits": str(tags["BitsStored"] or arr.dtype.itemsize * 8),
        "min": float(np.min(arr)),
        "max": float(np.max(arr)),
        "modality": tags["Modality"] or "unknown",
        "window": window,
    }
