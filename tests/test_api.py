"""The Python API (cnnlab.train / load / study): what a notebook drives, and the same code path as the CLI."""

from __future__ import annotations

import subprocess
import sys

import pandas as pd
import pytest

import cnnlab
from tests.conftest import run_cli


def test_import_is_light_and_exports_the_api():
    # `import cnnlab` must not import torch or pandas (the CLI's --help and a notebook's first cell stay fast)
    code = "import sys, cnnlab; print(sorted(m for m in ('torch', 'pandas', 'matplotlib') if m in sys.modules))"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True).stdout.strip() == "[]"
    assert {"train", "load", "study", "UserError", "Run", "StudyResults"} <= set(cnnlab.__all__)


def test_train_load_history_plot_test_predict(shapes, tmp_path):
    r = cnnlab.train(data=shapes, model="simple-bn", epochs=2, image_size=32, out=tmp_path / "r", progress=False,
                     log=lambda *a: None)
    assert isinstance(r.history, pd.DataFrame) and len(r.history) == 2
    assert list(r.history["epoch"]) == [1, 2]
    assert {"train_loss", "val_f1", "val_recall_circle"} <= set(r.history.columns)
    again = cnnlab.load(tmp_path / "r")
    assert again.summary == pytest.approx(r.summary)  # read back from the folder, as training returned it
    assert again.config.model.model == "simple-bn" and again.config.data.image_size == 32
    fig = again.plot()
    assert len(fig.axes) == 2 and fig.axes[0].lines
    score = again.test(log=lambda *a: None)
    assert score["evaluation_number"] == 1 and 0 <= score["accuracy"] <= 1
    rows = pd.read_csv(again.path / "test_predictions.csv")  # each image of that one evaluation
    assert len(rows) == score["n_images"] == 12 and rows["path"].str.startswith("test/").all()
    assert (rows["class"] == rows["predicted"]).mean() == pytest.approx(score["accuracy"])
    pred = again.predict(shapes / "test" / "circle")
    assert list(pred.columns) == ["path", "label", "circle", "square", "triangle"] and len(pred) == 4
    assert pred[["circle", "square", "triangle"]].sum(axis=1).round(5).eq(1).all()
    pytest.importorskip("pytorch_grad_cam")
    sheet = again.explain(shapes / "test" / "square", out=tmp_path / "cam")
    assert sheet._repr_png_().startswith(b"\x89PNG") and len(list((tmp_path / "cam").glob("*.png"))) == 5


def test_train_is_the_cli_code_path(shapes, tmp_path):
    # Same config and seed through the CLI and the API: the same history, to the last digit (timing aside).
    api = cnnlab.train(data=shapes, model="simple", epochs=2, image_size=24, out=tmp_path / "api", progress=False,
                       log=lambda *a: None, **{"train.seed": 3})
    run_cli("train", "--data", shapes, "--model", "simple", "--epochs", 2, "--image-size", 24, "--set", "seed=3",
            "--out", tmp_path / "cli", "-q")
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
    s = cnnlab.study("regularization", data=shapes, out=tmp_path / "s", epochs=1, image_size=32,
                     log=lambda *a: None)
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
