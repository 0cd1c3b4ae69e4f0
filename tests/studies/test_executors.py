"""Executors: a study on Ray gives the local executor's results, a run whose worker dies resumes, user errors
come back once, and without Ray installed `--executor ray` is one clear line."""

from __future__ import annotations

import csv
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from conftest import RAY_TEMP, in_own_process, make_shapes, one_line_error, run_cli

from cnnlab.config import Config
from cnnlab.errors import UserError
from cnnlab.studies.executors import AUTO_JOBS_MAX, Job, LocalExecutor, RayExecutor, resolve_jobs, run_job
from cnnlab.training import run_folder

# threads=1 in every run of both executors (the same threads, the same histories); cpu even where a GPU is.
SMALL = ["--epochs", 2, "--set", "image_size=32", "--set", "batch_size=16", "--set", "threads=1", "--set", "device=cpu"]
TIMING = {"wall_s", "images_per_s", "out", "epoch_s", "data_wait_s"}


def _rows(path) -> list[dict]:
    """A summary.csv or history.csv without its timing columns (and a study's run folders)."""
    with open(path, newline="") as f:
        return [{k: v for k, v in r.items() if k not in TIMING} for r in csv.DictReader(f)]


def test_without_ray_the_ray_executor_is_one_clear_line(eclipse, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` now raises ImportError, as when it is not installed
    out = tmp_path / "S"
    line = one_line_error("study", "regularization", "--data", eclipse, "--out", out, "--executor", "ray")
    assert "pip install cnnlab[ray]" in line and not out.exists()
    assert "--gpus-per-run" in one_line_error(
        "study", "regularization", "--data", eclipse, "--out", out, "--executor", "ray", "--gpus-per-run", 2
    )
    assert "needs --executor ray" in one_line_error(
        "study", "regularization", "--data", eclipse, "--out", out, "--address", "10.0.0.1:6379"
    )


def test_gpu_shares_follow_the_device_and_the_cluster():
    pytest.importorskip("ray")
    ex = RayExecutor(gpus_per_run=0.25, log=lambda *a: None)

    def job(device):  # no check that this machine has the GPU: Ray's workers may
        return Job("r", 0, Config().update({"device": device}), "out")

    assert ex._gpus(job("auto"), 0) == 0  # no GPU in the cluster: none asked for
    assert ex._gpus(job("auto"), 1) == 0.25  # a cluster with GPUs: auto trains on one, so a share is reserved
    assert ex._gpus(job("cpu"), 4) == 0
    assert ex._gpus(job("cuda"), 2) == 0.25
    with pytest.raises(UserError, match="no GPU"):
        ex._gpus(job("cuda"), 0)
    with pytest.raises(UserError, match="use device=cuda"):
        ex._gpus(job("cuda:1"), 2)
    with pytest.raises(UserError, match="largest Ray node has 2 CPUs"):
        ex._cpus(Job("r", 0, Config().update({"threads": 8}), "out"), 2)


@pytest.fixture(scope="module")
def local_ray(tmp_path_factory):
    """A Ray on this machine's CPUs (2 at least: a study's runs with --jobs auto fit on it), shut down at the end.
    A test using it runs in a pytest of its own (conftest.py, own_process): this session never becomes a Ray
    driver, whose process Ray ends without a report if it loses its GCS. There it starts its own Ray, its session
    files in the folder this session chose for that test (to quote Ray's logs if that happens)."""
    ray = pytest.importorskip("ray")
    if not in_own_process():
        yield None  # the test itself runs in its own process
        return
    temp = Path(os.environ.get(RAY_TEMP) or tempfile.mkdtemp(prefix="cnnlab-ray-", dir="/tmp"))
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CNNLAB_CACHE", str(tmp_path_factory.mktemp("ray-cache")))  # the workers' decode cache
        ray.init(
            num_cpus=max(2, os.cpu_count() or 1),
            num_gpus=0,
            include_dashboard=False,
            _temp_dir=str(temp),
            logging_level=logging.WARNING,
        )
        # Ray pickles a function of an importable module by reference; its workers cannot import this one.
        ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
        try:
            yield ray
        finally:
            ray.shutdown()


def test_a_study_on_ray_matches_the_local_one_and_resumes(eclipse, tmp_path, local_ray, monkeypatch):
    # The same command, threads not set: each run's threads come from --jobs (auto) alone, whatever the executor,
    # so both give every run the same config and the same summary, to the last digit. (device=cpu: this Ray has no
    # GPU, where this machine may.)
    case = ["--epochs", 2, "--set", "image_size=32", "--set", "device=cpu"]
    monkeypatch.chdir(tmp_path)  # relative paths, which Ray's workers (started elsewhere) get made absolute
    study = ["study", "regularization", "--data", os.path.relpath(eclipse, tmp_path)]
    run_cli(*study, "--out", "local", *case)
    result = run_cli(*study, "--out", "ray", "--executor", "ray", *case)
    assert "ray: 4 runs" in result.output
    local, on_ray = _rows(tmp_path / "local" / "summary.csv"), _rows(tmp_path / "ray" / "summary.csv")
    assert [r["run"] for r in on_ray] == ["simple", "simple-bn", "simple-dropout", "simple-bn-dropout"]
    assert on_ray == local
    configs = [run_folder.read_config(tmp_path / e / "runs" / "simple-bn") for e in ("local", "ray")]
    assert configs[0] == configs[1] and configs[0].train.threads == resolve_threads()
    assert (tmp_path / "ray" / "report.html").is_file()

    # Rerunning reads finished runs back under either executor: the local study, rerun here (its config.toml holds
    # absolute paths, the command relative ones) and on Ray, trains nothing.
    stamp = (tmp_path / "local" / "runs" / "simple" / "last.pt").stat().st_mtime_ns
    run_cli(*study, "--out", "local", *case)
    run_cli(*study, "--out", "local", "--executor", "ray", *case)
    assert (tmp_path / "local" / "runs" / "simple" / "last.pt").stat().st_mtime_ns == stamp
    assert _rows(tmp_path / "local" / "summary.csv") == local

    # A user error raised on a worker (here: a changed setting) is one line, exit code 2, not retried.
    line = one_line_error(*study, "--out", "ray", "--executor", "ray", *case, "--epochs", 3)
    assert "another config (epochs differ)" in line and "on Ray node" in line


def resolve_threads() -> int:
    """A run's threads in a study with --jobs auto: this machine's cores shared among the runs at once."""
    return max(1, (os.cpu_count() or 1) // resolve_jobs("auto"))


def test_runs_in_forked_workers_match_one_after_another_and_alone(eclipse, tmp_path):
    # A fresh `cnnlab` process (no torch imported yet) forks its workers after importing torch once.
    study = ["study", "regularization", "--data", str(eclipse), *map(str, SMALL)]
    cmd = [sys.executable, "-m", "cnnlab.cli", *study, "--out", str(tmp_path / "forked"), "--jobs", "2"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    assert "4 runs, 2 at a time in worker processes" in done.stdout and "report:" in done.stdout
    run_cli(*study, "--out", tmp_path / "serial", "--jobs", 1)
    assert _rows(tmp_path / "forked" / "summary.csv") == _rows(tmp_path / "serial" / "summary.csv")
    # ...and a run trained alone from a worker's run config has the same history, to the last digit.
    run = tmp_path / "forked" / "runs" / "simple-dropout"
    run_cli("train", "--config", run / run_folder.CONFIG, "--out", tmp_path / "alone")
    assert _rows(tmp_path / "alone" / run_folder.HISTORY) == _rows(run / run_folder.HISTORY)


def test_jobs_auto_and_bad_jobs(eclipse, tmp_path):
    assert resolve_jobs("auto") == max(1, min(AUTO_JOBS_MAX, os.cpu_count() or 1))
    assert resolve_jobs("auto", "ray") == resolve_jobs("auto") and resolve_jobs("3") == 3
    for bad, why in (("0", "at least 1"), ("many", "a number or auto")):
        line = one_line_error("study", "regularization", "--data", eclipse, "--out", tmp_path / "S", "--jobs", bad)
        assert why in line
    assert not (tmp_path / "S").exists()


def _dies(job: Job, progress: bool = False) -> dict:
    """A run whose worker process is killed (as by the kernel's out-of-memory killer)."""
    if job.run == "killed":
        os.kill(os.getpid(), 9)
    if job.run == "exits":  # a crash that ends the process after a line on stderr
        print("RuntimeError: CUDA error: out of memory", file=sys.stderr, flush=True)
        os._exit(3)
    return {"run": job.run, "seed": job.seed}


def test_a_dead_worker_is_one_clear_error(tmp_path):
    executor = LocalExecutor(2, log=lambda *a: None, task=_dies)
    jobs = [Job(name, 0, Config(), str(tmp_path / name)) for name in ("fine", "killed", "fine", "exits")]
    with pytest.raises(
        UserError,
        match=r"worker process died while training killed seed 0 \(killed by SIGKILL\): "
        "rerun the same command",
    ):
        executor.map(jobs[:2])
    executor.close()
    executor = LocalExecutor(2, log=lambda *a: None, task=_dies)
    with pytest.raises(
        UserError,
        match=r"died while training exits seed 0 \(exit code 3; its last line: "
        r"RuntimeError: CUDA error: out of memory\)",
    ):
        executor.map(jobs[2:])
    executor.close()


def _sharing(job: Job) -> dict:
    """Which worker of how many this process was told it is, and the GPU it would take among 2 and among 4."""
    import os
    import time

    from cnnlab.training import engine

    time.sleep(0.5)  # long enough that every worker takes a job
    s = engine._sharing
    return {
        "run": job.run,
        "seed": job.seed,
        "pid": os.getpid(),
        "index": s.index,
        "workers": s.workers,
        "of2": s.gpu(2),
        "of4": s.gpu(4),
    }


def test_workers_are_told_their_share_of_the_gpus(tmp_path):
    executor = LocalExecutor(3, log=lambda *a: None, task=_sharing)
    try:
        out = executor.map([Job(f"r{i}", 0, Config(), str(tmp_path / f"r{i}")) for i in range(6)])
    finally:
        executor.close()
    seen = {r["pid"]: r for r in out}
    assert sorted(r["index"] for r in seen.values()) == [0, 1, 2] and {r["workers"] for r in out} == {3}
    # dealt round-robin: two GPUs hold workers {0, 2} and {1}; four hold one each
    assert sorted(tuple(r["of2"]) for r in seen.values()) == [(0, 2), (0, 2), (1, 1)]
    assert sorted(tuple(r["of4"]) for r in seen.values()) == [(0, 1), (1, 1), (2, 1)]


def _flaky(job: Job) -> dict:
    """Counts its attempts beside the job's folder; fails with a UserError, or once with an OSError."""
    tries = Path(job.out + ".tries")
    with open(tries, "a") as f:
        f.write("x")
    if job.run == "user":
        raise UserError("a bad value")
    if len(tries.read_text()) == 1:
        raise OSError("the shared file system hiccuped")
    return {"run": job.run, "seed": job.seed, "tries": len(tries.read_text())}


def test_user_errors_are_not_retried_but_other_errors_are(local_ray, tmp_path):
    executor = RayExecutor(log=lambda *a: None, task=_flaky)
    assert executor.map([Job("flaky", 0, Config(), str(tmp_path / "flaky"))])[0]["tries"] == 2
    with pytest.raises(UserError, match="a bad value"):
        executor.map([Job("user", 0, Config(), str(tmp_path / "user"))])
    assert (tmp_path / "user.tries").read_text() == "x"


def _dies_after_epoch_one(job: Job) -> dict:
    """run_job, whose first attempt kills its own worker process once epoch 1's checkpoint and history are saved."""
    died = Path(job.out + ".died")
    if not died.exists():
        write_history = run_folder.write_history

        def write_then_die(history, path):
            write_history(history, path)
            shutil.copy(path, died)  # the history the first attempt left
            os._exit(1)  # as a lost node or the OOM killer would: no exception, no cleanup

        run_folder.write_history = write_then_die
    return run_job(job)


def test_a_run_whose_worker_dies_is_retried_and_resumes(eclipse, local_ray, tmp_path):
    cfg = Config().update(
        {"path": str(eclipse), "image_size": 32, "batch_size": 16, "epochs": 2, "threads": 1, "device": "cpu"}
    )
    once = run_job(Job("once", 0, cfg, str(tmp_path / "once")))
    r = RayExecutor(log=lambda *a: None, task=_dies_after_epoch_one).map([Job("dies", 0, cfg, str(tmp_path / "dies"))])
    first = _rows(tmp_path / "dies.died")
    assert len(first) == 1  # the worker died after epoch 1...
    history = _rows(tmp_path / "dies" / "history.csv")
    assert history == _rows(tmp_path / "once" / "history.csv")  # ...and the retry gives the uninterrupted history,
    with open(tmp_path / "dies.died", newline="") as a, open(tmp_path / "dies" / "history.csv", newline="") as b:
        assert next(csv.DictReader(a)) == next(csv.DictReader(b))  # resumed: epoch 1 (with its timings) kept as it was
    assert {k: v for k, v in r[0].items() if k not in TIMING | {"run"}} == {
        k: v for k, v in once.items() if k not in TIMING | {"run"}
    }


def test_ray_tasks_import_a_users_model_from_the_drivers_path(eclipse, tmp_path, local_ray, monkeypatch):
    # The module's folder is on this process's sys.path only (not PYTHONPATH: the Ray workers started before it
    # existed): the tasks get the driver's path and rebuild `usermodels:tiny` as a local study does.
    (tmp_path / "code").mkdir()
    (tmp_path / "code" / "raymodels.py").write_text(
        "from torch import nn\n\n\ndef tiny(cfg, c, n):\n"
        "    return nn.Sequential(nn.Conv2d(c, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),\n"
        "                         nn.Linear(4, n))\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path / "code"))
    study = ["study", "lr", "--data", eclipse, *SMALL, "--epochs", 1, "--param", "model=raymodels:tiny,simple-bn"]
    run_cli(*study, "--out", tmp_path / "local")
    run_cli(*study, "--out", tmp_path / "ray", "--executor", "ray")
    assert _rows(tmp_path / "ray" / "summary.csv") == _rows(tmp_path / "local" / "summary.csv")


@pytest.mark.slow
def test_a_search_on_ray_one_trial_at_a_time_is_the_local_search(tmp_path, local_ray):
    pytest.importorskip("optuna")
    data = make_shapes(tmp_path / "d", splits=(("train", 30),), seed=3)
    cmd = ["tune", "--data", data, "--trials", 6, "--epochs", 3, "--param", "lr=log:1e-4:1e-1", "--jobs", 1]
    cmd += ["--set", "image_size=32", "--set", "batch_size=16", "--set", "model=simple-bn", "--set", "device=cpu"]
    run_cli(*cmd, "--out", tmp_path / "local")
    run_cli(*cmd, "--out", tmp_path / "ray", "--executor", "ray")
    local, on_ray = (json.loads((tmp_path / e / "results.json").read_text()) for e in ("local", "ray"))
    strip = [{k: v for k, v in t.items() if k not in ("out", "seconds")} for t in local["trials"]]
    assert strip == [{k: v for k, v in t.items() if k not in ("out", "seconds")} for t in on_ray["trials"]]
    assert on_ray["best"]["trial"] == local["best"]["trial"] and on_ray["n_pruned"] == local["n_pruned"]
