"""How much of a study's wall clock is training: the whole `cnnlab study` command against its runs' own loops.

    python benchmarks/study_overhead.py [--device cpu|cuda] [--epochs 10] [--jobs N|auto] [--json]

Renders the built-in synthetic eclipse set (default sizes) into a temporary folder, then times the command
`cnnlab study regularization --data SET --out OUT --epochs 10 --set image_size=64` in a fresh process, from
start to exit (torch's import, the decode, every run, the report). Its runs' histories record their
training-loop seconds (train and validation, `epoch_s`); the ratio of the two is the study's overhead. The
decode cache is a fresh temporary folder, so the first run's decode is part of the overhead too.

`--jobs` is passed to the command (default: the command's own default). With several runs at once, the runs'
loops overlap and the ratio can fall below 1; `threads` says how many threads each run had (from its config).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import tempfile
import time
import tomllib
from pathlib import Path


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--study", default="regularization")
    ap.add_argument("--jobs", help="passed to `cnnlab study --jobs` (default: the command's default)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)

    from cnnlab.data.synthetic import synth_eclipse

    with tempfile.TemporaryDirectory() as tmp:
        data, out = Path(tmp) / "eclipse", Path(tmp) / "study"
        synth_eclipse(data)
        env = {**os.environ, "CNNLAB_CACHE": str(Path(tmp) / "cache")}
        cmd = [
            sys.executable,
            "-m",
            "cnnlab.cli",
            "study",
            args.study,
            "--data",
            str(data),
            "--out",
            str(out),
            "--epochs",
            str(args.epochs),
            "--set",
            "image_size=64",
            "--set",
            f"device={args.device}",
        ]
        if args.jobs:
            cmd += ["--jobs", args.jobs]
        t0 = time.perf_counter()
        subprocess.run(cmd, env=env, check=True, stdout=subprocess.DEVNULL)
        wall = time.perf_counter() - t0
        with open(out / "summary.csv", newline="") as f:
            folders = [Path(row["out"]) for row in csv.DictReader(f)]
        train, threads = 0.0, set()
        for folder in folders:
            with open(folder / "history.csv", newline="") as f:
                train += sum(float(row["epoch_s"]) for row in csv.DictReader(f))
            with open(folder / "config.toml", "rb") as f:
                threads.add(tomllib.load(f)["train"]["threads"])
    result = {
        "wall_s": round(wall, 2),
        "train_s": round(train, 2),
        "ratio": round(wall / train, 3),
        "runs": len(folders),
        "device": args.device,
        "epochs": args.epochs,
        "study": args.study,
        "jobs": args.jobs or "default",
        "threads": sorted(threads),
    }
    print(json.dumps(result) if args.json else "\n".join(f"{k:>8}: {v}" for k, v in result.items()))
    return result


if __name__ == "__main__":
    main()
