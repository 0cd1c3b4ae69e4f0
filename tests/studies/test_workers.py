"""A study's worker processes: started from cnnlab's own entry point (a user's script runs once, whether run as a
file or from standard input), and never outliving their command (SIGTERM, kill -9)."""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import cnnlab_env

import cnnlab

SRC = str(Path(cnnlab.__file__).resolve().parents[1])
SCRIPT = """\
print("top of the script")
import cnnlab
cnnlab.train(data={data!r}, out="T", epochs=1, image_size=32, batch_size=16)
cnnlab.study("regularization", data={data!r}, out="S", epochs=1, image_size=32, batch_size=16, jobs=2)
"""


def _env() -> dict:
    return cnnlab_env()


@pytest.mark.parametrize("how", ["file", "stdin"])
def test_a_script_without_a_main_guard_runs_once(eclipse, tmp_path, how):
    # torch is imported (by train) before the study starts its workers: they are new processes, which must run
    # cnnlab's worker, not this script again (`python s.py`), nor fail to find it (`python - < s.py`: '<stdin>').
    script = tmp_path / "s.py"
    script.write_text(SCRIPT.format(data=str(eclipse)))
    cmd, stdin = ([sys.executable, str(script)], None) if how == "file" else ([sys.executable, "-"], script.open())
    with stdin or open(os.devnull) as f:
        done = subprocess.run(cmd, stdin=f, cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.splitlines()[0] == "top of the script" and done.stdout.count("top of the script") == 1
    assert "4 runs, 2 at a time in worker processes" in done.stdout
    assert len(list(csv.DictReader(open(tmp_path / "S" / "summary.csv")))) == 4


# ------------------------------------------------------------------------------------------ no worker left behind


def _family(pid: int) -> set[int]:
    """`pid` and its descendants (psutil, else /proc)."""
    try:
        import psutil

        return {pid, *(c.pid for c in psutil.Process(pid).children(recursive=True))}
    except ImportError:
        parents = {}
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                fields = stat.read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            parents[int(stat.parent.name)] = int(fields[1])
        family, grew = {pid}, True
        while grew:
            more = {p for p, pp in parents.items() if pp in family} - family
            family |= more
            grew = bool(more)
        return family


def _alive(pids: set[int], group: int) -> set[int]:
    """The processes of `pids`, or of process group `group`, still running (a zombie has exited)."""
    left = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        pid, state, pgid = int(stat.parent.name), fields[0], int(fields[2])
        if (pid in pids or pgid == group) and state not in ("Z", "X"):
            left.add(pid)
    return left


def _study(eclipse, out: Path) -> list[str]:
    return [
        sys.executable,
        "-m",
        "cnnlab",
        "study",
        "regularization",
        "--data",
        str(eclipse),
        "--out",
        str(out),
        "--epochs",
        "20",
        "--set",
        "image_size=32",
        "--set",
        "batch_size=16",
        "--set",
        "patience=0",
        "--jobs",
        "2",
    ]


def _gone_within(family: set[int], group: int, since: float, seconds: float = 5) -> set[int]:
    """Those of `family` (or of process group `group`) still running `seconds` after `since` (a monotonic time)."""
    while (left := _alive(family, group)) and time.monotonic() < since + seconds:
        time.sleep(0.2)
    return left


def _start_study(eclipse, out: Path, jobs: int = 2) -> subprocess.Popen:
    """A `--jobs 2` study (or `jobs`), long enough to be stopped while it trains, once its first epoch is written."""
    p = subprocess.Popen(
        _study(eclipse, out)[:-1] + [str(jobs)],
        env=_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )  # its own process group: whatever it starts is found by it
    deadline = time.monotonic() + 600
    while not list(out.glob("runs/*/history.csv")):
        assert p.poll() is None and time.monotonic() < deadline, p.communicate()
        time.sleep(0.1)
    return p


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_sigterm_and_kill_leave_no_worker_behind_and_the_study_resumes(eclipse, tmp_path):
    # SIGTERM: the workers stop, the command ends in one line, the runs keep their last finished epochs.
    p = _start_study(eclipse, tmp_path / "S")
    family = _family(p.pid)
    assert len(family) >= 3  # the command and its two workers
    p.send_signal(signal.SIGTERM)
    sent = time.monotonic()
    out, err = p.communicate(timeout=60)
    assert not _gone_within(family, p.pid, sent)  # five seconds after SIGTERM, nothing of it is left
    assert p.returncode == 128 + signal.SIGTERM, out + err
    assert err.strip().splitlines()[-1].startswith("error: stopped by SIGTERM"), err
    kept = {h.parent.name: list(csv.DictReader(open(h))) for h in (tmp_path / "S").glob("runs/*/history.csv")}
    assert kept and all(0 < len(rows) < 20 for rows in kept.values())

    # ...and the same command resumes those runs: their finished epochs kept as they were (timings included).
    done = subprocess.run(_study(eclipse, tmp_path / "S"), env=_env(), capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr
    for run, rows in kept.items():
        after = list(csv.DictReader(open(tmp_path / "S" / "runs" / run / "history.csv")))
        assert len(after) == 20 and after[: len(rows)] == rows

    # kill -9: nothing is left to stop the workers, which notice by themselves within seconds.
    p = _start_study(eclipse, tmp_path / "K")
    family = _family(p.pid)
    assert len(family) >= 3
    p.kill()
    killed = time.monotonic()
    p.communicate(timeout=60)
    assert not _gone_within(family, p.pid, killed)


def test_sigterm_stops_a_study_trained_in_this_process_in_one_line(eclipse, tmp_path):
    # --jobs 1: the runs train in the command itself; SIGTERM still ends it as a study ends (143, one line), and
    # the run under way keeps its last finished epoch.
    p = _start_study(eclipse, tmp_path / "S", jobs=1)
    p.send_signal(signal.SIGTERM)
    out, err = p.communicate(timeout=60)
    assert p.returncode == 128 + signal.SIGTERM, out + err
    assert err.strip().splitlines()[-1].startswith("error: stopped by SIGTERM"), err
    assert all(len(list(csv.DictReader(open(h)))) > 0 for h in (tmp_path / "S").glob("runs/*/history.csv"))


_STOPPED_WHILE_STARTING = """
import os, sys, threading
from cnnlab.studies import worker

class Interrupted(threading.Thread):
    def start(self):  # where SIGTERM's handler raised in a CI run: a worker stopped as it started its threads
        raise KeyboardInterrupt

threading.Thread = Interrupted
sys.exit(worker.serve(os.getppid()))
"""


def test_a_worker_stopped_while_it_sets_itself_up_exits_quietly():
    """A command that stops at a user error stops the workers it has just started: a signal that lands before a
    worker waits for its first job must end it like one that lands later, with no traceback in the command's output."""
    done = subprocess.run(
        [sys.executable, "-c", _STOPPED_WHILE_STARTING],
        input=b"",
        capture_output=True,
        env=_env(),
        timeout=60,
    )
    assert done.returncode == 130, done.stderr.decode()
    assert b"Traceback" not in done.stderr, done.stderr.decode()
