"""The Python API (cnnlab.train / load / study): what a notebook drives, and the same code path as the CLI."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys

import pandas as pd
import pytest

import cnnlab
from tests.conftest import make_shapes, run_cli


def test_import_is_light_and_exports_the_api():
    # `import cnnlab` must not import torch or pandas (the CLI's --help and a notebook's first cell stay fast)
    code = "import sys, cnnlab; print(sorted(m for m in ('torch', 'pandas', 'matplotlib') if m in sys.modules))"
    assert (
        subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip() == "[]"
    )
    assert {"train", "load", "study", "UserError", "Run", "StudyResults"} <= set(cnnlab.__all__)


def test_train_load_history_plot_test_predict(shapes, tmp_path):
    r = cnnlab.train(
        data=shapes, model="simple-bn", epochs=2, image_size=32, out=tmp_path / "r", progress=False, log=lambda *a: None
    )
    assert isinstance(r.history, pd.DataFrame) and len(r.history) == 2
    assert list(r.history["epoch"]) == [1, 2]
    assert {"train_loss", "val_f1", "val_recall_circle"} <= set(r.history.columns)
    again = cnnlab.load(tmp_path / "r")
    assert again.summary == pytest.approx(r.summary)  # read back from the folder, as training returned it
    assert again.config.model.model == "simple-bn" and again.config.data.image_size == 32
    fig = again.plot()
    assert len(fig.axes) == 2 and fig.axes[0].lines
    score = again.test()
    assert score["evaluation_number"] == 1 and 0 <= score["accuracy"] <= 1
    ((name, listed),) = again.tests.items()  # RUN/tests/NAME/: the data set's name, a hash of its images
    assert listed == score and name.startswith("shapes-")
    rows = pd.read_csv(again.path / "tests" / name / "test_predictions.csv")  # each image of that one evaluation
    assert len(rows) == score["n_images"] == 12 and rows["path"].str.startswith("test/").all()
    assert (rows["class"] == rows["predicted"]).mean() == pytest.approx(score["accuracy"])
    pred = again.predict(shapes / "test" / "circle")
    assert list(pred.columns) == ["path", "label", "circle", "square", "triangle"] and len(pred) == 4
    assert pred[["circle", "square", "triangle"]].sum(axis=1).round(5).eq(1).all()
    pytest.importorskip("pytorch_grad_cam")
    sheet = again.explain(shapes / "test" / "square", out=tmp_path / "cam")
    assert sheet._repr_png_().startswith(b"\x89PNG") and len(list((tmp_path / "cam").glob("*.png"))) == 5


def test_tests_on_other_data_sets_keep_their_own_results(shapes, tmp_path):
    from cnnlab.evaluation.testing import find_test

    run = cnnlab.train(
        data=shapes,
        model="mlp",
        epochs=1,
        image_size=16,
        batch_size=8,
        out=tmp_path / "r",
        progress=False,
        log=lambda *a: None,
    )
    other = make_shapes(tmp_path / "elsewhere" / "shapes", seed=5)  # another data set of the same folder name
    manifest = tmp_path / "few.csv"
    manifest.write_text("path,class\ntest/circle/img 000.png,circle\ntest/square/img 001.png,square\n")
    first = run_cli("test", run.path, "--data", shapes).output
    second = json.loads(run_cli("test", run.path, "--data", other, "--json").output)
    third = run.test(data=str(shapes), manifest=str(manifest))
    tests = run.tests
    assert len(tests) == 3 and all(re.fullmatch(r"shapes(-few)?-[0-9a-f]{8}", name) for name in tests)
    own = next(n for n, t in tests.items() if t["data"] == str(shapes.resolve()) and t["n_images"] == 12)
    assert f"wrote {run.path / 'tests' / own / 'test.json'}" in first
    assert tests[own]["split"] == "test" and tests[own]["evaluation_number"] == 1
    assert [t for t in tests.values() if t["data"] == str(other.resolve())] == [second]
    assert tests[next(n for n in tests if "-few-" in n)] == third and third["split"] == "test-few"
    for name in tests:  # every evaluation's files, none overwritten by another
        assert {p.name for p in (run.path / "tests" / name).iterdir()} == {
            "test.json",
            "test_predictions.csv",
            "test_confusion.png",
            "test_errors.png",
        }
    assert not (run.path / "test.json").exists()
    # The same images again: counted, in the same folder.
    run_cli("test", run.path, "--data", shapes)
    assert set(run.tests) == set(tests) and run.tests[own]["evaluation_number"] == 2
    assert len(json.loads((run.path / "evaluations.json").read_text())) == 4
    assert find_test(run.path, other) == second and find_test(run.path, shapes, str(manifest)) == third
    # A run folder from before tests/: its top-level test.json is still read.
    for name in tests:
        shutil.rmtree(run.path / "tests" / name)
    (run.path / "test.json").write_text(json.dumps(second))
    assert run.tests == {"test": second} and find_test(run.path, shapes) == second


def test_train_is_the_cli_code_path(shapes, tmp_path):
    # Same config and seed through the CLI and the API: the same history, to the last digit (timing aside).
    api = cnnlab.train(
        data=shapes,
        model="simple",
        epochs=2,
        image_size=24,
        out=tmp_path / "api",
        progress=False,
        log=lambda *a: None,
        **{"train.seed": 3},
    )
    run_cli(
        "train",
        "--data",
        shapes,
        "--model",
        "simple",
        "--epochs",
        2,
        "--image-size",
        24,
        "--set",
        "seed=3",
        "--out",
        tmp_path / "cli",
        "-q",
    )
    cli = cnnlab.load(tmp_path / "cli")
    timing = ["epoch_s", "images_per_s", "data_wait_s"]
    pd.testing.assert_frame_equal(api.history.drop(columns=timing), cli.history.drop(columns=timing))


def test_errors_raise_user_error_with_the_cli_line(shapes, tmp_path):
    with pytest.raises(cnnlab.UserError, match="unknown model 'resnett'; did you mean 'resnet'"):
        cnnlab.train(data=shapes, model="resnett", out=tmp_path / "r")
    with pytest.raises(cnnlab.UserError, match="image_sise"):
        cnnlab.train(data=shapes, image_sise=32, out=tmp_path / "r")
    with pytest.raises(cnnlab.UserError, match="not a cnnlab run folder"):
        cnnlab.load(tmp_path)
    with pytest.raises(cnnlab.UserError, match="study"):
        cnnlab.study("regularisation", data=shapes, out=tmp_path / "s")
    assert not (tmp_path / "r").exists() and not (tmp_path / "s").exists()


def test_study_summary_plot_report(shapes, tmp_path):
    s = cnnlab.study("regularization", data=shapes, out=tmp_path / "s", epochs=1, image_size=32, log=lambda *a: None)
    assert len(s.summary) == 4
    assert set(s.summary["run"]) == {"simple", "simple-bn", "simple-dropout", "simple-bn-dropout"}
    assert s.summary["best_val_f1"].dtype.kind == "f"
    assert set(s.runs) == set(s.summary["run"]) and all(len(r.history) == 1 for r in s.runs.values())
    assert len(s.plot().axes[0].lines) == 8  # train and validation for each of the four runs
    html = s.report()._repr_html_()
    assert "<table>" in html and "data:image/png;base64" in html and "<body>" not in html
    assert s.tests == []
    assert s.best == s.summary.sort_values("best_val_f1")["run"].iloc[-1]
    said = s.conclusions()
    assert said[0].startswith(f"Best by validation macro-F1: **{s.best}**") and said == s.conclusions("en")
    assert any("Лучш" in line for line in s.conclusions("ru"))
    with pytest.raises(cnnlab.UserError, match="language"):
        s.conclusions("fr")


def test_study_results_found_from_another_directory(shapes, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cnnlab.study("lr", data=shapes, out="rel", epochs=1, image_size=24, param="lr=0.01,0.001", log=lambda *a: None)
    moved = tmp_path / "moved"
    (tmp_path / "rel").rename(moved)
    s = cnnlab.StudyResults(moved)
    assert all(r.path.is_relative_to(moved) for r in s.runs.values()) and len(s.runs) == 2
