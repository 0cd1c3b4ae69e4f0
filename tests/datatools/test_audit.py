"""The audit: exact and near copies within and across splits, label conflicts, leak-free test, dedupe."""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import make_shapes, one_line_error, run_cli, tree_hash
from PIL import Image

import cnnlab
from cnnlab.data.duplicates import close_pairs, duplicate_groups
from cnnlab.data.folders import scan
from cnnlab.data.manifest import MANIFEST_FIELDS, read_manifest
from cnnlab.data.splits import split_train_val
from cnnlab.datatools.audit import format_audit, run_audit
from cnnlab.datatools.audit_against import audit_against


@pytest.fixture
def dupes(tmp_path):
    """make_shapes plus planted copies (names say what they are):

    exact, across splits : train/circle/img 000.png = train/circle/a dup.png = test/circle/a copy.png
    exact, cross-label   : train/circle/img 003.png = train/square/b conflict.png
    near, across splits  : train/square/img 001.png ~ test/square/c jpeg.jpg (JPEG q90)
                           train/triangle/img 002.png ~ test/triangle/d resized.png (2x, bilinear)
    near, within test    : test/circle/img 001.png ~ test/circle/e jpeg.jpg
    same class, 4 copies : train/triangle/img 004.png = f1..f3 (JPEG, resized, exact)
    """
    root = make_shapes(tmp_path / "ds", splits=(("train", 14), ("test", 4)), size=(48, 40))
    tr, te = root / "train", root / "test"
    shutil.copy(tr / "circle/img 000.png", tr / "circle/a dup.png")
    shutil.copy(tr / "circle/img 000.png", te / "circle/a copy.png")
    shutil.copy(tr / "circle/img 003.png", tr / "square/b conflict.png")
    Image.open(tr / "square/img 001.png").save(te / "square/c jpeg.jpg", quality=90)
    im = Image.open(tr / "triangle/img 002.png")
    im.resize((im.width * 2, im.height * 2), Image.Resampling.BILINEAR).save(te / "triangle/d resized.png")
    Image.open(te / "circle/img 001.png").save(te / "circle/e jpeg.jpg", quality=90)
    src = tr / "triangle/img 004.png"
    Image.open(src).save(tr / "triangle/f1.jpg", quality=92)
    im = Image.open(src)
    im.resize((im.width * 3 // 2, im.height * 3 // 2), Image.Resampling.BILINEAR).save(tr / "triangle/f2.png")
    shutil.copy(src, tr / "triangle/f3.png")
    return root


def test_close_pairs_is_exact_all_pairs():
    g = torch.Generator().manual_seed(0)
    base = torch.randint(0, 256, (30, 1, 64, 64), generator=g, dtype=torch.uint8)
    noise = torch.randint(-6, 7, (30, 1, 64, 64), generator=g)
    near = (base.int() + noise).clamp(0, 255).to(torch.uint8)
    x = torch.cat([base, near, base[:3]])
    full = torch.cdist(x.flatten(1).double(), x.flatten(1).double(), p=1) / (64 * 64 * 255)
    for cap in (0.0, 3 / 255, 4 / 255, 0.4):
        pairs, dist = close_pairs(x, cap)
        want = {(i, j) for i in range(len(x)) for j in range(i + 1, len(x)) if full[i, j] <= cap + 1e-12}
        assert {tuple(p) for p in pairs.tolist()} == want
        assert np.allclose(dist.numpy(), [full[i, j].item() for i, j in pairs.tolist()])


def test_audit_counts_and_outputs(dupes, tmp_path):
    before = tree_hash(dupes)
    r = run_audit(dupes, out=tmp_path / "out")
    assert tree_hash(dupes) == before  # nothing written into the dataset
    assert r["images"] == {"train": 3 * 14 + 5, "test": 3 * 4 + 4}
    assert r["exact_groups"] == 3 and r["exact_redundant"] == 4  # a (3 files), b (2), f3 with img 004 (2)
    assert r["exact_groups_by_split"] == {"train": 2, "test": 0, "across": 1}
    assert r["test_exact_in_train"] == 1
    assert r["test_near_in_train"] == 3  # a copy, c jpeg, d resized
    assert r["test_leak_free"] == 16 - 3
    assert r["near_groups"] == 6 and r["near_groups_by_split"] == {"train": 2, "test": 1, "across": 3}
    assert r["largest_group"] == 4 and r["near_redundant"] == 2 + 1 + 1 + 1 + 1 + 3
    assert r["cross_label_groups"] == 1 and r["cross_label_exact_groups"] == 1
    conflict = [g for g in r["groups"] if len(g["classes"]) > 1]
    assert {m["path"] for m in conflict[0]["members"]} == {"train/circle/img 003.png", "train/square/b conflict.png"}
    hist = r["distance_histogram"]["test"]
    assert sum(hist["counts"]) + hist["above_cap"] == 16 and hist["largest_within_threshold"] <= 4

    out = tmp_path / "out"
    assert {
        "audit.json",
        "leak_free_test.csv",
        "distance_hist.png",
        "gallery_largest.png",
        "gallery_cross_label.png",
    } <= {p.name for p in out.iterdir()}
    assert json.loads((out / "audit.json").read_text())["exact_groups"] == 3
    with open(out / "leak_free_test.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == MANIFEST_FIELDS and len(rows) == 13
    paths = {row["path"]: row for row in rows}
    leaked = {"test/circle/a copy.png", "test/square/c jpeg.jpg", "test/triangle/d resized.png"}
    assert not leaked & set(paths)
    assert paths["test/circle/e jpeg.jpg"]["group"] == paths["test/circle/img 001.png"]["group"] != "-1"
    assert {row["split"] for row in rows} == {"test"}
    # The manifest reader of `cnnlab test --manifest` accepts it.
    ds = scan(dupes)
    samples = read_manifest(out / "leak_free_test.csv", ds.root, ds.classes, split="test")
    assert len(samples) == 13
    assert "exact (byte-identical)" in format_audit(r)


def test_threshold_changes_near_not_exact(dupes):
    r = run_audit(dupes, threshold=0.0)
    assert r["exact_groups"] == 3 and r["test_exact_in_train"] == 1
    assert r["test_near_in_train"] == 1  # only the byte-identical copy survives a zero threshold


def test_duplicate_groups_stay_whole_through_the_split(dupes):
    ds = scan(dupes)
    groups = duplicate_groups(ds, split="train")
    rel = lambda name: f"train/{name}"  # noqa: E731
    assert groups[rel("circle/img 000.png")] == groups[rel("circle/a dup.png")]
    f = {groups[rel(f"triangle/{n}")] for n in ("img 004.png", "f1.jpg", "f2.png", "f3.png")}
    assert len(f) == 1 and len(groups) == 2 + 2 + 4
    assert not any(k.startswith("test/") for k in groups)
    for seed in range(6):
        ds = scan(dupes)
        split_train_val(ds, 0.3, seed, groups)
        side = {ds.rel(s.path): split for split in ("train", "val") for s in ds.splits[split]}
        by_group: dict[int, set[str]] = {}
        labels = {ds.rel(s.path): s.label for split in ("train", "val") for s in ds.splits[split]}
        for path, gid in groups.items():
            by_group.setdefault(gid, set()).add((side[path], labels[path]))
        for members in by_group.values():
            if len({label for _, label in members}) == 1:  # a same-class group: one side only
                assert len({s for s, _ in members}) == 1
        recorded = {ds.rel(s.path): s.group for s in ds.splits["train"] + ds.splits["val"]}
        assert all(recorded[p] == g for p, g in groups.items())  # the manifest's group column


def test_cli_json_and_errors(dupes, tmp_path):
    result = run_cli("data", "audit", dupes, "--json", "--out", tmp_path / "a")
    r = json.loads(result.output)
    for key in (
        "exact_groups",
        "exact_redundant",
        "test_exact_in_train",
        "test_near_in_train",
        "near_groups",
        "cross_label_groups",
    ):
        assert key in r
    assert "groups" not in r and (tmp_path / "a" / "leak_free_test.csv").is_file()
    assert (
        "test images with a copy in train: 1 byte-identical, 3 exact or near" in run_cli("data", "audit", dupes).output
    )
    assert "inside the dataset" in one_line_error("data", "audit", dupes, "--out", dupes / "audit")
    assert "--threshold" in one_line_error("data", "audit", dupes, "--threshold", "300")
    assert "does not exist" in one_line_error("data", "audit", tmp_path / "missing")
    assert "Example" in run_cli("data", "audit", "--help").output


def test_train_only_dataset(tmp_path):
    root = make_shapes(tmp_path / "plain", splits=(("", 5),))
    r = run_audit(root, out=tmp_path / "o")
    assert r["test_near_in_train"] is None and not (tmp_path / "o" / "leak_free_test.csv").exists()


def test_cross_label_group_stays_whole(dupes):
    ds = scan(dupes)
    groups = duplicate_groups(ds, split="train")
    sides = []
    for seed in (14, 15, 26):  # seeds that split it with the current per-class placement
        ds = scan(dupes)
        split_train_val(ds, 0.3, seed, groups)
        side = {ds.rel(s.path): split for split in ("train", "val") for s in ds.splits[split]}
        sides.append({side["train/circle/img 003.png"], side["train/square/b conflict.png"]})
    assert all(len(s) == 1 for s in sides)


def test_val_folder_counts_as_train_side(tmp_path):
    root = make_shapes(tmp_path / "v", splits=(("train", 6), ("val", 3), ("test", 3)))
    shutil.copy(root / "train/circle/img 000.png", root / "val/circle/copy.png")
    Image.open(root / "val/square/img 000.png").save(root / "test/square/from val.jpg", quality=90)
    r = run_audit(root)
    assert r["val_exact_in_train"] == 1 and r["val_near_in_train"] == 1
    assert r["test_exact_in_train"] == 0 and r["test_near_in_train"] == 1  # a copy of a val image leaks too
    assert "validation images with a copy in train: 1" in format_audit(r)


def test_unreadable_files_compared_by_bytes_only(shapes, tmp_path):
    (shapes / "train/circle/broken.png").write_bytes(b"not an image at all")
    (shapes / "test/circle/broken copy.png").write_bytes(b"not an image at all")
    r = run_audit(shapes, out=tmp_path / "o")
    assert r["unreadable"] == 2 and r["exact_groups"] == 1 and r["test_exact_in_train"] == 1
    with open(tmp_path / "o" / "leak_free_test.csv", newline="") as f:
        assert len(list(csv.DictReader(f))) == 12  # the 12 readable originals
    assert (tmp_path / "o" / "gallery_largest.png").is_file()


def test_audit_figures_draw_from_plain_arrays(tmp_path):
    from cnnlab.reporting import figures

    gray = np.full((96, 96), 128, dtype=np.uint8)
    rows = [
        ("group 0\n3 files", [(gray, "train/a\n1.png"), (gray, "test/a\n2.png"), (gray, "train/b\n3.png")]),
        ("group 1\n2 files", [(gray, "train/a\n4.png"), (np.zeros((96, 96), np.uint8), "test/b\nbad.png")]),
    ]
    figures.group_gallery(rows, tmp_path / "g.png", "groups")
    report = {
        "threshold_gray": 4.0,
        "distance_histogram": {"edges": [0.0, 0.5, 1.0], "train": {"counts": [3, 1], "above_cap": 2}},
    }
    figures.distance_histogram(report, tmp_path / "h.png")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["g.png", "h.png"]  # no temporary file left behind


# ------------------------------------------------------------------------------------- across data sets


@pytest.fixture
def two_sets(tmp_path):
    """DIR (train/test, circle/square/triangle) and OTHER (figshare's layout: `images/<class>`, classes circ, sq,
    tri and blob, which has no counterpart in DIR), with planted cross copies (OTHER file <- DIR file):

    exact         : circ/e1.png  <- train/circle/img 000.png
    near (JPEG)   : sq/n1.jpg    <- test/square/img 001.png
    near (resized): tri/n2.png   <- train/triangle/img 002.png
    conflict      : circ/c1.jpg  <- train/square/img 003.png (JPEG: a near copy filed as circ = circle)
    unmapped      : blob/u1.png  <- train/circle/img 004.png (exact; blob maps to no DIR class)
    """
    dir_root = make_shapes(tmp_path / "dir", splits=(("train", 8), ("test", 3)), size=(48, 40))
    other = tmp_path / "other"
    make_shapes(other / "images", splits=(("", 4),), classes=("circ", "sq", "tri", "blob"), size=(48, 40), seed=1)
    (other / "folds.csv").write_text("path,class,fold\n")
    o = other / "images"
    shutil.copy(dir_root / "train/circle/img 000.png", o / "circ/e1.png")
    Image.open(dir_root / "test/square/img 001.png").save(o / "sq/n1.jpg", quality=90)
    im = Image.open(dir_root / "train/triangle/img 002.png")
    im.resize((im.width * 2, im.height * 2), Image.Resampling.BILINEAR).save(o / "tri/n2.png")
    Image.open(dir_root / "train/square/img 003.png").save(o / "circ/c1.jpg", quality=90)
    shutil.copy(dir_root / "train/circle/img 004.png", o / "blob/u1.png")
    return dir_root, other


CLASS_MAP = "circ=circle,sq=square,tri=triangle"


def test_close_pairs_across_two_sets_is_exact():
    g = torch.Generator().manual_seed(1)
    a = torch.randint(0, 256, (20, 1, 64, 64), generator=g, dtype=torch.uint8)
    b = torch.cat(
        [
            (a[:8].int() + torch.randint(-5, 6, (8, 1, 64, 64), generator=g)).clamp(0, 255).to(torch.uint8),
            torch.randint(0, 256, (9, 1, 64, 64), generator=g, dtype=torch.uint8),
            a[:2],
        ]
    )
    full = torch.cdist(a.flatten(1).double(), b.flatten(1).double(), p=1) / (64 * 64 * 255)
    for cap in (0.0, 3 / 255, 0.4):
        pairs, dist = close_pairs(a, cap, chunk=7, other=b)
        want = {(i, j) for i in range(len(a)) for j in range(len(b)) if full[i, j] <= cap + 1e-12}
        assert {tuple(p) for p in pairs.tolist()} == want
        assert np.allclose(dist.numpy(), [full[i, j].item() for i, j in pairs.tolist()])


def test_audit_against_counts_csv_and_gallery(two_sets, tmp_path):
    dir_root, other = two_sets
    before = tree_hash(dir_root), tree_hash(other)
    r = audit_against(dir_root, other, class_map=CLASS_MAP, out=tmp_path / "out")
    assert (tree_hash(dir_root), tree_hash(other)) == before  # neither data set is written into
    assert r["against_images"] == {"train": 4 * 4 + 5}
    assert r["against_classes"] == {"blob": None, "circ": "circle", "sq": "square", "tri": "triangle"}
    assert r["against_copies"] == 5 and r["against_exact_copies"] == 2
    assert r["against_label_conflicts"] == 1 and r["against_unmapped_copies"] == 1
    assert r["against_by_folder"]["train"]["square"] == {"images": 8, "copies": 1, "conflicts": 1}
    assert r["against_by_folder"]["test"]["square"] == {"images": 3, "copies": 1, "conflicts": 0}
    assert r["against_by_folder"]["train"]["circle"]["copies"] == 2
    assert r["exact_groups"] == 0 and r["test_near_in_train"] == 0  # the plain audit of DIR is still there
    out = tmp_path / "out"
    with open(out / "against_copies.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == [
        "path",
        "class",
        "split",
        "other_path",
        "other_class",
        "other_as",
        "kind",
        "distance_gray",
        "conflict",
    ]
    got = {(row["path"], row["other_path"], row["kind"], row["conflict"]) for row in rows}
    assert got == {
        ("train/circle/img 000.png", "images/circ/e1.png", "exact", "0"),
        ("test/square/img 001.png", "images/sq/n1.jpg", "near", "0"),
        ("train/triangle/img 002.png", "images/tri/n2.png", "near", "0"),
        ("train/square/img 003.png", "images/circ/c1.jpg", "near", "1"),
        ("train/circle/img 004.png", "images/blob/u1.png", "exact", "0"),
    }
    blob = next(row for row in rows if row["other_class"] == "blob")
    assert blob["other_as"] == "" and float(blob["distance_gray"]) == 0
    assert all(float(row["distance_gray"]) <= 4 for row in rows)
    assert (out / "gallery_against_conflicts.png").is_file()
    written = json.loads((out / "audit.json").read_text())
    assert written["against_label_conflicts"] == 1
    assert written["written"][-3:] == ["against_copies.csv", "gallery_against_conflicts.png", "audit.json"]
    # Without the map, every OTHER class but none of DIR's is unmapped: copies stay copies, nothing conflicts.
    bare = audit_against(dir_root, other)
    assert bare["against_copies"] == 5 and bare["against_label_conflicts"] == 0
    assert bare["against_unmapped_copies"] == 5


def test_cli_against(two_sets, tmp_path):
    dir_root, other = two_sets
    result = run_cli(
        "data", "audit", dir_root, "--against", other, "--class-map", CLASS_MAP, "--json", "--out", tmp_path / "o"
    )
    r = json.loads(result.stdout)  # stderr: "warning: using .../other/images (its 4 class folders)"
    assert r["against_copies"] == 5 and r["against_label_conflicts"] == 1
    text = run_cli("data", "audit", dir_root, "--against", other, "--class-map", CLASS_MAP).output
    assert "images here with a copy there: 5 (2 byte-identical) of 33; label conflicts: 1" in text
    assert "classes there with no counterpart here (never a conflict): blob" in text
    plain = json.loads(run_cli("data", "audit", dir_root, "--json").output)
    assert not any(k.startswith("against") for k in plain)
    assert "--against" in one_line_error("data", "audit", dir_root, "--against", tmp_path / "missing")
    assert "itself" in one_line_error("data", "audit", dir_root, "--against", dir_root)
    assert "did you mean 'circle'" in one_line_error(
        "data", "audit", dir_root, "--against", other, "--class-map", "circ=circel"
    )
    assert "inside the dataset" in one_line_error(
        "data", "audit", dir_root, "--against", other, "--out", other / "audit"
    )
    assert not (other / "audit").exists()


def test_unreadable_files_do_not_stop_the_audit(two_sets, tmp_path):
    """Garbage bytes and a truncated JPEG, in both sets: reported as unreadable, compared by bytes only."""
    dir_root, other = two_sets
    garbage = b"this is not a JPEG at all" * 4
    (dir_root / "train/circle/x.jpg").write_bytes(garbage)
    (other / "images/sq/x copy.jpg").write_bytes(garbage)
    Image.open(dir_root / "train/square/img 005.png").save(tmp_path / "full.jpg", quality=90)
    whole = (tmp_path / "full.jpg").read_bytes()
    (dir_root / "test/triangle/truncated.jpg").write_bytes(whole[: len(whole) // 2])
    (other / "images/tri/truncated.jpg").write_bytes(whole[:300])
    result = run_cli("data", "audit", dir_root, "--against", other, "--class-map", CLASS_MAP, "--out", tmp_path / "o")
    assert "unreadable images (exact comparison only): 2" in result.output
    assert "2 unreadable" in result.output and "Traceback" not in result.output
    r = json.loads((tmp_path / "o" / "audit.json").read_text())
    assert r["unreadable"] == 2 and r["against_unreadable"] == 2
    assert r["against_copies"] == 6 and r["against_label_conflicts"] == 2  # x.jpg: circle here, sq = square there
    with open(tmp_path / "o" / "against_copies.csv", newline="") as f:
        row = next(row for row in csv.DictReader(f) if row["path"] == "train/circle/x.jpg")
    assert row["kind"] == "exact" and row["distance_gray"] == "" and row["conflict"] == "1"
    assert (tmp_path / "o" / "gallery_against_conflicts.png").is_file()  # an unreadable file is a black tile
    plain = run_cli("data", "audit", dir_root, "--out", tmp_path / "p")
    assert "unreadable images (exact comparison only): 2" in plain.output


# ------------------------------------------------------------------------------------ files it may not read


def _deny(monkeypatch, name: str) -> None:
    """Permission denied on the files whose path holds `name`, the way os.access reports it (root reads all)."""
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda p, mode, **kw: name not in str(p) and real_access(p, mode, **kw))


def test_audit_skips_a_file_it_may_not_read(two_sets, monkeypatch):
    dir_root, other = two_sets
    shutil.copy(dir_root / "train/circle/img 000.png", dir_root / "test/circle/locked.png")  # would be a leak
    shutil.copy(dir_root / "train/circle/img 000.png", other / "images/circ/locked too.png")
    _deny(monkeypatch, "locked")
    result = run_cli("data", "audit", dir_root, "--json")
    assert "warning: skipped 1 unusable file(s): " in result.output and "Traceback" not in result.output
    assert "locked.png (cannot read: permission denied)" in result.output
    r = json.loads(result.stdout)
    assert r["skipped"] == 1 and r["images"] == {"train": 24, "test": 9} and r["test_exact_in_train"] == 0
    text = run_cli("data", "audit", dir_root, "--against", other, "--class-map", CLASS_MAP).output
    assert "skipped files (unusable, not audited): 1" in text and "(train 21, 1 skipped)" in text
    assert "locked too.png (cannot read: permission denied)" in text and "Traceback" not in text


def test_a_file_that_cannot_be_hashed_is_named_not_a_traceback(shapes, monkeypatch):
    """Unreadable after the scan (or by a check os.access cannot see): hashed as nobody's copy, and said."""
    from cnnlab.data import duplicates

    shutil.copy(shapes / "train/circle/img 000.png", shapes / "test/circle/copy.png")

    def denying_open(path, *args, **kwargs):
        if "copy.png" in str(path):
            raise PermissionError(13, "Permission denied", str(path))
        return open(path, *args, **kwargs)

    monkeypatch.setattr(duplicates, "open", denying_open, raising=False)
    with pytest.warns(UserWarning, match=r"skipped 1 unusable file\(s\): .*copy.png \(cannot read: Permission"):
        r = run_audit(shapes)
    assert r["test_exact_in_train"] == 0 and r["test_near_in_train"] == 1  # still compared by its pixels


def test_a_file_chmod_000_for_a_user_who_may_not_read_it(shapes, tmp_path):
    """A real unreadable file: the audit (and --against) run as a process without the right to read every file
    (root: setpriv drops the capabilities that let it): a warning, exit code 0, no traceback."""
    locked = shapes / "train/circle/img 001.png"
    os.chmod(locked, 0)
    other = make_shapes(tmp_path / "other", splits=(("train", 3),), seed=3)
    os.chmod(other / "train/square/img 002.png", 0)
    prefix = []
    if os.geteuid() == 0:
        if shutil.which("setpriv") is None:
            pytest.skip("root without setpriv: root reads every file")
        caps = "-dac_override,-dac_read_search"
        prefix = [shutil.which("setpriv"), "--bounding-set", caps, "--inh-caps", caps]
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(Path(cnnlab.__file__).parents[1]), os.environ.get("PYTHONPATH", "")]),
    }
    probe = subprocess.run(
        [*prefix, sys.executable, "-c", f"open({str(locked)!r}, 'rb')"], capture_output=True, text=True, env=env
    )
    if "PermissionError" not in probe.stderr:
        pytest.skip(f"cannot run as a user who may not read the file here: {probe.stderr.strip()[-200:]}")
    for args in ([], ["--against", str(other)]):
        done = subprocess.run(
            [*prefix, sys.executable, "-m", "cnnlab", "data", "audit", str(shapes), *args],
            capture_output=True,
            text=True,
            env=env,
        )
        assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr
        assert "img 001.png (cannot read: permission denied)" in done.stderr
        assert "skipped files (unusable, not audited): 1" in done.stdout
    assert "img 002.png (cannot read: permission denied)" in done.stderr and ", 1 skipped)" in done.stdout
