"""Shared fixtures: tiny generated datasets (no test needs ../shared) and an isolated decode cache; tests marked
`own_process` (those on a Ray cluster) run in a pytest of their own."""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
import warnings
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image, ImageDraw

from cnnlab.cli.main import main


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("CNNLAB_CACHE", str(tmp_path_factory.mktemp("cache")))


def make_shapes(
    root: Path,
    splits=(("train", 12), ("test", 4)),
    classes=("circle", "square", "triangle"),
    size=(40, 36),
    seed=0,
    ext=".png",
) -> Path:
    """A tiny learnable class tree: one bright shape on a dark background per image."""
    rng = np.random.default_rng(seed)
    for split, n in splits:
        for c, name in enumerate(classes):
            d = root / split / name if split else root / name
            d.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                im = Image.new("RGB", size, tuple(int(v) for v in rng.integers(0, 60, 3)))
                draw = ImageDraw.Draw(im)
                x, y, r = int(rng.integers(12, size[0] - 12)), int(rng.integers(12, size[1] - 12)), 8
                col = tuple(int(v) for v in rng.integers(150, 255, 3))
                box = [x - r, y - r, x + r, y + r]
                if c % 3 == 0:
                    draw.ellipse(box, fill=col)
                elif c % 3 == 1:
                    draw.rectangle(box, fill=col)
                else:
                    draw.polygon([(x, y - r), (x - r, y + r), (x + r, y + r)], fill=col)
                im.save(d / f"img {i:03d}{ext}")
    return root


@pytest.fixture
def shapes(tmp_path) -> Path:
    return make_shapes(tmp_path / "shapes")


@pytest.fixture(scope="session")
def eclipse(tmp_path_factory) -> Path:
    """The embedded synthetic eclipse set, small: 16 train and 4 test images per class at 48 px."""
    from cnnlab.data.synthetic import synth_eclipse

    out = tmp_path_factory.mktemp("eclipse") / "ecl"
    synth_eclipse(out, train_per_class=16, test_per_class=4, size=48, seed=1)
    return out


def tree_hash(root: Path) -> str:
    """Hash of every path, size, mtime and content under root: any write into a dataset changes it."""
    h = hashlib.sha256()
    for p in sorted(Path(root).rglob("*")):
        st = p.lstat()
        h.update(f"{p.relative_to(root)}|{st.st_size}|{st.st_mtime_ns}|{p.is_dir()}".encode())
        if p.is_file():
            h.update(p.read_bytes())
    return h.hexdigest()


def run_cli(*args, expect: int = 0):
    result = CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)
    assert result.exit_code == expect, result.output
    return result


def one_line_error(*args) -> str:
    """Run a CLI command that must fail as a user error: exit code 2 and a single 'error:' line."""
    result = CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)
    assert result.exit_code == 2, result.output
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in result.output, result.output
    return errors[0]


def cnnlab_env() -> dict:
    """The environment for a `python -m cnnlab ...` subprocess: this checkout's cnnlab first on the import path."""
    import os

    import cnnlab

    src = str(Path(cnnlab.__file__).resolve().parents[1])
    return {**os.environ, "PYTHONPATH": os.pathsep.join([src, *filter(None, [os.environ.get("PYTHONPATH")])])}


# --- Tests in a process of their own -------------------------------------------------------------------------------
# Ray ends its driver's whole process with exit code 1 (C++ `_Exit`, no Python exception) when the driver loses its
# GCS: 60 s after `gcs_server` was killed, here (a lost raylet or agent made ray.get raise instead). In this process
# that would end the whole session without a report (a CI run once stopped that way, mid-suite). So a test marked
# `own_process` runs alone in a new `python -m pytest <its id>` with a Ray temp folder chosen here: its outcome is
# reported as its own, and a child that ended without a result fails with its output and the errors in Ray's logs,
# after one retry (said in the warnings summary).

OWN_PROCESS = "CNNLAB_TEST_OWN_PROCESS"  # set in the child: run the test itself
RAY_TEMP = "CNNLAB_TEST_RAY_TEMP"  # the child's Ray session folder (short: Ray's socket paths must fit 107 bytes)
OWN_PROCESS_FIXTURES = {"local_ray"}  # a test using one of these is marked own_process


def in_own_process() -> bool:
    return bool(os.environ.get(OWN_PROCESS))


def pytest_collection_modifyitems(config, items):
    for item in items:
        if OWN_PROCESS_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker("own_process")


@pytest.hookimpl(tryfirst=True)
def pytest_pyfunc_call(pyfuncitem):
    if in_own_process() or pyfuncitem.get_closest_marker("own_process") is None:
        return None
    verdict, detail = _run_alone(pyfuncitem)
    if verdict == "crashed":  # Ray's daemons died under it: once more, and said
        warnings.warn(f"{pyfuncitem.nodeid} was run again: {detail}", stacklevel=1)
        verdict, detail = _run_alone(pyfuncitem)
    if verdict in ("crashed", "failed"):
        pytest.fail(detail, pytrace=False)
    if verdict == "skipped":
        pytest.skip(detail)
    return True


def _run_alone(item) -> tuple[str, str]:
    """('passed' | 'failed' | 'skipped' | 'crashed', what to say) of `item` run in a new pytest process."""
    work = Path(tempfile.mkdtemp(prefix="cnnlab-own-", dir="/tmp" if os.path.isdir("/tmp") else None))
    report = work / "report.xml"
    cmd = [sys.executable, "-m", "pytest", item.nodeid, "-p", "no:cacheprovider", "-q"]
    cmd += [f"--junit-xml={report}", f"--basetemp={work / 'tmp'}"]
    env = {**os.environ, OWN_PROCESS: "1", RAY_TEMP: str(work / "ray")}
    try:
        done = subprocess.run(
            cmd, cwd=item.config.rootpath, env=env, capture_output=True, text=True, timeout=1200, check=False
        )
        output = (done.stdout + done.stderr).strip()
        if not report.is_file():
            said = f"; its output ends:\n{_tail(output, 40)}" if output else ", and printed nothing"
            return "crashed", (
                f"its own pytest ended with exit code {done.returncode} and no result{said}" + _ray_errors(work / "ray")
            )
        case = ET.parse(report).find(".//testcase")
        for tag in ("failure", "error"):
            found = case.find(tag) if case is not None else None
            if found is not None:  # the child's failure section (traceback, captured output), else the report's
                section = re.search(r"^=+ (?:FAILURES|ERRORS) =+$(.*?)(?=^=+ |\Z)", output, re.M | re.S)
                text = section.group(1) if section else found.text or found.get("message") or ""
                return "failed", re.sub(r"^\s*_+ \S+ _+\n", "", text).strip()  # without its own title line
        skipped = case.find("skipped") if case is not None else None
        if skipped is not None:
            return "skipped", skipped.get("message") or "skipped in its own process"
        if case is None or done.returncode != 0:
            return "failed", f"exit code {done.returncode}:\n" + _tail(output, 40)
        return "passed", ""
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _tail(text: str, n: int) -> str:
    return "\n".join(text.splitlines()[-n:])


def _ray_errors(temp: Path, n: int = 15) -> str:
    """The error lines of the Ray session under `temp`, driver, daemons and agents: why the driver was ended."""
    found = []
    for log in sorted(temp.glob("session_2*/logs/*")):  # not session_latest, a link to the same folder
        if log.suffix not in (".out", ".err", ".log") or log.name.startswith(("worker-", "python-core-worker")):
            continue
        bad = [ln for ln in log.read_text(errors="replace").splitlines() if _RAY_ERROR.search(ln)]
        if bad:
            found.append(f"--- {log.name}:\n" + "\n".join(bad[-n:]))
    return ("\nRay's logs:\n" + "\n".join(found)) if found else "\n(no error lines in Ray's logs)"


_RAY_ERROR = re.compile(r"\] [EF] |\b(ERROR|CRITICAL|FATAL)\b|Traceback")
