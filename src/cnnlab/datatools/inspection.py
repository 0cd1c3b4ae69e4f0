"""`cnnlab data inspect`: counts, image sizes, colour modes, bit depths and value ranges (DICOM: modality and
window too), unusable files and a contact sheet per split.

Sizes and modes come from the same decode-once cache as training (thumbnails at 96 px, aspect kept), so
truncated or corrupt files are found here too, and a later look costs no decoding. An 8-bit image's bit depth is
its mode's; the files of more bits (16-bit, float, DICOM) have their stored values read once more each, for their
range (and DICOM's header).
"""

from __future__ import annotations

import os
import warnings
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from cnnlab.data.cache import ImageSet, load_images
from cnnlab.data.decode import DecodeSettings, bit_depth, needs_values, value_summary
from cnnlab.data.folders import SPLIT_ALIASES, Dataset, scan
from cnnlab.data.labels import protected_paths
from cnnlab.files import output_folder

THUMB = DecodeSettings(image_size=96, resize="pad", channels=3)


def _size_stats(sizes: list[tuple[int, int]]) -> dict:
    if not sizes:
        return {}
    w = np.array([s[0] for s in sizes])
    h = np.array([s[1] for s in sizes])
    common = Counter(f"{a}x{b}" for a, b in sizes).most_common(5)
    return {
        "width": {"min": int(w.min()), "median": float(np.median(w)), "max": int(w.max())},
        "height": {"min": int(h.min()), "median": float(np.median(h)), "max": int(h.max())},
        "distinct": len(set(sizes)),
        "most_common": [[s, n] for s, n in common],
        "aspect": {"min": float((w / h).min()), "max": float((w / h).max())},
    }


def _summary_or_none(path: Path) -> dict | None:
    try:
        return value_summary(path)
    except Exception:  # changed or removed since it was decoded: left out of the figures
        return None


def _value_stats(images: ImageSet) -> dict:
    """A split's bit depths (image count per depth), the range of the stored values of its images of more than 8
    bits (DICOM after the modality LUT; None when all are 8-bit), and its DICOM files' modalities and windows."""
    depths, modalities, windows, lows, highs = Counter(), Counter(), Counter(), [], []
    deep = [s.path for s, mode in zip(images.samples, images.modes, strict=True) if needs_values(mode)]
    depths.update(bit_depth(mode) for mode in images.modes if not needs_values(mode))
    with ThreadPoolExecutor(min(8, os.cpu_count() or 1)) as pool:
        for v in pool.map(_summary_or_none, deep):
            if v is None:
                continue
            depths[v["bits"]] += 1
            lows.append(v["min"])
            highs.append(v["max"])
            if "modality" in v:
                modalities[v["modality"]] += 1
                windows[v["window"]] += 1
    return {
        "bit_depths": dict(sorted(depths.items(), key=lambda kv: -kv[1])),
        "value_range": {"min": min(lows), "max": max(highs)} if lows else None,
        "modalities": dict(modalities.most_common()),
        "windows": dict(windows.most_common()),
    }


def inspect_dataset(root, out: Path | None = None, cache_dir=None, class_map=None, per_class: int = 8) -> dict:
    """Look at a data set before training: per split and class, the image count, sizes and colour modes, and the
    unusable files (with why). Decodes 96 px thumbnails through the decode cache; with `out`, writes a contact sheet
    per split (`per_class` images of each class). Returns the report as a JSON-ready dict."""
    ds = scan(root, class_map=class_map, warn=False)  # the report lists the skipped files itself
    for note in ds.notes:  # which folder was read, when `root` only wraps it
        warnings.warn(note, UserWarning, stacklevel=2)
    if out is not None:
        output_folder(out, protected_paths(ds), create=False)  # before the slow part: a bad --out fails at once
    report: dict = {"root": str(ds.root), "classes": ds.classes, "notes": ds.notes, "splits": {}}
    if ds.source:  # a label file: classes and splits as it gives them
        report["labels"] = str(ds.source)
    sheets = {}
    for split, samples in ds.splits.items():
        images, bad, _ = load_images(samples, ds.root, THUMB, cache_dir)
        skipped = [
            {"path": p, "reason": why}
            for p, why in ds.skipped
            if (ds.source or Path(p).is_relative_to(ds.root)) and _split_of(ds, Path(p)) == split
        ]
        skipped += [{"path": p, "reason": why} for p, why in bad]
        classes = {}
        labels = images.labels.numpy()
        for c, name in enumerate(ds.classes):
            sel = np.nonzero(labels == c)[0]
            sizes = [images.sizes[i] for i in sel]
            classes[name] = {
                "count": int(len(sel)),
                "sizes": _size_stats(sizes),
                "modes": dict(Counter(images.modes[i] for i in sel)),
            }
        report["splits"][split] = {
            "count": len(images),
            "classes": classes,
            "sizes": _size_stats(images.sizes),
            "modes": dict(Counter(images.modes)),
            **_value_stats(images),
            "skipped": skipped,
        }
        sheets[split] = {
            name: [images.images[i].permute(1, 2, 0).numpy() for i in np.nonzero(labels == c)[0][:per_class]]
            for c, name in enumerate(ds.classes)
        }
    if out is not None:
        from cnnlab.reporting.figures import contact_sheet

        out = output_folder(out, protected_paths(ds))
        for split, rows in sheets.items():
            contact_sheet(rows, out / f"samples_{split}.png", title=f"{Path(root).name}: {split}")
        report["contact_sheets"] = [str(out / f"samples_{s}.png") for s in sheets]
    return report


def _split_of(ds: Dataset, path: Path) -> str | None:
    if ds.source:  # a label file's row says
        return ds.skipped_splits.get(str(path))
    for split, folder in ds.folders.items():  # the split folders may lie below the root (`archive/inner/train`)
        if path.is_relative_to(folder):
            return split
    first = path.relative_to(ds.root).parts[0].lower()
    return SPLIT_ALIASES.get(first, "train" if len(ds.splits) == 1 else None)


def format_report(r: dict) -> str:
    """`inspect_dataset`'s report as the text `cnnlab data inspect` prints."""
    lines = [f"dataset {r['root']}  ({len(r['classes'])} classes)"]
    if r.get("labels"):
        lines[0] += f", labels and splits from {r['labels']}"
    for split, s in r["splits"].items():
        sz = s["sizes"]
        lines.append(f"\n[{split}] {s['count']} images, modes {s['modes']}")
        if sz:
            lines.append(
                f"  sizes: {sz['distinct']} distinct; width {sz['width']['min']}-{sz['width']['max']} "
                f"(median {sz['width']['median']:g}), height {sz['height']['min']}-{sz['height']['max']} "
                f"(median {sz['height']['median']:g}); most common "
                + ", ".join(f"{a} ({n})" for a, n in sz["most_common"][:3])
            )
        lines += _value_lines(s)
        width = max(len(c) for c in s["classes"])
        for name, c in s["classes"].items():
            common = c["sizes"].get("most_common", [["-", 0]])[0]
            lines.append(f"  {name:<{width}}  {c['count']:6d}   most common size {common[0]} ({common[1]})")
        if s["skipped"]:
            lines.append(
                f"  skipped {len(s['skipped'])}: " + "; ".join(f"{k['path']} ({k['reason']})" for k in s["skipped"][:3])
            )
    if r.get("contact_sheets"):
        lines.append("\ncontact sheets: " + ", ".join(r["contact_sheets"]))
    return "\n".join(lines)


def _value_lines(s: dict) -> list[str]:
    """A split's bit depths, value range and DICOM modalities and windows, as `format_report` prints them."""
    lines = []
    if s.get("bit_depths"):
        bits = ", ".join(f"{b} ({n})" for b, n in s["bit_depths"].items())
        vr = s.get("value_range")
        which = " (of the images over 8 bits)" if "8" in s["bit_depths"] else ""
        values = f"; values {vr['min']:g} to {vr['max']:g}{which}" if vr else ""
        lines.append(f"  bit depth {bits}{values}")
    if s.get("modalities"):
        lines.append(
            "  DICOM modality "
            + ", ".join(f"{m} ({n})" for m, n in s["modalities"].items())
            + "; window "
            + ", ".join(f"{w} ({n})" for w, n in s["windows"].items())
        )
    return lines
