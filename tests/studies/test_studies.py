"""Studies: one command per comparison, resumable, with summary.csv, overlay plots and reports."""

from __future__ import annotations

import csv
import json
import os

import pytest
from conftest import one_line_error, run_cli

from cnnlab.studies.reports import aggregate, conclusions

SMALL = ["--epochs", 2, "--set", "image_size=32", "--set", "batch_size=16"]


def _rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_regularization_study_writes_summary_plots_and_reports(eclipse, tmp_path):
    out = tmp_path / "S"
    run_cli("study", "regularization", "--data", eclipse, "--out", out, *SMALL)
    rows = _rows(out / "summary.csv")
    assert [r["run"] for r in rows] == ["simple", "simple-bn", "simple-dropout", "simple-bn-dropout"]
    for col in (
        "run",
        "seed",
        "best_val_f1",
        "best_epoch",
        "final_train_loss",
        "final_val_loss",
        "epochs",
        "wall_s",
        "images_per_s",
    ):
        assert rows[0][col] != ""
    assert (out / "overlay.png").stat().st_size > 5000
    md, html = (out / "report.md").read_text(), (out / "report.html").read_text()
    assert "![regularization" in md and "Best by validation macro-F1" in md
    assert "data:image/png;base64," in html and "<table>" in html

    # Rerunning resumes: finished runs are read back, not retrained.
    stamp = (out / "runs" / "simple" / "last.pt").stat().st_mtime_ns
    run_cli("study", "regularization", "--data", eclipse, "--out", out, *SMALL)
    assert (out / "runs" / "simple" / "last.pt").stat().st_mtime_ns == stamp
    # ...and a changed setting is refused rather than silently mixed in.
    line = one_line_error(
        "study",
        "regularization",
        "--data",
        eclipse,
        "--out",
        out,
        "--epochs",
        3,
        "--set",
        "image_size=32",
        "--set",
        "batch_size=16",
    )
    assert "another config (epochs differ)" in line


def test_toml_study_with_seeds_and_parallel_jobs(eclipse, tmp_path):
    spec = tmp_path / "mine.toml"
    spec.write_text(
        'name = "mine"\nquestion = "tanh or relu?"\n[base]\nmodel = "simple-bn"\n'
        '[runs.relu]\nactivation = "relu"\n[runs.tanh]\nactivation = "tanh"\n'
    )
    out = tmp_path / "S"
    run_cli("study", spec, "--data", eclipse, "--out", out, "--seeds", 2, "--jobs", 2, *SMALL)
    rows = _rows(out / "summary.csv")
    assert sorted((r["run"], r["seed"]) for r in rows) == [("relu", "0"), ("relu", "1"), ("tanh", "0"), ("tanh", "1")]
    assert "±" in (out / "report.md").read_text()
    cfg = (out / "runs" / "tanh-seed1" / "config.toml").read_text()
    threads = max(1, (os.cpu_count() or 1) // 2)  # the cores shared between the two jobs
    assert 'model = "simple-bn"' in cfg and f"threads = {threads}\n" in cfg and "seed = 1" in cfg


def test_param_sweep_and_errors(eclipse, tmp_path):
    out = tmp_path / "S"
    run_cli(
        "study",
        "lr",
        "--data",
        eclipse,
        "--out",
        out,
        "--param",
        "batch_size=8,16",
        "--epochs",
        1,
        "--set",
        "image_size=32",
    )
    assert [r["run"] for r in _rows(out / "summary.csv")] == ["batch_size=8", "batch_size=16"]
    assert "did you mean 'regularization'" in one_line_error("study", "regularisation", "--data", eclipse, "--out", out)
    assert "unknown config key" in one_line_error(
        "study", "lr", "--data", eclipse, "--out", out, "--param", "btach_size=1,2"
    )
    bad = tmp_path / "bad.toml"
    bad.write_text("[runs.a]\nlearning_rate = 3\n")
    assert "unknown config key 'learning_rate'" in one_line_error("study", bad, "--data", eclipse, "--out", out)


def test_every_run_of_a_study_is_checked_before_any_trains(eclipse, tmp_path):
    out = tmp_path / "S"
    line = one_line_error("study", "lr", "--data", eclipse, "--out", out, "--param", "scheduler=plateau,cosin")
    assert "cosin" in line and "did you mean 'cosine'" in line and not out.exists()
    # The assignment's last stage adds a plateau scheduler, which refuses warm-up: found before stage one trains.
    line = one_line_error("study", "assignment", "--data", eclipse, "--out", out, "--set", "warmup_epochs=1")
    assert "overfitting" in line and "plateau" in line and not out.exists()
    line = one_line_error("study", "regularization", "--data", tmp_path / "missing", "--out", out)
    assert "dataset path does not exist" in line and not out.exists()


def test_conclusions_say_when_a_difference_is_noise():
    base = {
        "best_val_acc": 0.9,
        "best_train_f1": 0.95,
        "final_train_f1": 0.97,
        "final_val_f1": 0.9,
        "val_f1_tail_std": 0.01,
        "best_epoch": 5,
        "epochs": 10,
        "images_per_s": 100.0,
        "wall_s": 10.0,
    }
    results = [{**base, "run": "a", "seed": s, "best_val_f1": v} for s, v in enumerate([0.90, 0.92, 0.88])]
    results += [{**base, "run": "b", "seed": s, "best_val_f1": v} for s, v in enumerate([0.89, 0.91, 0.87])]
    text = " ".join(conclusions(aggregate(results)))
    assert "**a** with 0.9000 ± 0.0200 (mean over 3 seeds)" in text and "within the noise" in text
    results = [{**r, "best_val_f1": r["best_val_f1"] - (0.3 if r["run"] == "b" else 0)} for r in results]
    assert "larger than twice the standard error" in " ".join(conclusions(aggregate(results)))


@pytest.mark.slow
def test_assignment_chains_winners_and_tests_once(eclipse, tmp_path):
    out = tmp_path / "A"
    run_cli(
        "study",
        "assignment",
        "--data",
        eclipse,
        "--out",
        out,
        "--epochs",
        1,
        "--set",
        "image_size=32",
        "--set",
        "batch_size=16",
    )
    for stage in ("regularization", "optimizers", "lr", "overfitting"):
        assert len(_rows(out / stage / "summary.csv")) == 4
    md = (out / "report.md").read_text()
    assert "Final choice, scored once on the test split" in md and "test macro-F1" in md
    tested = list(out.rglob("evaluations.json"))
    assert len(tested) == 1 and len(json.loads(tested[0].read_text())) == 1
    # Rerunning the finished assignment redraws the report but does not score the test split again.
    run_cli(
        "study",
        "assignment",
        "--data",
        eclipse,
        "--out",
        out,
        "--epochs",
        1,
        "--set",
        "image_size=32",
        "--set",
        "batch_size=16",
    )
    assert len(json.loads(tested[0].read_text())) == 1
    # The optimizers stage ran on the regularization winner...
    reg = {r["run"]: float(r["best_val_f1"]) for r in _rows(out / "regularization" / "summary.csv")}
    winner = max(reg, key=reg.get)
    assert f'model = "{winner}"' in (out / "optimizers" / "runs" / "sgd" / "config.toml").read_text()
    # ...and its adam run, the same config as that winner, was not trained twice.
    adam = next(r for r in _rows(out / "optimizers" / "summary.csv") if r["run"] == "adam")
    assert adam["out"].endswith(f"regularization/runs/{winner}") and not (out / "optimizers" / "runs" / "adam").exists()
