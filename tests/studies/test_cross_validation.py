"""Cross-validation on given folds: every fold scored once, never trained or validated on."""

from __future__ import annotations

import csv
import json

from conftest import make_shapes, one_line_error, run_cli, tree_hash

import cnnlab


def _folds(root, n_folds=3):
    """A class tree one folder down (images/<class>/) and a folds file assigning files to folds in turn."""
    make_shapes(root / "images", splits=(("", 9),))
    rows = [
        (str(p.relative_to(root)), p.parent.name, str(i % n_folds + 1))
        for i, p in enumerate(sorted((root / "images").rglob("*.png")))
    ]
    with open(root / "folds.csv", "w", newline="") as f:
        csv.writer(f).writerows([("path", "class", "fold"), *rows])
    return {r[0]: r[2] for r in rows}


def test_cv_scores_each_fold_once_on_a_run_that_never_saw_it(tmp_path):
    data = tmp_path / "data"
    fold_of = _folds(data)
    before, out = tree_hash(data), tmp_path / "cv"
    args = [
        "cv",
        "--data",
        data,
        "--folds",
        data / "folds.csv",
        "--out",
        out,
        "--epochs",
        1,
        "--set",
        "model=mlp",
        "--set",
        "image_size=16",
        "--set",
        "batch_size=8",
    ]
    run_cli(*args)
    result = json.loads((out / "cv.json").read_text())
    assert [f["fold"] for f in result["folds"]] == ["1", "2", "3"]
    assert {
        "mean_accuracy",
        "std_accuracy",
        "mean_macro_f1",
        "std_macro_f1",
        "confusion",
        "command",
        "machine",
        "date",
    } <= set(result)
    assert sum(map(sum, result["confusion"])) == len(fold_of)
    for k, val in (("1", "2"), ("2", "3"), ("3", "1")):
        with open(out / f"fold-{k}" / "split.csv", newline="") as f:
            seen = {row["path"]: row["split"] for row in csv.DictReader(f)}
        assert {fold_of[p] for p, s in seen.items() if s == "val"} == {val}  # the next fold validates
        assert k not in {fold_of[p] for p in seen}  # the scored fold is never trained or validated on
        (test,) = cnnlab.load(out / f"fold-{k}").tests.values()
        assert test["n_images"] == sum(1 for f in fold_of.values() if f == k)
    assert (out / "report.md").is_file() and (out / "confusion.png").is_file()
    # A rerun reads every fold's single test back.
    run_cli(*args)
    for k in "123":
        assert len(json.loads((out / f"fold-{k}" / "evaluations.json").read_text())) == 1
    assert tree_hash(data) == before


def test_cv_errors_are_one_line(tmp_path):
    data = tmp_path / "data"
    _folds(data, n_folds=2)
    base = ["cv", "--data", data, "--out", tmp_path / "cv", "--set", "image_size=16", "--set", "model=mlp"]
    assert "at least 3" in one_line_error(*base, "--folds", data / "folds.csv")
    assert "folds file not found" in one_line_error(*base, "--folds", data / "nope.csv")
    (data / "bad.csv").write_text("path,class\nimages/circle/img 000.png,circle\n")
    assert "needs the columns path, class, fold" in one_line_error(*base, "--folds", data / "bad.csv")
    assert "did you mean 'resnet'" in one_line_error(*base, "--folds", data / "folds.csv", "--set", "model=resnett")
    assert not (tmp_path / "cv").exists()


def test_folds_that_would_leak_are_refused(tmp_path):
    data = tmp_path / "data"
    _folds(data)
    base = [
        "cv",
        "--data",
        data,
        "--out",
        tmp_path / "cv",
        "--set",
        "image_size=16",
        "--set",
        "model=mlp",
        "--epochs",
        1,
    ]
    text = (data / "folds.csv").read_text().splitlines()
    (data / "twice.csv").write_text("\n".join(text + [text[1].rsplit(",", 1)[0] + ",2"]) + "\n")
    assert "is listed in folds" in one_line_error(*base, "--folds", data / "twice.csv")
    (data / "short.csv").write_text("\n".join(text + ["images/circle/img 001.png,circle"]) + "\n")
    assert "is empty or not a plain name" in one_line_error(*base, "--folds", data / "short.csv")
    # A second cross-validation into the same folder with other folds would mix them: refused.
    run_cli(*base, "--folds", data / "folds.csv")
    moved = [text[0]] + [line.rsplit(",", 1)[0] + "," + str(int(line.rsplit(",", 1)[1]) % 3 + 1) for line in text[1:]]
    (data / "other.csv").write_text("\n".join(moved) + "\n")
    assert "made with other folds" in one_line_error(*base, "--folds", data / "other.csv")


def test_cv_with_box_guidance_reports_each_folds_pointing_game(tmp_path):
    """With data.boxes every fold trains box-guided (on its training folds' boxes) and reports the pointing game
    of its test fold beside the baselines; a rerun reads the localisation back."""
    data = tmp_path / "data"
    fold_of = _folds(data)
    with open(data / "boxes.csv", "w", newline="") as f:  # make_shapes draws each shape within 8 px of its centre
        csv.writer(f).writerows([("path", "cx", "cy", "w", "h"), *((p, 0.5, 0.5, 0.9, 0.9) for p in fold_of)])
    out = tmp_path / "cv"
    args = ["cv", "--data", data, "--folds", data / "folds.csv", "--out", out, "--epochs", 1]
    sets = ["model=resnet", "width=4", "depth=1", "image_size=32", "batch_size=8", f"boxes={data / 'boxes.csv'}"]
    run_cli(*args, *(x for s in sets for x in ("--set", s)))
    result = json.loads((out / "cv.json").read_text())
    for f in result["folds"]:
        p = f["pointing"]
        assert p["n_images"] == sum(1 for v in fold_of.values() if v == f["fold"])
        assert 0 <= p["pointing_game"] <= 1 and {"centre", "class_prior", "random"} <= set(p["baselines"])
        assert (out / f"fold-{f['fold']}" / "boxes.json").is_file()
        assert (out / f"fold-{f['fold']}" / "explain" / "explain.json").is_file()
    assert 0 <= result["mean_pointing_game"] <= 1 and "std_pointing_game_tol" in result
    assert "pointing game" in (out / "report.md").read_text()
