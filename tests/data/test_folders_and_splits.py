"""The data layer: layouts, bad input, image modes, the split, the decode cache, a read-only dataset."""

from __future__ import annotations

import csv
import json
import os
import re
import shutil
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from conftest import make_shapes, one_line_error, run_cli, tree_hash
from PIL import Image

from cnnlab.data.cache import ImageCache, load_images
from cnnlab.data.decode import BadImage, DecodeSettings, decode
from cnnlab.data.folders import SPLIT_ALIASES, scan, scored_split
from cnnlab.data.manifest import read_manifest, write_manifest
from cnnlab.data.splits import block_groups, block_split_groups, merge_groups, split_by_manifest, split_train_val
from cnnlab.errors import UserError

# ------------------------------------------------------------------------------------------ layouts


@pytest.mark.parametrize(
    "names", [("Training", "Testing"), ("train", "test"), ("TRAIN", "Test"), ("training", "validation")]
)
def test_split_folder_names_any_case(tmp_path, names):
    make_shapes(tmp_path, splits=((names[0], 5), (names[1], 2)))
    ds = scan(tmp_path)
    other = SPLIT_ALIASES[names[1].lower()]
    assert list(ds.splits) == ["train", other]
    assert ds.classes == ["circle", "square", "triangle"]
    assert ds.counts("train") == {"circle": 5, "square": 5, "triangle": 5}
    assert ds.counts(other) == {"circle": 2, "square": 2, "triangle": 2}


def test_plain_class_tree_is_train_only(tmp_path):
    make_shapes(tmp_path, splits=(("", 4),))
    ds = scan(tmp_path)
    assert list(ds.splits) == ["train"] and len(ds.splits["train"]) == 12


def test_class_tree_one_folder_down_is_train(tmp_path):
    """figshare's layout: `images/<class>/...` with index files beside `images`, no split folder."""
    make_shapes(tmp_path / "images", splits=(("", 3),))
    (tmp_path / "folds.csv").write_text("path,class,fold\n")
    (tmp_path / ".git").mkdir()  # hidden folders do not count
    ds = scan(tmp_path)
    assert ds.root == tmp_path.resolve() and list(ds.splits) == ["train"]
    assert ds.classes == ["circle", "square", "triangle"] and len(ds.splits["train"]) == 9
    assert ds.rel(ds.splits["train"][0].path) == "images/circle/img 000.png"
    # An image file right in `images` makes it a class folder (of a one-class tree), as before.
    shutil.copy(tmp_path / "images/circle/img 000.png", tmp_path / "images/loose.png")
    with pytest.raises(UserError, match="only one class"):
        scan(tmp_path)


# Archives unzipped one or two folders deep, any split folder names: the split folders are found, and said.
@pytest.mark.parametrize(
    "wrap, names",
    [
        ("archive/inner", ("train", "test")),
        ("archive/inner", ("Training", "Testing")),
        ("archive/a/b", ("train", "valid", "test")),
        ("archive/x/y/z", ("TRAIN", "val")),
    ],
)
def test_split_folders_a_few_folders_down_are_used_and_said(tmp_path, wrap, names):
    make_shapes(tmp_path / wrap, splits=tuple((n, 2) for n in names), classes=("cat", "dog"))
    (tmp_path / "archive" / "readme.txt").write_text("unzipped")  # files beside the wrapper do not count
    with pytest.warns(UserWarning) as seen:
        ds = scan(tmp_path / "archive")
    assert ds.classes == ["cat", "dog"] and list(ds.splits) == sorted(
        {SPLIT_ALIASES[n.lower()] for n in names}, key=["train", "val", "test"].index
    )
    assert ds.root == (tmp_path / "archive").resolve()
    assert ds.rel(ds.splits["train"][0].path) == f"{wrap[len('archive/') :]}/{names[0]}/cat/img 000.png"
    shown = " and ".join(f"{n}/" for n in names) if len(names) == 2 else "train/, valid/ and test/"
    assert [str(w.message) for w in seen] == [f"using {tmp_path / wrap} (its {shown} split folders)"]


def test_class_tree_read_through_a_wrapper_is_said(tmp_path):
    make_shapes(tmp_path / "images", splits=(("", 2),))
    with pytest.warns(UserWarning, match=r"using .*/images \(its 3 class folders\)"):
        assert scan(tmp_path).classes == ["circle", "square", "triangle"]


def _layout(root: Path, kind: str) -> Path:
    """Layouts that read naively would turn a split folder's name into a class (or hide one)."""
    two = ("cat", "dog")
    if kind == "class named like a split":  # train/{cat,dog,test}
        make_shapes(root, splits=(("train", 2), ("test", 1)), classes=two)
        make_shapes(root / "train", splits=(("", 2),), classes=("test",))
    elif kind == "class folders beside split folders":  # cat/, dog/, test/{cat,dog}
        make_shapes(root, splits=(("", 2),), classes=two)
        make_shapes(root, splits=(("test", 1),), classes=two)
    elif kind == "a class called test beside classes":  # cat/, dog/, test/ all of images
        make_shapes(root, splits=(("", 2),), classes=(*two, "test"))
    elif kind == "split folder without class folders":  # train/{cat,dog}, test/*.png
        make_shapes(root, splits=(("train", 2),), classes=two)
        make_shapes(root, splits=(("", 2),), classes=("test",))
    elif kind == "split folders inside class folders":  # cat/{train,test}, dog/{train,test}
        for c in two:
            make_shapes(root / c, splits=(("train", 2), ("test", 1)), classes=("x",))
    elif kind == "a data set beside another folder":  # inner/{train,test}, docs/
        make_shapes(root / "inner", splits=(("train", 2), ("test", 1)), classes=two)
        (root / "docs").mkdir()
        (root / "docs" / "notes.md").write_text("x")
    elif kind == "images beside labels":  # images/*.png, labels/*.txt (YOLO)
        make_shapes(root, splits=(("", 2),), classes=("images",))
        (root / "labels").mkdir()
        (root / "labels" / "img 000.txt").write_text("0 0.5 0.5 0.2 0.2\n")
    elif kind == "images beside masks, per split":  # train/{images,masks}, val/{images,masks}
        make_shapes(root, splits=(("train", 2), ("val", 1)), classes=("images", "masks"))
    return root


@pytest.mark.parametrize(
    "kind, message",
    [
        ("class named like a split", r"class folder .*/train/test is named like a split folder"),
        (
            "class folders beside split folders",
            r"holds split folders \(test/\) and also class folders beside them "
            r"\(cat/, dog/\)",
        ),
        ("a class called test beside classes", r"holds split folders \(test/\) and also class folders"),
        ("split folder without class folders", r"split folder .*/test holds images but no class folders"),
        (
            "split folders inside class folders",
            r"folder .*/cat holds split folders \(test/, train/\), so it is not a "
            r"class folder",
        ),
        ("a data set beside another folder", r"folder .*/inner holds split folders \(test/, train/\)"),
        ("images beside labels", r"holds images/ beside labels/: images and their annotations"),
        ("images beside masks, per split", r"/train holds images/ beside masks/"),
    ],
)
def test_a_split_folder_name_never_becomes_a_class(tmp_path, kind, message):
    root = _layout(tmp_path / "data", kind)
    with pytest.raises(UserError, match=message):
        scan(root)
    if kind not in ("class named like a split", "images beside masks, per split"):  # those are wrong in train/,
        with pytest.raises(UserError, match=message):  # which `cnnlab test` never reads; the rest, it finds too
            scored_split(root, ["cat", "dog"])
    assert re.search(message, one_line_error("data", "inspect", root))


def test_folders_of_images_beside_split_folders_are_ignored_and_said(tmp_path):
    make_shapes(tmp_path, splits=(("train", 2), ("test", 1)))
    make_shapes(tmp_path / "extra", splits=(("", 1),), classes=("unsorted",))
    (tmp_path / "meta").mkdir()
    (tmp_path / "meta" / "classes.txt").write_text("circle\n")  # no images: nothing to say
    with pytest.warns(UserWarning, match=r"ignored folder\(s\) beside the split folders of .*: extra/ \(only"):
        ds = scan(tmp_path)
    assert list(ds.splits) == ["train", "test"] and ds.classes == ["circle", "square", "triangle"]


def test_train_and_test_on_an_archive_unzipped_a_folder_deep(tmp_path):
    """The newcomer's case: `--data archive` with archive/inner/{train,test}/<class>/: trains on the classes."""
    archive = tmp_path / "archive"
    make_shapes(archive / "inner", splits=(("train", 6), ("test", 2)))
    out = tmp_path / "run"
    result = run_cli(
        "train",
        "--data",
        archive,
        "--model",
        "mlp",
        "--image-size",
        16,
        "--epochs",
        1,
        "--batch-size",
        8,
        "--out",
        out,
        "-q",
    )
    assert f"warning: using {archive / 'inner'} (its train/ and test/ split folders)" in result.output
    with open(out / "split.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert {r["class"] for r in rows} == {"circle", "square", "triangle"} and len(rows) == 18
    assert all(r["path"].startswith("inner/train/") for r in rows)
    tested = run_cli("test", out, "--data", archive)
    assert "using" in tested.output and "Traceback" not in tested.output
    # Inspect says it too, and counts each split's skipped files under the right split.
    (archive / "inner" / "test" / "circle" / "notes.txt").write_text("x")
    looked = run_cli("data", "inspect", archive, "--json")
    r = json.loads(looked.stdout)
    assert r["notes"] == [f"using {archive / 'inner'} (its train/ and test/ split folders)"]
    assert [k["reason"] for k in r["splits"]["test"]["skipped"]] == ["not an image file"]
    assert r["splits"]["train"]["skipped"] == []


def test_a_file_it_may_not_read_is_skipped_by_the_scan(shapes, monkeypatch):
    """Found while scanning (`cannot read: permission denied`), so no reader after the scan ever opens it."""
    real_access = os.access  # root reads everything: deny the way os.access reports it
    monkeypatch.setattr(os, "access", lambda p, mode, **kw: "img 001" not in str(p) and real_access(p, mode, **kw))
    with pytest.warns(
        UserWarning,
        match=r"skipped 6 unusable file\(s\): .*img 001.png \(cannot read: permission "
        r"denied\)",
    ):
        ds = scan(shapes)
    assert len(ds.skipped) == 6 and all(why == "cannot read: permission denied" for _, why in ds.skipped)
    assert not any("img 001" in str(s.path) for split in ds.splits.values() for s in split)


def test_a_file_gone_since_the_scan_is_a_bad_file_not_a_crash(shapes):
    ds = scan(shapes)
    gone = ds.splits["train"][0].path
    gone.unlink()
    images, bad, _ = load_images(ds.splits["train"], ds.root, DecodeSettings(16))
    assert bad == [(str(gone), "cannot read: No such file or directory")] and len(images) == 35


@pytest.mark.parametrize("ext", [".jpg", ".JPG", ".jpeg", ".png", ".bmp", ".tif", ".webp"])
def test_every_common_extension(tmp_path, ext):
    make_shapes(tmp_path, splits=(("train", 2),), ext=ext)
    ds = scan(tmp_path)
    assert len(ds.splits["train"]) == 6
    images, bad, _ = load_images(ds.splits["train"], ds.root, DecodeSettings(16))
    assert not bad and tuple(images.images.shape) == (6, 3, 16, 16)


def test_mismatched_classes_error_and_class_map(tmp_path):
    make_shapes(tmp_path, splits=(("train", 3),))
    make_shapes(tmp_path / "tmp", splits=(("test", 2),), classes=("Circle", "square", "triangle"))
    shutil.move(tmp_path / "tmp" / "test", tmp_path / "test")
    shutil.rmtree(tmp_path / "tmp")
    with pytest.raises(UserError, match=r"only in test: \['Circle'\]; missing from test: \['circle'\]"):
        scan(tmp_path)
    ds = scan(tmp_path, class_map="Circle=circle")
    assert ds.counts("test") == {"circle": 2, "square": 2, "triangle": 2}


# --------------------------------------------------------------------------------------- bad input


def _bad_files(root):
    d = root / "train" / "circle"
    (d / ".DS_Store").write_bytes(b"\0\0\1")
    (root / "train" / ".ipynb_checkpoints").mkdir()
    (root / "train" / ".ipynb_checkpoints" / "x.png").write_bytes(b"junk")
    (d / "notes.txt").write_text("not an image")
    (d / "empty.png").write_bytes(b"")
    good = (d / "img 000.png").read_bytes()
    (d / "truncated.png").write_bytes(good[: len(good) // 2])
    (d / "corrupt.jpg").write_bytes(b"\xff\xd8\xff" + os.urandom(200))


def test_unusable_files_are_skipped_with_one_warning_and_recorded(shapes, tmp_path):
    _bad_files(shapes)
    with pytest.warns(UserWarning, match=r"skipped 4 unusable file\(s\)"):
        ds = scan(shapes)
    reasons = sorted(r for _, r in ds.skipped)
    assert reasons == ["empty file", "hidden file", "hidden folder", "not an image file"]
    images, bad, _ = load_images(ds.splits["train"], ds.root, DecodeSettings(16))
    assert sorted(os.path.basename(p) for p, _ in bad) == ["corrupt.jpg", "truncated.png"]
    assert len(images) == 36
    # A run records them too.
    out = tmp_path / "run"
    run_cli("train", "--data", shapes, "--image-size", 32, "--epochs", 1, "--batch-size", 8, "--out", out, "-q")
    skipped = (out / "skipped.csv").read_text()
    for name in ("notes.txt", "empty.png", ".DS_Store", ".ipynb_checkpoints", "truncated.png", "corrupt.jpg"):
        assert name in skipped


def test_strict_turns_skips_into_an_error(shapes, tmp_path):
    _bad_files(shapes)
    line = one_line_error("train", "--data", shapes, "--strict", "--epochs", 1, "--out", tmp_path / "r")
    assert "unusable file(s) (--strict)" in line


def test_user_errors_are_one_line_with_exit_code_2(tmp_path):
    assert "does not exist" in one_line_error("data", "inspect", tmp_path / "missing")
    (tmp_path / "file.txt").write_text("x")
    assert "not a folder" in one_line_error("data", "inspect", tmp_path / "file.txt")
    (tmp_path / "noclass" / "train").mkdir(parents=True)
    assert "no class folders" in one_line_error("data", "inspect", tmp_path / "noclass")
    make_shapes(tmp_path / "emptyclass", splits=(("train", 2),))
    (tmp_path / "emptyclass" / "train" / "void").mkdir()
    assert "holds no images" in one_line_error("data", "inspect", tmp_path / "emptyclass")
    make_shapes(tmp_path / "single", splits=(("train", 2),), classes=("only",))
    assert "only one class" in one_line_error("data", "inspect", tmp_path / "single")
    make_shapes(tmp_path / "mismatch", splits=(("train", 2),))
    make_shapes(tmp_path / "mismatch", splits=(("test", 2),), classes=("circle", "square"))
    assert "classes of test differ" in one_line_error("data", "inspect", tmp_path / "mismatch")


def test_unreadable_folder(tmp_path, monkeypatch):
    make_shapes(tmp_path / "locked", splits=(("train", 2),))
    real_access = os.access  # root reads everything, so permission is denied the way os.access reports it
    monkeypatch.setattr(os, "access", lambda p, mode: "locked" not in str(p) and real_access(p, mode))
    assert "permission denied" in one_line_error("data", "inspect", tmp_path / "locked")


def test_an_output_folder_without_write_permission_is_one_line(shapes, tmp_path, monkeypatch):
    from cnnlab import files

    real_access = os.access
    monkeypatch.setattr(files.os, "access", lambda p, mode: "readonly" not in str(p) and real_access(p, mode))
    line = one_line_error("train", "--data", shapes, "--model", "mlp", "--out", tmp_path / "readonly")
    assert "cannot write into run folder" in line and "permission denied" in line


def write_png_header(path: Path, width: int, height: int) -> Path:
    """A PNG that declares width x height pixels (and holds none): what a 30000 x 30000 scan looks like to
    Pillow before it decodes."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b""))
    return path


def test_an_oversized_image_is_skipped_and_recorded(shapes, tmp_path):
    bomb = write_png_header(shapes / "train" / "circle" / "huge.png", 30000, 30000)
    out = tmp_path / "r"
    result = run_cli("train", "--data", shapes, "--model", "mlp", "--image-size", 16, "--epochs", 1, "-q", "--out", out)
    assert "decompression-bomb limit" in result.output
    skipped = (out / "skipped.csv").read_text()
    assert "huge.png" in skipped and "decompression-bomb limit" in skipped
    assert "decompression-bomb limit" in run_cli("predict", out, shapes / "train" / "circle").output
    assert "cannot read image" in one_line_error("predict", out, bomb)


# ------------------------------------------------------------------------------------------- modes


@pytest.mark.parametrize("mode", ["1", "L", "LA", "P", "RGB", "RGBA", "CMYK", "I;16"])
@pytest.mark.parametrize("channels", [3, 1])
def test_any_mode_becomes_rgb_or_gray(tmp_path, mode, channels):
    ramp = (np.arange(30 * 20).reshape(20, 30) % 256).astype(np.uint8)
    im = Image.fromarray(ramp, "L")
    if mode == "I;16":
        im = Image.fromarray(ramp.astype("<u2") * 200)
    else:
        im = im.convert(mode)
    path = tmp_path / ("x.tif" if mode in ("CMYK", "I;16") else "x.png")
    im.save(path)
    arr, size, got_mode = decode(path, DecodeSettings(16, channels=channels))
    assert arr.shape == (channels, 16, 16) and arr.dtype == np.uint8
    assert size == (30, 20) and got_mode == mode


def test_exif_orientation_is_applied(tmp_path):
    im = Image.new("RGB", (40, 20), (0, 0, 0))
    im.paste((255, 255, 255), (0, 0, 20, 20))  # left half white
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    im.save(tmp_path / "o.jpg", exif=exif, quality=95)
    arr, _, _ = decode(tmp_path / "o.jpg", DecodeSettings(64, resize="keep", channels=1))
    # Displayed upright, the white half is on top: the image is now portrait.
    assert arr.shape[1] > arr.shape[2]
    assert arr[0, : arr.shape[1] // 2 - 2].mean() > 200 and arr[0, arr.shape[1] // 2 + 2 :].mean() < 50


@pytest.mark.parametrize("policy", ["squash", "pad", "keep"])
def test_resize_policies(tmp_path, policy):
    Image.new("RGB", (200, 100), (255, 255, 255)).save(tmp_path / "w.png")
    arr, _, _ = decode(tmp_path / "w.png", DecodeSettings(64, resize=policy))
    if policy == "squash":
        assert arr.shape == (3, 64, 64) and arr.min() == 255
    elif policy == "pad":
        assert arr.shape == (3, 64, 64) and arr[:, 0].max() == 0 and arr[:, 32].min() == 255
    else:
        assert arr.shape == (3, 32, 64)


# ------------------------------------------------------------------------------------------- split


def test_split_is_stratified_deterministic_and_disjoint(tmp_path):
    make_shapes(tmp_path, splits=(("train", 20),))
    a, b = scan(tmp_path), scan(tmp_path)
    split_train_val(a, 0.3, 42)
    split_train_val(b, 0.3, 42)
    assert [s.path for s in a.splits["val"]] == [s.path for s in b.splits["val"]]
    assert a.counts("val") == {"circle": 6, "square": 6, "triangle": 6}
    assert not {s.path for s in a.splits["val"]} & {s.path for s in a.splits["train"]}
    c = scan(tmp_path)
    split_train_val(c, 0.3, 7)
    assert [s.path for s in c.splits["val"]] != [s.path for s in a.splits["val"]]


def test_group_aware_split_keeps_groups_whole(tmp_path):
    make_shapes(tmp_path, splits=(("train", 20),))
    ds = scan(tmp_path)
    rels = [ds.rel(s.path) for s in ds.splits["train"]]
    groups = {r: i // 4 for i, r in enumerate(rels)}  # groups of 4 files
    split_train_val(ds, 0.3, 42, groups)
    side = {}
    for split in ("train", "val"):
        for s in ds.splits[split]:
            side.setdefault(groups[ds.rel(s.path)], set()).add(split)
    assert all(len(v) == 1 for v in side.values())
    assert 4 <= len(ds.splits["val"]) / 3 <= 8


def test_natural_order_blocks_and_merged_groups(tmp_path):
    for cls in ("a", "b"):
        (tmp_path / "train" / cls).mkdir(parents=True)
        for i in range(1, 13):
            Image.new("L", (8, 8), i * 9).save(tmp_path / "train" / cls / f"img ({i}).png")
    ds = scan(tmp_path)
    blocks = block_groups(ds, 5)
    # name order is numeric: img (1)..img (5) form the first block, not img (1), img (10), img (11), ...
    first = sorted(r for r, g in blocks.items() if g == 0)
    assert first == sorted(os.path.join("train", "a", f"img ({i}).png") for i in range(1, 6))
    assert len(set(blocks.values())) == 6  # 5 + 5 + 2 per class
    a1, a12 = (os.path.join("train", "a", f"img ({i}).png") for i in (1, 12))
    merged = merge_groups({a1: 0, a12: 0}, blocks)
    assert merged[a1] == merged[a12]  # a copy joins the first and the last block of class a
    assert merged[os.path.join("train", "a", "img (11).png")] == merged[a1]
    assert merged[os.path.join("train", "a", "img (6).png")] != merged[a1]
    assert merged[os.path.join("train", "b", "img (1).png")] != merged[a1]


def test_blocked_split_keeps_runs_whole_and_copies_together(tmp_path):
    make_shapes(tmp_path, splits=(("train", 40),))
    ds = scan(tmp_path)
    rels = sorted(ds.rel(s.path) for s in ds.splits["train"])
    copies = {rels[0]: 0, rels[-1]: 0}  # a cross-class near copy
    groups = block_split_groups(ds, 4, copies)
    split_train_val(ds, 0.3, 42, groups)
    side = {ds.rel(s.path): s.split for split in ("train", "val") for s in ds.splits[split]}
    assert side[rels[0]] == side[rels[-1]]
    for g in set(groups.values()):
        assert len({side[r] for r, k in groups.items() if k == g}) == 1
    # a chain of copies through more than 4 runs falls back to the copies alone
    blocks = block_groups(ds, 4)
    members = {g: sorted(r for r, k in blocks.items() if k == g) for g in range(5)}
    chain = {m[0]: 0 for m in members.values()}
    loose = block_split_groups(ds, 4, chain)
    assert len({loose[r] for r in chain}) == 1
    assert all(r not in loose for m in members.values() for r in m[1:])
    assert loose[sorted(r for r, k in blocks.items() if k == 6)[0]] != loose[next(iter(chain))]


def test_block_split_from_the_config(shapes, tmp_path):
    out = tmp_path / "run"
    run_cli(
        "train",
        "--data",
        str(shapes),
        "--model",
        "mlp",
        "--epochs",
        "1",
        "--set",
        "split=blocks",
        "--set",
        "block_size=3",
        "--out",
        str(out),
    )
    assert (out / "split.csv").exists()
    assert "unknown split 'patients'" in one_line_error(
        "train", "--data", str(shapes), "--set", "split=patients", "--out", str(tmp_path / "x")
    )


def test_validation_from_a_manifest(tmp_path):
    make_shapes(tmp_path / "d", splits=(("train", 10),))
    ds = scan(tmp_path / "d")
    rels = [ds.rel(s.path) for s in ds.splits["train"]]
    listed = [r for r in rels if r.endswith(("001.png", "002.png"))]
    (tmp_path / "v.csv").write_text("path,class\n" + "".join(f"{r},{r.split(os.sep)[1]}\n" for r in listed))
    groups = {rels[0]: 0, rels[1]: 0, listed[0]: 1, rels[-1]: 1}  # a copy group reaching into another class
    split_by_manifest(ds, tmp_path / "v.csv", groups)
    val = {ds.rel(s.path) for s in ds.splits["val"]}
    assert val == set(listed) | {rels[-1]}
    assert not val & {ds.rel(s.path) for s in ds.splits["train"]}
    assert len(ds.splits["train"]) + len(val) == len(rels)
    # a run's own split.csv is a valid manifest: its val rows are taken
    write_manifest(ds, tmp_path / "split.csv", splits=("train", "val"))
    again = scan(tmp_path / "d")
    split_by_manifest(again, tmp_path / "split.csv")
    assert {again.rel(s.path) for s in again.splits["val"]} == val


@pytest.mark.parametrize(
    "row, message",
    [
        ("train/circle/img 001.png,square", "is listed as 'square' but lies in the 'circle' folder"),
        ("train/circle/nope.png,circle", "image not found"),
        ("".join(f"train/circle/img {i:03d}.png,circle\n" for i in range(4)), "takes every training image"),
    ],
)
def test_validation_manifest_errors(tmp_path, row, message):
    make_shapes(tmp_path / "d", splits=(("train", 4),))
    (tmp_path / "v.csv").write_text("path,class\n" + row + "\n")
    assert message in one_line_error(
        "train",
        "--data",
        tmp_path / "d",
        "--model",
        "mlp",
        "--epochs",
        "1",
        "--set",
        f"val_manifest={tmp_path / 'v.csv'}",
        "--out",
        tmp_path / "r",
    )


def test_manifest_round_trip(tmp_path):
    make_shapes(tmp_path / "d", splits=(("train", 10), ("test", 2)))
    ds = scan(tmp_path / "d")
    split_train_val(ds, 0.3, 42)
    write_manifest(ds, tmp_path / "m.csv")
    back = read_manifest(tmp_path / "m.csv", ds.root, ds.classes, split="val")
    assert [s.path for s in back] == [s.path for s in ds.splits["val"]]


# ------------------------------------------------------------------------------------------- cache


def test_second_load_opens_no_image_and_changes_invalidate_exactly(shapes, monkeypatch):
    ds = scan(shapes)
    samples = ds.splits["train"]
    prep = DecodeSettings(24)
    first, _, stats = load_images(samples, ds.root, prep)
    assert stats.decoded == 36 and stats.hits == 0

    def no_open(*a, **k):
        raise AssertionError("an image was opened on a cache hit")

    with monkeypatch.context() as m:
        m.setattr(Image, "open", no_open)
        second, _, stats = load_images(samples, ds.root, prep)
    assert stats.decoded == 0 and stats.hits == 36
    assert (first.images == second.images).all()

    changed = samples[5].path
    Image.new("RGB", (40, 36), (255, 0, 0)).save(changed)
    third, _, stats = load_images(samples, ds.root, prep)
    assert stats.decoded == 1 and stats.hits == 35
    assert third.images[5].float().mean() > first.images[5].float().mean()

    _, _, stats = load_images(samples, ds.root, DecodeSettings(24, channels=1))
    assert stats.decoded == 36  # another setting is another cache


def test_cache_refuses_to_live_inside_the_dataset(shapes):
    with pytest.raises(UserError, match="inside the dataset"):
        ImageCache(shapes, DecodeSettings(16), cache_dir=shapes / "cache")


# ------------------------------------------------------------------------------------------ inspect


def test_inspect_json_and_contact_sheet(shapes, tmp_path):
    out = run_cli("data", "inspect", shapes, "--json", "--out", tmp_path / "look").output
    report = json.loads(out)
    assert report["splits"]["train"]["classes"]["circle"]["count"] == 12
    assert report["splits"]["test"]["classes"]["square"]["count"] == 4
    assert report["splits"]["train"]["sizes"]["most_common"][0] == ["40x36", 36]
    assert (tmp_path / "look" / "samples_train.png").stat().st_size > 1000


# ---------------------------------------------------------------------------------------- read-only


def test_a_full_command_leaves_the_dataset_unchanged(shapes, tmp_path):
    _bad_files(shapes)
    before = tree_hash(shapes)
    run = tmp_path / "run"
    run_cli("data", "inspect", shapes, "--out", tmp_path / "look")
    run_cli("train", "--data", shapes, "--image-size", 32, "--epochs", 1, "--batch-size", 8, "--out", run, "-q")
    run_cli("test", run, "--data", shapes)
    run_cli("predict", run, shapes / "test")
    assert tree_hash(shapes) == before


def test_any_pillow_failure_is_a_bad_image_not_a_crash(shapes, monkeypatch):
    from PIL import ImageOps

    def broken_exif(im):  # what a JPEG with a corrupt EXIF block does inside Pillow
        raise TypeError("bad operand type for abs(): 'str'")

    monkeypatch.setattr(ImageOps, "exif_transpose", broken_exif)
    with pytest.raises(BadImage, match="TypeError"):
        decode(next((shapes / "train" / "circle").iterdir()), DecodeSettings(32))


def test_group_split_keeps_each_listed_group_on_one_side(shapes, tmp_path):
    import csv

    groups = tmp_path / "groups.csv"
    rows = [
        (f"train/{c}/img {i:03d}.png", f"{c}-patient{i // 4}")
        for c in ("circle", "square", "triangle")
        for i in range(8)
    ]  # the first 8 files of each class: two "patients" of 4 slices; the rest in blocks
    with open(groups, "w", newline="") as f:
        csv.writer(f).writerows([("path", "group"), *rows])
    out = tmp_path / "r"
    run_cli(
        "train",
        "--data",
        shapes,
        "--model",
        "mlp",
        "--image-size",
        16,
        "--epochs",
        1,
        "-q",
        "--set",
        "split=groups",
        "--set",
        f"group_file={groups}",
        "--set",
        "block_size=2",
        "--out",
        out,
    )
    with open(out / "split.csv", newline="") as f:
        side = {row["path"]: row["split"] for row in csv.DictReader(f)}
    by_group: dict[str, set] = {}
    for path, group in rows:
        by_group.setdefault(group, set()).add(side[path])
    assert all(len(sides) == 1 for sides in by_group.values())
    assert {"train", "val"} <= set(side.values())
    # Neither a group file, a group column nor DICOM PatientIDs: nothing gives the groups (known once scanned).
    line = one_line_error("train", "--data", shapes, "--set", "split=groups", "--out", tmp_path / "r2")
    assert "no group_file given" in line and "PatientID" in line and not (tmp_path / "r2").exists()
    assert "needs split = groups" in one_line_error("train", "--data", shapes, "--set", "group_file=x.csv")
    (tmp_path / "bad.csv").write_text("path,group\ntrain/circle/nope.png,a\n")
    assert "is not a train image" in one_line_error(
        "train",
        "--data",
        shapes,
        "--model",
        "mlp",
        "--set",
        "split=groups",
        "--set",
        f"group_file={tmp_path / 'bad.csv'}",
        "--out",
        tmp_path / "r2",
    )


def test_shape_batches_group_equal_shapes_and_keep_every_index():
    from cnnlab.data.image_files import shape_batches

    arrays = [np.zeros(s, dtype=np.uint8) for s in [(1, 8, 8), (1, 8, 16), (1, 8, 8), (1, 8, 8), (1, 8, 16)]]
    batches = shape_batches(arrays, batch_size=2)
    assert batches == [[0, 2], [3], [1, 4]]
    assert all(len({arrays[i].shape for i in b}) == 1 for b in batches)
