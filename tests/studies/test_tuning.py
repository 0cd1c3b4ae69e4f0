"""The learning-rate range test (`cnnlab lr-find`) and the Optuna search (`cnnlab tune`): suggestions that train,
pruning that stops the hopeless trials, reports, and searches that resume without training anything twice."""

from __future__ import annotations

import csv
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import cnnlab_env, make_shapes, one_line_error, run_cli

import cnnlab
from cnnlab.config import load_recipe
from cnnlab.studies.tuning import Param, Pruned, parse_param, pruning_check
from cnnlab.training.run_folder import read_history

pytest.importorskip("optuna")

# Three shapes, 30 training images each: Adam at 1e-4 .. 1e-2 learns them in four epochs, 1e-1 and above does not.
SMALL = ["--set", "image_size=32", "--set", "batch_size=16", "--set", "model=simple-bn"]


@pytest.fixture(scope="module")
def shapes30(tmp_path_factory) -> Path:
    return make_shapes(tmp_path_factory.mktemp("tune") / "d", splits=(("train", 30), ("test", 4)), seed=3)


def _trials(out: Path) -> list[dict]:
    with open(out / "trials.csv", newline="") as f:
        return list(csv.DictReader(f))


@pytest.mark.slow
def test_lr_find_suggests_a_rate_a_short_grid_finds_trainable(shapes30, tmp_path):
    rng = torch.get_rng_state()
    out = tmp_path / "lrf"
    line = run_cli("lr-find", "--data", shapes30, "--model", "simple-bn", "--image-size", 32, "--batch-size", 16,
                   "--steps", 100, "--out", out, "-q").output  # fmt: skip
    result = json.loads((out / "lr_find.json").read_text())
    assert (out / "lr_find.png").is_file() and "suggested lr" in line
    assert torch.equal(torch.get_rng_state(), rng)  # nothing of a later run depends on the test
    assert len(result["lrs"]) == len(result["losses"]) == result["steps"] <= 100
    trainable = []
    for lr in (1e-5, 1e-4, 1e-3, 1e-2, 1e-1, 1.0):
        run = cnnlab.train(shapes30, out=tmp_path / f"lr{lr}", model="simple-bn", image_size=32, batch_size=16,
                           epochs=4, lr=lr, progress=False, log=lambda *a: None)  # fmt: skip
        last = run.history.iloc[-1]
        if math.isfinite(last["train_loss"]) and last["val_acc"] >= 0.75:
            trainable.append(lr)
    assert trainable and trainable[-1] < 1.0 and trainable[0] > 1e-5  # the grid has both kinds
    assert min(trainable) <= result["suggested_lr"] <= max(trainable), (result["suggested_lr"], trainable)


def test_lr_find_errors_are_one_line(shapes30, tmp_path):
    assert "start_lr < end_lr" in one_line_error(
        "lr-find", "--data", shapes30, "--start-lr", 1, "--end-lr", 0.1, "--out", tmp_path / "f"
    )
    assert "at least 20 steps" in one_line_error("lr-find", "--data", shapes30, "--steps", 5, "--out", tmp_path / "f")
    assert "unknown model" in one_line_error("lr-find", "--data", shapes30, "--model", "nope", "--out", tmp_path / "f")


@pytest.mark.slow
def test_tune_prunes_hopeless_trials_reports_and_reruns_without_training(shapes30, tmp_path):
    out = tmp_path / "T"
    cmd = ["tune", "--data", shapes30, "--out", out, "--trials", 8, "--epochs", 4, "--param", "lr=log:1e-4:1e-1"]
    cmd += [*SMALL, "--jobs", 1]
    run_cli(*cmd)
    trials = _trials(out)
    assert len(trials) == 8 and {t["state"] for t in trials} == {"complete", "pruned"}
    for t in trials:  # a pruned trial stopped early: fewer rows than the epochs asked for
        rows = read_history(Path(t["out"]) / "history.csv")
        assert len(rows) == int(t["epochs"]) and (len(rows) < 4) == (t["state"] == "pruned")
    results = json.loads((out / "results.json").read_text())
    best = results["best"]
    assert best["value"] == max(float(t["best_val_f1"]) for t in trials if t["state"] == "complete")
    assert (out / "report.md").is_file() and (out / "report.html").is_file() and (out / "history.png").is_file()
    recipe = load_recipe(str(out / "best.toml"))  # what `cnnlab train --config best.toml` reads
    assert recipe.optim.lr == pytest.approx(best["params"]["lr"]) and recipe.train.epochs == 4
    assert not list(out.rglob("evaluations.json")) and not list(out.rglob("tests"))  # the test split: never scored
    stamps = {p: p.stat().st_mtime_ns for p in out.rglob("last.pt")}
    again = run_cli(*cmd).output
    assert {p: p.stat().st_mtime_ns for p in out.rglob("last.pt")} == stamps and "epoch 1/4" not in again
    assert _trials(out) == trials
    run_cli(*cmd, "--lang", "ru")  # the report again, in Russian, from the storage and the run folders alone
    assert "Поиск" in (out / "report.md").read_text() and _trials(out) == trials
    # The same search with other settings is refused; more trials continue it.
    line = one_line_error(*cmd[:-2], "--param", "optimizer=adam,sgd", "--jobs", 1)
    assert "other settings (params differ)" in line
    run_cli(*cmd[:6], 10, *cmd[7:])
    assert len(_trials(out)) == 10 and {p: p.stat().st_mtime_ns for p in stamps} == stamps


def test_search_spaces_are_parsed_and_checked(shapes30, tmp_path):
    assert parse_param("lr=log:1e-4:1e-1") == Param("lr", "float", 1e-4, 1e-1, log=True)
    assert parse_param("batch_size=log:16:256") == Param("batch_size", "int", 16, 256, log=True)
    assert parse_param("dropout=0.0:0.5") == Param("dropout", "float", 0.0, 0.5)
    assert parse_param("width=16:64") == Param("width", "int", 16, 64)
    assert parse_param("optimizer=adam,sgd,rmsprop") == Param("optimizer", "choice", choices=("adam", "sgd", "rmsprop"))
    base = ["tune", "--data", shapes30, "--out", tmp_path / "T", "--trials", 2]
    for spec, words in [
        ("lr=0.1:0.01", "LOW < HIGH"),
        ("lr=log:0:1", "LOW > 0 for log"),
        ("lr=abc", "a range is LOW:HIGH"),
        ("lrr=log:1e-4:1e-1", "did you mean 'lr'"),
        ("optimizer=adam,sggd", "sggd"),
        ("optimizer=0:1", "a range needs a numeric field"),
        ("dropout=0.0:1.5", "dropout must be in"),
        ("width=16.5:64", "integer field"),
    ]:
        assert words in one_line_error(*base, "--param", spec, "--jobs", 1), spec
    assert not (tmp_path / "T").exists()
    assert "searched twice" in one_line_error(*base, "--param", "lr=0.1,0.2", "--param", "lr=0.3,0.4", "--jobs", 1)


@pytest.mark.slow
def test_a_search_killed_mid_trial_continues_to_the_uninterrupted_search(shapes30, tmp_path):
    cmd = ["tune", "--data", str(shapes30), "--trials", "4", "--epochs", "6", "--param", "lr=log:1e-4:1e-1"]
    cmd += [*SMALL, "--jobs", "1", "--set", "seed=2"]
    run_cli(*cmd, "--out", tmp_path / "full")
    cut = tmp_path / "cut"
    proc = subprocess.Popen([sys.executable, "-m", "cnnlab", *cmd, "--out", str(cut)], env=cnnlab_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    history = cut / "trials" / "trial-001" / "history.csv"
    deadline = time.time() + 120
    while time.time() < deadline and not (history.is_file() and len(read_history(history)) >= 2):
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert 2 <= len(read_history(history)) < 6  # trial 1 was cut off in the middle
    run_cli(*cmd, "--out", cut)

    def strip(rows):
        return [{k: v for k, v in r.items() if k not in ("out", "seconds")} for r in rows]

    assert strip(_trials(cut)) == strip(_trials(tmp_path / "full"))
    for n in range(4):
        a, b = (read_history(p / "trials" / f"trial-{n:03d}" / "history.csv") for p in (cut, tmp_path / "full"))
        assert [r["val_f1"] for r in a] == [r["val_f1"] for r in b]


def test_pruners_judge_against_the_basis_alone():
    # Three finished trials at 0.8 per epoch; a trial at 0.3 is stopped after the warm-up (a quarter of 12
    # epochs: from epoch 4 on) by the median and by successive halving (its first rung at epoch 4), never by none.
    basis = [{"number": n, "state": "COMPLETE", "values": {str(e): 0.8 for e in range(1, 13)}} for n in range(3)]
    train = load_recipe("assignment").train
    train.epochs, train.patience = 12, 0
    for pruner, stopped_at in (("median", 4), ("halving", 4), ("none", None)):
        check = pruning_check(pruner, basis, train)
        at = None
        for epoch in range(1, 13):
            try:
                check({"epoch": epoch, "val_f1": 0.3, "val_loss": 1.0, "val_acc": 0.3, "train_loss": 1.0})
            except Pruned:
                at = epoch
                break
        assert at == stopped_at, pruner
    # The epoch that ends the run anyway (here early stopping at epoch 4, two epochs without improvement) is never
    # pruned: the trial has finished, and pruning it would drop a finished trial from the median's basis.
    train.patience = 2
    check = pruning_check("median", basis, train)
    for epoch, f1 in zip(range(1, 5), (0.30, 0.31, 0.31, 0.31), strict=True):
        check({"epoch": epoch, "val_f1": f1, "val_loss": 1.0, "val_acc": f1, "train_loss": 1.0})
    train.patience = 0
    with pytest.raises(Pruned):  # without early stopping, epoch 4 is judged and stopped
        check = pruning_check("median", basis, train)
        for epoch, f1 in zip(range(1, 5), (0.30, 0.31, 0.31, 0.31), strict=True):
            check({"epoch": epoch, "val_f1": f1, "val_loss": 1.0, "val_acc": f1, "train_loss": 1.0})
