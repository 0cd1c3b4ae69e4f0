"""benchmarks/gpu_check.sh, the script for the first GPU at hand, run through all its steps on the CPU (DEVICE=cpu):
so that the device time it is written for is never spent finding a broken script."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from conftest import cnnlab_env, make_shapes

ROOT = Path(__file__).parents[1]


@pytest.mark.slow
def test_gpu_check_runs_every_step_on_the_cpu(tmp_path):
    data = make_shapes(tmp_path / "shapes", splits=(("train", 16), ("test", 4)))
    out = tmp_path / "check"
    env = {**cnnlab_env(), "DEVICE": "cpu", "CHECK_SETS": "--set epochs=1", "PYTHON": sys.executable}
    done = subprocess.run(
        ["bash", "benchmarks/gpu_check.sh", str(data), "", str(out)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    summary = (out / "summary.txt").read_text()
    assert "pytest -m gpu: exit 0" in summary, summary  # every gpu test skipped here, none failed
    assert "epoch_speed: " in summary and "TFLOP/s" in summary, summary
    # on the CPU a run beside others in a study's workers is the run alone, to the last digit
    assert summary.count(": identical") == 3, summary
    assert "study new: exit 0" in summary, summary


def test_gpu_check_says_how_to_call_it():
    done = subprocess.run(["bash", "benchmarks/gpu_check.sh"], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 2 and "--prepare" in done.stdout
    done = subprocess.run(
        ["bash", "benchmarks/gpu_check.sh", "--prepare", "/nonexistent"], cwd=ROOT, capture_output=True, text=True
    )
    assert done.returncode == 2 and done.stderr.count("\n") == 1, done.stderr
