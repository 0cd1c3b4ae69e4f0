"""Label files: `--data labels.csv` (path,label[,split][,group]) through every command, and every bad file one line."""

from __future__ import annotations

import csv
import json
import re
import shutil

import pytest
from conftest import make_shapes, one_line_error, run_cli, tree_hash

from cnnlab.data.folders import scan
from cnnlab.data.image_files import expand_paths
from cnnlab.data.labels import protected_paths
from cnnlab.errors import UserError
from cnnlab.training import run_folder

CLASSES = ("circle", "square", "triangle")
FAST = ("--model", "simple-bn", "--image-size", 32, "--epochs", 1, "--batch-size", 8, "-q")


def _project(tmp_path, per_class=10, patients=5, test_patients=1):
    """A project folder: every image in one flat folder (images/scan-NNN.png, no class in any name), and
    labels.csv beside it giving class, split and patient, in columns of unusual order and case. Patient k has
    images 2k and 2k+1 of every class; the last `test_patients` patients are the test rows."""
    src = make_shapes(tmp_path / "src", splits=(("", per_class),))
    project = tmp_path / "project"
    (project / "images").mkdir(parents=True)
    rows = []
    for c in CLASSES:
        for i, f in enumerate(sorted((src / c).glob("*.png"))):
            name = f"images/scan-{len(rows) * 7 % (per_class * 3):03d}.png"  # shuffled: names say nothing
            shutil.copy(f, project / name)
            patient = i * patients // per_class
            split = "Testing" if patient >= patients - test_patients else ""
            rows.append((c, name, f"p{patient}", split))
    with open(project / "labels.csv", "w", newline="") as f:
        csv.writer(f).writerows([(" Label", "PATH", "group", "Split"), *rows])
    return project, {name: (c, g, s) for c, name, g, s in rows}


def _split_csv(run) -> dict[str, str]:
    with open(run / "split.csv", newline="") as f:
        return {row["path"]: row["split"] for row in csv.DictReader(f)}


def test_scan_reads_classes_splits_and_groups_from_the_label_file(tmp_path):
    project, rows = _project(tmp_path)
    ds = scan(project / "labels.csv")
    assert ds.root == project.resolve() and ds.source == (project / "labels.csv").resolve()
    assert ds.classes == list(CLASSES) and set(ds.splits) == {"train", "test"}
    assert len(ds.splits["train"]) == 24 and len(ds.splits["test"]) == 6
    for split, samples in ds.splits.items():
        for s in samples:
            c, g, given = rows[ds.rel(s.path)]
            assert (ds.classes[s.label], "test" if given else "train", ds.groups[ds.rel(s.path)]) == (c, split, g)
    # Outputs stay out of the CSV and the image folder, not out of the project folder that holds them.
    assert protected_paths(ds) == protected_paths(project / "labels.csv")
    assert set(protected_paths(ds)) == {(project / "labels.csv").resolve(), (project / "images").resolve()}


@pytest.mark.slow
def test_a_label_file_trains_tests_predicts_and_resumes(tmp_path):
    project, rows = _project(tmp_path)
    labels, run = project / "labels.csv", tmp_path / "run"
    before_images = tree_hash(project / "images")
    run_cli("train", "--data", labels, *FAST, "--set", "split=groups", "--set", "block_size=1", "--out", run)
    side = _split_csv(run)
    assert not any(rows[p][2] for p in side)  # no test row is trained or validated on
    assert len(side) == 24 and {"train", "val"} == set(side.values())
    by_group: dict[str, set] = {}
    for p, s in side.items():
        by_group.setdefault(rows[p][1], set()).add(s)
    assert all(len(s) == 1 for s in by_group.values())  # every patient on one side of train/val

    result = _json(run_cli("test", run, "--json").output)
    assert result["n_images"] == 6 and result["data"] == str(labels.resolve())
    again = run_cli("test", run, "--data", labels, "--json").output  # the same test rows, named by --data
    assert "already evaluated 1 time" in again and _json(again)["evaluation_number"] == 2
    assert [p.name.rsplit("-", 1)[0] for p in (run / "tests").iterdir()] == ["labels"]

    printed = run_cli("predict", run, labels, "--csv").output.splitlines()
    listed = [line.split(",")[0] for line in printed[1:]]
    assert listed == [str(project / p) for p, (_, _, s) in rows.items() if s]  # the test rows, in file order

    # Resume: the run's split.csv, never the label file read again (it may have changed since).
    text = labels.read_text()
    with open(labels, "a", newline="") as f:
        csv.writer(f).writerow(["circle", "images/scan-000.png", "p9", "test"])  # listed twice now: broken
    (run / "last.pt").unlink()  # as if killed during epoch 1
    run_cli("train", "--resume", run, "-q")
    assert len(run_folder.read_history(run / "history.csv")) == 1 and _split_csv(run) == side
    assert "labels.csv:32: images/scan-000.png is listed twice" in one_line_error("test", run)
    labels.write_text(text)
    assert sorted(p.name for p in project.iterdir()) == ["images", "labels.csv"]
    assert tree_hash(project / "images") == before_images


def _json(output: str) -> dict:
    return json.loads(output[output.index("{") :])  # after any warning lines


def test_inspect_and_audit_show_the_label_files_classes_and_splits(tmp_path):
    project, _ = _project(tmp_path)
    labels = project / "labels.csv"
    before = tree_hash(project)
    text = run_cli("data", "inspect", labels).output
    assert f"labels and splits from {labels.resolve()}" in text
    report = json.loads(run_cli("data", "inspect", labels, "--json", "--out", project / "look").output)
    assert report["labels"] == str(labels.resolve()) and report["classes"] == list(CLASSES)
    assert {s: r["count"] for s, r in report["splits"].items()} == {"train": 24, "test": 6}
    assert report["splits"]["test"]["classes"]["square"]["count"] == 2
    audit = run_cli("data", "audit", labels).output
    assert "(train 24, test 6)" in audit and "labels and splits from" in audit
    assert "inside the dataset" in one_line_error("data", "inspect", labels, "--out", project / "images" / "x")
    assert "inside the dataset" in one_line_error("data", "audit", labels, "--out", project / "images")
    assert "inside the dataset" in one_line_error("data", "audit", labels, "--out", labels)
    shutil.rmtree(project / "look")  # beside the label file is allowed: the project folder is not the data set
    assert tree_hash(project) == before


def test_unusable_listed_files_are_skipped_as_in_a_folder(tmp_path):
    project, _ = _project(tmp_path)
    labels = project / "labels.csv"
    (project / "images" / "empty.png").write_bytes(b"")
    (project / "images" / "notes.txt").write_text("x")
    with open(labels, "a", newline="") as f:
        csv.writer(f).writerows([("square", "images/empty.png", "p0", ""), ("circle", "images/notes.txt", "", "test")])
    with pytest.warns(UserWarning, match="skipped 2 unusable"):
        ds = scan(labels)
    assert len(ds.splits["train"]) == 24 and len(ds.splits["test"]) == 6
    report = json.loads(run_cli("data", "inspect", labels, "--json").output)
    assert [k["reason"] for k in report["splits"]["train"]["skipped"]] == ["empty file"]
    assert [k["reason"] for k in report["splits"]["test"]["skipped"]] == ["not an image file"]
    assert "unusable file(s) (--strict)" in one_line_error(
        "train", "--data", labels, "--strict", "--out", tmp_path / "r"
    )


def _write(path, *lines):
    path.write_text("\n".join(lines) + "\n")
    return path


def test_every_problem_with_a_label_file_is_one_line_naming_file_and_line(tmp_path):
    project, _ = _project(tmp_path)
    bad = project / "bad.csv"
    a, b = "images/scan-000.png", "images/scan-001.png"
    cases = {
        ("path,class", f"{a},circle"): r"bad.csv:1: a label file needs the columns path and label",
        ("path,label,split", f"{a},circle,", f"{b},square,holdout"): r"bad.csv:3: unknown split 'holdout'",
        ("path,label", f"{a},circle", "images/nope.png,square"): r"bad.csv:3: no such file: images/nope.png",
        (
            "path,label",
            f"{a},circle",
            f"{b},square",
            f"./{a},square",
        ): r"bad.csv:4: images/scan-000.png is listed twice",
        ("path,label", f"{a},circle", f"{b},circle"): r"bad.csv: only one class \(circle\)",
        (
            "path,label,split",
            f"{a},circle,",
            f"{b},square,",
            "images/scan-002.png,star,test",
        ): r"bad.csv:4: class 'star'",
        ("path,label,split,group", f"{a},circle,,p1", f"{b},square,test,p1"): r"bad.csv:3: group 'p1' has test rows",
        ("path,label", f"{a},circle", "images/scan, 1.png,square"): r"bad.csv:3: more fields than columns",
        ("path,label", f"{a},circle", f"{b},"): r"bad.csv:3: images/scan-001.png has no label",
        ("path,label",): r"bad.csv lists no images",
        ("path,label", "images,circle"): r"bad.csv:2: images is a folder",
    }
    for lines, message in cases.items():
        _write(bad, *lines)
        for command in (("data", "inspect", bad), ("train", "--data", bad, "--out", tmp_path / "r")):
            line = one_line_error(*command)
            assert re.search(message, line), (lines, line)
    assert "label file does not exist" in one_line_error("data", "inspect", project / "missing.csv")
    assert not (tmp_path / "r").exists()
    # split = groups needs the group column (or a group_file); a label file has no val folder to replace.
    _write(bad, "path,label", *(f"images/scan-{i:03d}.png,{CLASSES[i % 3]}" for i in range(9)))
    assert "bad.csv has no group column" in one_line_error(
        "train", "--data", bad, *FAST, "--set", "split=groups", "--out", tmp_path / "r"
    )
    with pytest.raises(UserError, match="no test rows"):  # what `cnnlab predict RUN bad.csv` reads
        expand_paths([bad])


@pytest.mark.slow
def test_cv_folds_by_the_group_column_and_never_splits_a_patient(tmp_path):
    project, rows = _project(tmp_path, per_class=8, patients=4, test_patients=0)
    labels, out = project / "labels.csv", tmp_path / "cv"
    args = ["cv", "--data", labels, "--out", out, "--epochs", 1, "--n-folds", 4]
    args += ["--set", "model=mlp", "--set", "image_size=16", "--set", "batch_size=8", "--set", "split=groups"]
    run_cli(*args)
    result = json.loads((out / "cv.json").read_text())
    assert [f["fold"] for f in result["folds"]] == ["1", "2", "3", "4"]
    assert sum(map(sum, result["confusion"])) == len(rows)
    for k in "1234":
        with open(out / "folds" / f"fold-{k}.csv", newline="") as f:
            sides: dict[str, set] = {}
            for row in csv.DictReader(f):
                sides.setdefault(rows[row["path"]][1], set()).add(row["split"])
        assert all(len(s) == 1 for s in sides.values())  # no patient on both sides of any fold
        assert list(sides.values()).count({"test"}) == 1 and list(sides.values()).count({"val"}) == 1
    assert "--set split=groups" in one_line_error(*args[:-2])
    assert "inside the dataset" in one_line_error(*args[:4], project / "images" / "cv", *args[5:])
