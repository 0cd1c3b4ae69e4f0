"""A study's live progress: in a log, one line per finished epoch per run (naming the run) before the study ends;
on a terminal, one bar for the whole study."""

from __future__ import annotations

import re
import subprocess
import sys

from conftest import cnnlab_env

from cnnlab.config import Config
from cnnlab.studies.jobs import Job
from cnnlab.studies.live_progress import StudyProgress


def test_a_logged_study_says_every_epoch_of_every_run_before_it_ends(eclipse, tmp_path):
    log = tmp_path / "log"
    cmd = [
        sys.executable,
        "-m",
        "cnnlab",
        "study",
        "regularization",
        "--data",
        str(eclipse),
        "--out",
        str(tmp_path / "S"),
        "--epochs",
        "3",
        "--set",
        "image_size=32",
        "--jobs",
        "2",
    ]
    env = cnnlab_env()
    with open(log, "w") as f:  # `> log 2>&1`: not a terminal
        done = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, env=env, timeout=600)
    text = log.read_text()
    assert done.returncode == 0, text
    lines = text.splitlines()
    end = next(i for i, line in enumerate(lines) if line.startswith("report:"))
    for run in ("simple", "simple-bn", "simple-dropout", "simple-bn-dropout"):
        epochs = [int(m.group(1)) for line in lines[:end] if (m := re.match(rf"  {run} seed 0: epoch (\d+)/3,", line))]
        assert epochs == [1, 2, 3], (run, text)


def _job(name: str, epochs: int) -> Job:
    cfg = Config()
    cfg.train.epochs = epochs
    return Job(name, 0, cfg, f"/nowhere/{name}")


def test_the_bar_counts_every_epoch_and_the_early_stopped_rest():
    a, b = _job("a", 4), _job("b", 3)
    view = StudyProgress([a, b], log=lambda *args: None, live=True)
    view.epoch(a, {"epoch": 1, "epochs": 4, "val_f1": 0.5})
    view.epoch(b, {"epoch": 1, "epochs": 3, "val_f1": 0.25})
    view.epoch(a, {"epoch": 2, "epochs": 4, "val_f1": 0.4})
    assert view.count == 3 and view.best[id(a)] == (2, 0.5)  # the best so far, not the last
    assert view.status() == "a seed 0 epoch 2 f1 0.500; b seed 0 epoch 1 f1 0.250"
    view.done(a)  # stopped early after 2 of 4 epochs: its 2 left are counted as done
    assert view.count == 5 and view.status() == "b seed 0 epoch 1 f1 0.250"
    view.done(b)
    assert view.count == view.total == 7 and view.status() == ""
    view.close()


def test_lines_name_the_run_its_epoch_and_best_score():
    said = []
    a = _job("a", 2)
    view = StudyProgress([a], log=said.append, live=False)
    view.epoch(a, {"epoch": 1, "epochs": 2, "val_f1": 0.75})
    view.epoch(a, {"epoch": 2, "epochs": 2, "val_f1": 0.5})
    assert said == [
        "  a seed 0: epoch 1/2, val macro-F1 0.7500 (best 0.7500)",
        "  a seed 0: epoch 2/2, val macro-F1 0.5000 (best 0.7500)",
    ]
