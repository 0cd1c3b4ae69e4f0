"""Data-parallel training (training/distributed.py): 2 gloo ranks x batch B/2 train what 1 process x batch B
trains, rank 0 alone writes, and a run whose rank is killed with kill -9 resumes to the uninterrupted history."""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import cnnlab_env, make_shapes, one_line_error

from cnnlab.training.distributed import (
    SOLO,
    GlobalBatchNorm2d,
    Ranks,
    synchronised_batchnorm,
    torchrun_args,
)
from cnnlab.training.run_folder import TIMING_COLUMNS

# Everything that draws or reduces: BatchNorm, flips and rotation, noise, mixup (partners across ranks), class
# weights on unequal classes (a weighted mean's denominator over ranks), label smoothing. No dropout: its masks
# are drawn per rank. SGD, not Adam: Adam divides by the root of each gradient's running square, which turns a
# last-bit difference in a near-zero gradient into a full step (seen: 2e-4 after 4 epochs with AVX2 kernels,
# against 1e-7 with SGD on every kernel set), and the test is about the computation, not that amplification.
DETERMINISTIC = [
    *("--model", "resnet", "--image-size", "32", "--batch-size", "16", "--epochs", "4"),
    *("--set", "width=8", "--set", "depth=1", "--set", "dropout=0", "--set", "threads=1", "--set", "precision=fp32"),
    *("--set", "hflip=true", "--set", "rotate=10", "--set", "noise=0.05", "--set", "mixup=0.2"),
    *("--set", "imbalance=weights", "--set", "label_smoothing=0.1", "--optimizer", "sgd", "--lr", "0.02", "-q"),
]


def cli(*args, check: bool = True, **kw) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        [sys.executable, "-m", "cnnlab", *map(str, args)], env=cnnlab_env(), capture_output=True, text=True, **kw
    )
    assert not check or proc.returncode == 0, proc.stderr[-3000:]
    return proc


def history(run: Path) -> list[dict]:
    with open(run / "history.csv", newline="") as f:
        return [{k: float(v) for k, v in r.items() if k not in TIMING_COLUMNS} for r in csv.DictReader(f)]


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    root = make_shapes(tmp_path_factory.mktemp("ddp") / "shapes", splits=(("train", 24),), size=(40, 40), seed=3)
    for f in sorted((root / "train" / "circle").iterdir())[:10]:  # unequal classes: class weights differ
        f.unlink()
    return root


@pytest.fixture(scope="module")
def runs(data, tmp_path_factory) -> dict[str, Path]:
    """The same config trained by one process (batch 16) and by 2 gloo ranks (8 each)."""
    out = tmp_path_factory.mktemp("ddp-runs")
    cli("train", "--data", data, *DETERMINISTIC, "--out", out / "one")
    cli("train", "--procs", 2, "--data", data, *DETERMINISTIC, "--out", out / "two")
    return {"one": out / "one", "two": out / "two", "root": out}


@pytest.mark.slow
def test_two_ranks_train_what_one_process_trains(runs):
    one, two = history(runs["one"]), history(runs["two"])
    assert len(one) == len(two) == 4
    for a, b in zip(one, two, strict=True):
        for key in ("train_loss", "train_f1", "val_loss", "val_f1"):
            assert b[key] == pytest.approx(a[key], rel=1e-4, abs=1e-9), (a["epoch"], key)
    # rank 0 alone wrote the folder (one config, one split, one set of checkpoints)
    names = sorted(p.name for p in runs["two"].iterdir())
    assert {"config.toml", "split.csv", "history.csv", "best.pt", "last.pt"} <= set(names)
    assert (runs["one"] / "split.csv").read_text() == (runs["two"] / "split.csv").read_text()


def _rank_pid(launcher: int, rank: int) -> int | None:
    """The pid of the worker of `rank` that `launcher` (a `cnnlab train --procs` process) started."""
    for proc in Path("/proc").iterdir():
        try:
            stat = (proc / "stat").read_text().rsplit(")", 1)[1].split()
            env = (proc / "environ").read_bytes().split(b"\0")
        except (OSError, IndexError):
            continue
        if int(stat[1]) == launcher and f"RANK={rank}".encode() in env:
            return int(proc.name)
    return None


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="finds the rank's process in /proc")
def test_kill_9_of_a_rank_then_resume_gives_the_uninterrupted_history(data, runs):
    run = runs["root"] / "killed"
    cmd = [sys.executable, "-m", "cnnlab", "train", "--procs", "2", "--data", str(data), *DETERMINISTIC]
    launcher = subprocess.Popen([*cmd, "--out", str(run)], env=cnnlab_env(), stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not (run / "history.csv").is_file() and launcher.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)  # epoch 1 is written
    pid = _rank_pid(launcher.pid, 1)
    assert pid is not None and launcher.poll() is None, "the run ended before a rank could be killed"
    os.kill(pid, signal.SIGKILL)
    err = launcher.communicate(timeout=120)[1]
    assert launcher.returncode != 0
    assert "Traceback" not in err, err[-3000:]
    assert "error: rank 1 was killed by SIGKILL" in err, err[-3000:]
    assert 1 <= len(history(run)) < 4  # interrupted, its finished epochs kept
    resumed = cli("train", "--resume", run, "--procs", 2)
    assert "resuming" in resumed.stdout + resumed.stderr
    assert history(run) == history(runs["two"])


# ------------------------------------------------------------------------------------------------- units


def test_shares_cover_a_batch_once_in_order():
    for n in (0, 1, 5, 16, 17):
        for world in (1, 2, 3, 4):
            parts = [list(range(n))[Ranks(r, world).share(n)] for r in range(world)]
            assert sum(parts, []) == list(range(n))
            assert max(map(len, parts)) - min(map(len, parts)) <= 1
    assert SOLO.share(7) == slice(0, 7) and SOLO.main and SOLO.world == 1
    t = torch.ones(3)
    assert SOLO.sum(t) is t and SOLO.gather(t, 3) is t and SOLO.broadcast("x") == "x"


def test_torchrun_options_for_one_and_several_machines():
    assert torchrun_args(2, 1, None, None) == ["--nproc-per-node=2", "--nnodes=1", "--standalone"]
    multi = torchrun_args(4, 2, 1, "node0:29500")
    assert "--rdzv-endpoint=node0:29500" in multi and "--rdzv-backend=c10d" in multi and "--node-rank=1" in multi


def test_launcher_errors_are_one_line(shapes, tmp_path):
    assert "--procs and --nnodes must be at least 1" in one_line_error(
        "train", "--procs", "0", "--data", shapes, "--out", tmp_path / "r"
    )
    assert "--rdzv-endpoint" in one_line_error(
        "train", "--procs", "2", "--nnodes", "2", "--data", shapes, "--out", tmp_path / "r"
    )
    assert not (tmp_path / "r").exists()


def test_global_batchnorm_is_batchnorm_in_one_process():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.ReLU())
    reference = torch.nn.Sequential(*[m for m in model])  # the same modules, before the conversion
    x = torch.randn(6, 3, 8, 8)
    before = reference(x)
    synced = synchronised_batchnorm(model, torch.device("cpu"))
    assert type(synced[1]) is GlobalBatchNorm2d and set(synced.state_dict()) == set(reference.state_dict())
    assert torch.allclose(synced(x), before, atol=1e-6)  # no process group: BatchNorm2d's own forward
