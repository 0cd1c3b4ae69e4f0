"""Medical formats: 16-bit PNGs and DICOM files (modality LUT, windows, MONOCHROME1, colour, compression, multi-frame,
files found by their preamble), `data.window`, and what `cnnlab data inspect` says of them. All data generated here."""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

import numpy as np
import pydicom
import pytest
from conftest import one_line_error, run_cli, tree_hash
from PIL import Image
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.pixels import convert_color_space, get_decoder
from pydicom.uid import ExplicitVRLittleEndian, RLELossless, SecondaryCaptureImageStorage, generate_uid

from cnnlab.config import Config
from cnnlab.data.decode import BadImage, DecodeSettings, decode
from cnnlab.data.dicom import dicom_tags, patient_id, read_dicom
from cnnlab.data.folders import scan
from cnnlab.data.image_files import expand_paths
from cnnlab.errors import UserError
from cnnlab.training.run_folder import read_history

GRAY = DecodeSettings(image_size=32, channels=1)
SIDE = 32

# ------------------------------------------------------------------------------------------ writing the data


def write_dicom(path: Path, arr: np.ndarray, photometric: str = "MONOCHROME2", bits: int = 12, **tags) -> Path:
    """One DICOM file (Explicit VR Little Endian, a proper file meta header) of `arr`'s stored values."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Modality, ds.PatientID = "MR", "P-" + Path(path).stem
    colour = photometric not in ("MONOCHROME1", "MONOCHROME2")  # then arr is H x W x 3, else [frames x] H x W
    ds.Rows, ds.Columns = arr.shape[:2] if colour else arr.shape[-2:]
    ds.SamplesPerPixel = 3 if colour else 1
    if colour:
        ds.PlanarConfiguration = 0
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated, ds.BitsStored = arr.dtype.itemsize * 8, bits
    ds.HighBit, ds.PixelRepresentation = bits - 1, 0
    for keyword, value in tags.items():
        setattr(ds, keyword, value)
    ds.PixelData = arr.tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


def region(kind: str, rng) -> np.ndarray:
    """A bright shape's mask at a random place: a horizontal or a vertical bar, or a square (same area)."""
    m = np.zeros((SIDE, SIDE), bool)
    y, x = (int(v) for v in rng.integers(8, SIDE - 8, 2))
    if kind == "bar-h":
        m[y - 2 : y + 2, x - 8 : x + 8] = True
    elif kind == "bar-v":
        m[y - 8 : y + 8, x - 2 : x + 2] = True
    else:
        m[y - 4 : y + 4, x - 4 : x + 4] = True
    return m


def values(kind: str, level: float, rng, background: float = 1000.0) -> np.ndarray:
    """Background ~1000, the region ~`level`, noise of a few units: far above 255, as scanners store them."""
    return np.where(region(kind, rng), level, background) + rng.normal(0, 8, (SIDE, SIDE))


def write_png16(path: Path, v: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    im = Image.fromarray(np.clip(v, 0, 65535).round().astype(np.uint16))
    assert im.mode == "I;16"
    im.save(path)
    return path


def write_mr(path: Path, v: np.ndarray, monochrome1: bool, **tags) -> Path:
    """`v` (modality values) stored through RescaleSlope 2 / RescaleIntercept -1000; MONOCHROME1 stores them so that
    the image shown (bright = dense) is the same."""
    stored = (np.clip(v, 0, 4095) + 1000) / 2  # value = 2 * stored - 1000
    if monochrome1:
        v = 4095 - v  # shown inverted: the same picture as MONOCHROME2 would show of v
        stored = (np.clip(v, 0, 4095) + 1000) / 2
    arr = stored.round().astype(np.uint16)
    photometric = "MONOCHROME1" if monochrome1 else "MONOCHROME2"
    return write_dicom(path, arr, photometric, RescaleSlope=2, RescaleIntercept=-1000, **tags)


def make_set(root: Path, classes: dict[str, tuple[str, float]], n: int, fmt: str, seed: int = 0) -> Path:
    """A class tree: per class `n` images of its (shape, level); fmt png16 | dicom (MONOCHROME1 every other file)."""
    rng = np.random.default_rng(seed)
    for name, (kind, level) in classes.items():
        for i in range(n):
            v = values(kind, level, rng)
            if fmt == "png16":
                write_png16(root / name / f"{i:03d}.png", v)
            else:
                write_mr(root / name / f"{i:03d}.dcm", v, monochrome1=i % 2 == 1)
    return root


def train_acc(data: Path, out: Path, epochs: int, *sets: str) -> float:
    args = ["train", "--data", data, "--model", "simple-bn", "--image-size", 32, "--epochs", epochs]
    args += ["--batch-size", 8, "--out", out, "-q", "--set", "channels=1", "--set", "seed=1"]
    for s in sets:
        args += ["--set", s]
    run_cli(*args)
    return read_history(out / "history.csv")[-1]["val_acc"]  # the last epoch's


# ------------------------------------------------------------------------------------------ training


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["png16", "dicom"])
def test_shapes_of_16_bit_images_train(tmp_path, fmt):
    data = make_set(tmp_path / "d", {"horizontal": ("bar-h", 3000), "vertical": ("bar-v", 3000)}, 20, fmt)
    before = tree_hash(data)
    assert train_acc(data, tmp_path / "run", 6) >= 0.9
    assert tree_hash(data) == before  # never written into


def test_own_range_erases_an_intensity_difference_a_window_keeps(tmp_path):
    rng = np.random.default_rng(3)
    for fmt in ("png16", "dicom"):
        dim, bright = [], []
        for level, into in ((2000, dim), (3000, bright)):
            shape = np.random.default_rng(7)  # the same shapes in both classes
            for i in range(3):
                v = np.where(region("square", shape), level, 1000) + rng.normal(0, 3, (SIDE, SIDE))
                p = tmp_path / fmt / f"{level}-{i}"
                p = write_png16(p.with_suffix(".png"), v) if fmt == "png16" else write_mr(p, v, monochrome1=i == 1)
                into.append(p)
        own = [np.stack([decode(p, GRAY)[0][0].astype(float) for p in ps]) for ps in (dim, bright)]
        mask = own[1] > 128  # the region (the same in both classes)
        assert np.abs(own[0] - own[1]).mean() < 2 and np.abs(own[0][mask].mean() - own[1][mask].mean()) < 3
        win = DecodeSettings(32, channels=1, window="0:4095")
        kept = [np.stack([decode(p, win)[0][0].astype(float) for p in ps])[mask].mean() for ps in (dim, bright)]
        assert kept == pytest.approx([2000 * 255 / 4095, 3000 * 255 / 4095], abs=1)


@pytest.mark.slow
def test_intensity_alone_trains_with_a_window(tmp_path):
    data = make_set(tmp_path / "d", {"dim": ("square", 2000), "bright": ("square", 3000)}, 20, "dicom")
    assert train_acc(data, tmp_path / "run", 8, "window=0:4095") >= 0.9


# ------------------------------------------------------------------------------------------ DICOM decoding


def test_monochrome1_is_inverted_and_rescale_applied(tmp_path):
    stored = np.tile(np.arange(0, 4096, 128, dtype=np.uint16), (4, 1))  # 4 x 32
    m2 = write_dicom(tmp_path / "m2.dcm", stored)
    m1 = write_dicom(tmp_path / "m1.dcm", stored, "MONOCHROME1")
    a2, size, mode = read_dicom(m2)
    a1 = read_dicom(m1)[0]
    assert (size, mode) == ((32, 4), "DICOM MONOCHROME2")
    assert a2[0, 0] == 0 and a2[0, -1] == 255 and np.array_equal(a1, 255 - a2)
    # value = 0.5 * stored - 1024: stored 2048 is 0, stored 4096 would be 1024
    r = write_dicom(tmp_path / "r.dcm", stored, RescaleSlope=0.5, RescaleIntercept=-1024)
    out = read_dicom(r, window=(0, 1024))[0]
    assert out[0, 15] == 0 and out[0, 16] == 0 and out[0, 24] == round((0.5 * 3072 - 1024) * 255 / 1024)
    assert read_dicom(write_dicom(tmp_path / "n.dcm", stored), window=(0, 1024))[0][0, 8] == 255  # no rescale


def test_own_window_is_used_unless_one_is_set(tmp_path):
    stored = np.tile(np.arange(0, 4096, 128, dtype=np.uint16), (4, 1))
    p = write_dicom(tmp_path / "w.dcm", stored, WindowCenter=[1024, 3000], WindowWidth=[1025, 500])
    own = decode(p, DecodeSettings(32, channels=1))[0][0]
    assert own[0, 0] == 0 and own[0, 4] == 0 and own[0, 8] == 128 and own[0, 12] == 255  # 512..1536 to 0..255
    windowed = decode(p, DecodeSettings(32, channels=1, window="0:4095"))[0][0]
    assert windowed[0, 8] == round(1024 * 255 / 4095) and windowed[0, -1] == round(3968 * 255 / 4095)
    cfg = Config().update({"window": "0:4095", "image_size": 32, "channels": 1})
    assert np.array_equal(decode(p, DecodeSettings.of(cfg.data))[0][0], windowed)  # what `--set window=` gives
    plain = decode(write_dicom(tmp_path / "p.dcm", stored), DecodeSettings(32, channels=1))[0][0]
    assert plain[0, 0] == 0 and plain[0, -1] == 255  # no window anywhere: its own min..max


def test_colour_dicom_is_rgb(tmp_path):
    rgb = np.zeros((8, 8, 3), np.uint8)
    rgb[..., 0], rgb[:4, :, 2] = 200, 90
    for photometric, arr in (("RGB", rgb), ("YBR_FULL", convert_color_space(rgb, "RGB", "YBR_FULL"))):
        out, _, mode = read_dicom(write_dicom(tmp_path / f"{photometric}.dcm", arr, photometric, bits=8))
        assert mode == f"DICOM {photometric}" and np.abs(out.astype(int) - rgb).max() <= 2
    assert decode(tmp_path / "RGB.dcm", DecodeSettings(8))[0].shape == (3, 8, 8)


def test_rle_compressed_decodes_like_uncompressed(tmp_path):
    v = values("square", 3000, np.random.default_rng(0))
    plain = write_mr(tmp_path / "plain.dcm", v, monochrome1=False)
    ds = pydicom.dcmread(plain)
    ds.compress(RLELossless)
    ds.save_as(tmp_path / "rle.dcm", enforce_file_format=True)
    assert pydicom.dcmread(tmp_path / "rle.dcm").file_meta.TransferSyntaxUID == RLELossless
    assert np.array_equal(decode(tmp_path / "rle.dcm", GRAY)[0], decode(plain, GRAY)[0])


def test_a_missing_plugin_is_one_line_naming_syntax_and_package(tmp_path, monkeypatch):
    """pydicom's own error, through its real path: the RLE decoder's plugins made unavailable."""
    data = tmp_path / "d"
    for name in ("a", "b"):
        ds = pydicom.dcmread(write_mr(data / name / "x.dcm", values("square", 3000, np.random.default_rng(0)), False))
        ds.compress(RLELossless)
        ds.save_as(data / name / "x.dcm", enforce_file_format=True)
    decoder = get_decoder(RLELossless)
    monkeypatch.setattr(decoder, "_available", {})
    monkeypatch.setattr(decoder, "_unavailable", {"pylibjpeg": ("pylibjpeg>=2.0", "pylibjpeg-rle>=2.0")})
    with pytest.raises(UserError) as e:
        decode(data / "a" / "x.dcm", GRAY)
    msg = str(e.value)
    assert "\n" not in msg and "'RLE Lossless' (1.2.840.10008.1.2.5)" in msg
    assert "pip install 'pylibjpeg>=2.0' 'pylibjpeg-rle>=2.0'" in msg
    assert "pylibjpeg-rle" in one_line_error("data", "inspect", data)


def test_without_pydicom_dicom_is_one_line(tmp_path, monkeypatch):
    p = write_dicom(tmp_path / "x.dcm", np.zeros((4, 4), np.uint16))
    monkeypatch.setitem(sys.modules, "pydicom", None)  # `import pydicom` raises ImportError
    with pytest.raises(UserError, match=r"reading DICOM needs pydicom: pip install 'cnnlab\[dicom\]'"):
        decode(p, GRAY)


def test_multi_frame_is_skipped_with_its_reason(tmp_path):
    data = make_set(tmp_path / "d", {"a": ("square", 3000), "b": ("bar-h", 3000)}, 2, "dicom")
    write_dicom(data / "a" / "series.dcm", np.zeros((3, 8, 8), np.uint16), NumberOfFrames=3)
    with pytest.raises(BadImage, match=r"multi-frame DICOM with 3 frames: cnnlab reads single-frame images"):
        decode(data / "a" / "series.dcm", GRAY)
    report = json.loads(run_cli("data", "inspect", data, "--json").output)
    [skipped] = report["splits"]["train"]["skipped"]
    assert skipped["path"].endswith("series.dcm") and "split the series into one file per frame" in skipped["reason"]


def test_a_preamble_file_without_extension_is_found(tmp_path):
    data = make_set(tmp_path / "d", {"a": ("square", 3000), "b": ("bar-h", 3000)}, 2, "dicom")
    (data / "a" / "000.dcm").rename(data / "a" / "IM0001")
    (data / "a" / "notes").write_text("not an image, no extension\n" * 20)
    (data / "b" / "001.dcm").rename(data / "b" / "IM0002.1")
    ds = scan(data, warn=False)
    assert {s.path.name for s in ds.splits["train"]} == {"001.dcm", "000.dcm", "IM0001", "IM0002.1"}
    assert [(Path(p).name, why) for p, why in ds.skipped] == [("notes", "not an image file")]
    assert {p.name for p in expand_paths([data])} == {"001.dcm", "000.dcm", "IM0001", "IM0002.1"}
    assert decode(data / "a" / "IM0001", GRAY)[2] == "DICOM MONOCHROME2"


def test_dicom_tags_and_patient_id(tmp_path):
    p = write_dicom(tmp_path / "t.dcm", np.zeros((4, 6), np.uint16), WindowCenter=[40, 80], WindowWidth=[400, 200])
    tags = dicom_tags(p)
    assert tags == {
        "PatientID": "P-t",
        "Modality": "MR",
        "WindowCenter": 40.0,
        "WindowWidth": 400.0,
        "BitsStored": 12,
        "PhotometricInterpretation": "MONOCHROME2",
        "Rows": 4,
        "Columns": 6,
        "NumberOfFrames": 1,
    }
    assert patient_id(p) == "P-t" and patient_id(write_png16(tmp_path / "x.png", np.zeros((4, 4)))) is None


# ------------------------------------------------------------------------------------------ window, cache, inspect


def test_window_is_in_the_cache_key_and_no_window_keeps_the_old_key():
    assert DecodeSettings(128, "squash", 3, "none").key() == "v1-128-squash-c3-none"
    assert DecodeSettings.of(Config().data).key() == "v1-128-squash-c3-none"
    a, b = DecodeSettings(window="0:4095"), DecodeSettings(window="-1000:400")
    assert a.key() == "v1-128-squash-c3-none-w0_4095" and b.key() == "v1-128-squash-c3-none-w-1000_400"


def test_8_bit_images_are_never_windowed(shapes):
    p = next((shapes / "train" / "circle").iterdir())
    assert np.array_equal(decode(p, DecodeSettings(32, window="0:4095"))[0], decode(p, DecodeSettings(32))[0])


@pytest.mark.parametrize("window", ["4095:0", "abc", "0:0", "1:2:3", "nan:4"])
def test_a_bad_window_is_one_line(tmp_path, window):
    line = one_line_error("train", "--data", tmp_path, "--set", f"window={window}", "--out", tmp_path / "r")
    assert "window" in line and window in line


def test_inspect_reports_bit_depth_range_modality_and_window(tmp_path, shapes):
    data = tmp_path / "d"
    rng = np.random.default_rng(0)
    for i in range(2):
        write_png16(data / "png" / f"{i}.png", values("square", 3000, rng))
        write_mr(
            data / "mr" / f"{i}.dcm",
            values("square", 3000, rng),
            monochrome1=False,
            WindowCenter=1500,
            WindowWidth=3000,
        )
    write_mr(data / "mr" / "nowin.dcm", values("square", 3000, rng), monochrome1=True)
    Image.open(next((shapes / "train" / "circle").iterdir())).save(data / "png" / "eight.png")
    out = run_cli("data", "inspect", data, "--json").output
    s = json.loads(out)["splits"]["train"]
    assert s["bit_depths"] == {"12": 3, "16": 2, "8": 1}
    assert 900 < s["value_range"]["min"] < 1000 < 3000 < s["value_range"]["max"] < 3200
    assert s["modalities"] == {"MR": 3} and s["windows"] == {"1500/3000": 2, "none": 1}
    assert s["modes"] == {"I;16": 2, "DICOM MONOCHROME2": 2, "DICOM MONOCHROME1": 1, "RGB": 1}
    text = run_cli("data", "inspect", data).output
    assert (
        "bit depth 12 (3), 16 (2), 8 (1); values" in text
        and "DICOM modality MR (3); window 1500/3000 (2), none (1)" in text
    )


def test_dicom_patient_id_is_the_group_of_a_patient_wise_split(tmp_path):
    # No group file and no label file: split = groups reads each DICOM file's PatientID (3 slices a patient).
    rng = np.random.default_rng(0)
    data = tmp_path / "mr"
    for name, kind in (("h", "bar-h"), ("v", "bar-v")):
        for i in range(12):
            write_mr(data / name / f"{i:03d}.dcm", values(kind, 3000, rng), False, PatientID=f"{name}-{i // 3}")
    out = tmp_path / "r"
    run_cli("train", "--data", data, "--image-size", 32, "--epochs", 1, "--out", out, "-q", "--set", "channels=1",
            "--set", "split=groups", "--set", "val_fraction=0.5")  # fmt: skip
    with open(out / "split.csv", newline="") as f:
        side = {row["path"]: row["split"] for row in csv.DictReader(f)}
    patients: dict[str, set] = {}
    for rel, split in side.items():
        patients.setdefault(f"{Path(rel).parent.name}-{int(Path(rel).stem) // 3}", set()).add(split)
    assert len(patients) == 8 and all(len(s) == 1 for s in patients.values())
    assert {"train", "val"} <= set(side.values())


def test_a_split_folder_of_extensionless_dicom_files_is_no_class_tree(tmp_path):
    # Scanners often write DICOM files without an extension: a split folder holding them directly is read as what
    # it is (images without class folders), as a folder of .png files would be, not as an empty layout.
    rng = np.random.default_rng(0)
    for i in range(2):
        write_mr(tmp_path / "d" / "train" / f"IM{i:04d}", values("square", 3000, rng), False)
    (tmp_path / "d" / "test" / "a").mkdir(parents=True)
    with pytest.raises(UserError, match="holds images but no class folders"):
        scan(tmp_path / "d", warn=False)
