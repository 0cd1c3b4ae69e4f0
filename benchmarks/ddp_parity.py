"""One process with batch 64 against 2 gloo ranks with 32 each, on the CPU: the two histories side by side.

    python benchmarks/ddp_parity.py [--data DIR] [--epochs 6] [--seeds 0 1 2] [--json] [--workdir DIR]

Two configs, each trained `cnnlab train --batch-size 64` (one process, 2 threads) and `cnnlab train --procs 2
--batch-size 64` (two gloo ranks of 32 images, 1 thread each), in fresh processes, timed from start to exit:

- deterministic: cnnlab's resnet (BatchNorm, no dropout) with flips, rotation, noise and mixup, seed 0: the same
  computation, so the histories differ by rounding alone (`rel_diff_two_ranks`, the largest relative difference
  of every loss and macro-F1, epoch by epoch). Training amplifies last-bit differences, so beside it stands the
  same single process with 1 thread instead of 2 (`rel_diff_1_thread`): the floor any other summation order
  reaches (tests/training/test_distributed.py holds 2 ranks to 1e-4 on a short run);
- dropout: the assignment's simple-bn-dropout, for every seed in --seeds: dropout's masks are drawn per rank,
  so the two cannot agree digit for digit; what must hold is that the gap between them is within the spread
  between seeds (`seed_spread` against `ddp_gap`, on the best validation macro-F1 and the last validation loss).

Without --data, the built-in synthetic eclipse set is rendered (100 training images a class, 64 px) into the
work folder. Each run has its own decode cache in the work folder, so the first run's decode is timed too.
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
from pathlib import Path

COMMON = ["--image-size", "64", "--batch-size", "64", "--set", "precision=fp32", "-q"]
DETERMINISTIC = [
    *("--model", "resnet", "--set", "width=16", "--set", "depth=1", "--set", "dropout=0"),
    *("--set", "hflip=true", "--set", "rotate=10", "--set", "noise=0.05", "--set", "mixup=0.2"),
]
DROPOUT = ["--model", "simple-bn-dropout", "--set", "hflip=true", "--set", "rotate=10"]
COMPARED = ("train_loss", "train_f1", "val_loss", "val_f1")


def train(data: Path, out: Path, args: list[str], procs: int, cache: Path, threads: int = 2) -> dict:
    """One `cnnlab train` in a fresh process -> {wall_s, history}. 2 ranks get 1 thread each."""
    cmd = [sys.executable, "-m", "cnnlab", "train", "--data", str(data), "--out", str(out), *COMMON, *args]
    cmd += ["--procs", str(procs), "--set", "threads=1"] if procs > 1 else ["--set", f"threads={threads}"]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env={**os.environ, "CNNLAB_CACHE": str(cache)}, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode:
        sys.exit(f"failed: {' '.join(cmd)}\n{proc.stderr[-2000:]}")
    with open(out / "history.csv", newline="") as f:
        rows = [{k: float(v) for k, v in r.items() if k in (*COMPARED, "epoch")} for r in csv.DictReader(f)]
    return {"wall_s": round(wall, 1), "history": rows}


def rel(a: float, b: float) -> float:
    return abs(a - b) / max(abs(a), 1e-12)


def per_epoch(a: dict, b: dict) -> list[float]:
    """The largest relative difference of the compared columns, epoch by epoch."""
    return [max(rel(x[k], y[k]) for k in COMPARED) for x, y in zip(a["history"], b["history"], strict=True)]


def deterministic(data: Path, work: Path, epochs: int) -> dict:
    """1 process x 64 (2 threads) against 2 ranks x 32, and, as the floor of last-bit noise that training
    amplifies, the same single process with 1 thread instead of 2."""
    args = [*DETERMINISTIC, "--epochs", str(epochs), "--set", "seed=0"]
    one = train(data, work / "det-1proc", args, 1, work / "cache-det-1")
    two = train(data, work / "det-2ranks", args, 2, work / "cache-det-2")
    one_thread = train(data, work / "det-1proc-1thread", args, 1, work / "cache-det-1", threads=1)
    return {
        "one_process": one,
        "two_ranks": two,
        "one_process_1_thread": one_thread,
        "rel_diff_two_ranks": per_epoch(one, two),
        "rel_diff_1_thread": per_epoch(one, one_thread),
        "max_rel_diff": max(per_epoch(one, two)),
    }


def best(history: list[dict]) -> tuple[float, float]:
    return max(r["val_f1"] for r in history), history[-1]["val_loss"]


def dropout(data: Path, work: Path, epochs: int, seeds: list[int]) -> dict:
    rows = []
    for seed in seeds:
        args = [*DROPOUT, "--epochs", str(epochs), "--set", f"seed={seed}"]
        one = train(data, work / f"drop-1proc-{seed}", args, 1, work / "cache-drop")
        two = train(data, work / f"drop-2ranks-{seed}", args, 2, work / "cache-drop")
        (f1a, la), (f1b, lb) = best(one["history"]), best(two["history"])
        rows.append({"seed": seed, "one_process": one, "two_ranks": two, "best_val_f1": [f1a, f1b],
                     "last_val_loss": [la, lb]})  # fmt: skip
    f1s = [r["best_val_f1"][0] for r in rows]
    losses = [r["last_val_loss"][0] for r in rows]
    return {
        "runs": rows,
        "seed_spread": {"best_val_f1": max(f1s) - min(f1s), "last_val_loss": max(losses) - min(losses)},
        "ddp_gap": {
            "best_val_f1": max(abs(r["best_val_f1"][0] - r["best_val_f1"][1]) for r in rows),
            "last_val_loss": max(abs(r["last_val_loss"][0] - r["last_val_loss"][1]) for r in rows),
        },
    }


def table(det: dict) -> str:
    lines = ["| epoch | " + " | ".join(f"{k} 1x64 | {k} 2x32" for k in COMPARED) + " |"]
    lines.append("|" + "---|" * (1 + 2 * len(COMPARED)))
    for a, b in zip(det["one_process"]["history"], det["two_ranks"]["history"], strict=True):
        lines.append(f"| {int(a['epoch'])} | " + " | ".join(f"{a[k]:.6f} | {b[k]:.6f}" for k in COMPARED) + " |")
    return "\n".join(lines)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, help="dataset (default: the synthetic eclipse set, rendered)")
    ap.add_argument("--epochs", type=int, default=6)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--workdir", type=Path, help="where runs and caches go (default: a temporary folder)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        work = args.workdir or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        data = args.data
        if data is None:
            from cnnlab.data.synthetic import synth_eclipse

            data = work / "eclipse"
            synth_eclipse(data, train_per_class=100, test_per_class=10, size=64)
        det = deterministic(data, work, args.epochs)
        drop = dropout(data, work, args.epochs, args.seeds)
    from cnnlab.studies.reports import machine

    result = {
        "machine": machine(),
        "date": time.strftime("%Y-%m-%d"),
        "data": str(args.data or "synthetic eclipse, 100 a class, 64 px"),
        "epochs": args.epochs,
        "deterministic": det,
        "dropout": drop,
    }
    if args.json:
        print(json.dumps(result, indent=1))
    else:
        print(table(det))
        print("relative difference a epoch, 2 ranks:", " ".join(f"{v:.1e}" for v in det["rel_diff_two_ranks"]))
        print("relative difference a epoch, 1 thread:", " ".join(f"{v:.1e}" for v in det["rel_diff_1_thread"]))
        print(f"wall clock: 1 process {det['one_process']['wall_s']} s, 2 ranks {det['two_ranks']['wall_s']} s")
        print(f"dropout: seed spread {drop['seed_spread']}, 1 process vs 2 ranks {drop['ddp_gap']}")
    return result


if __name__ == "__main__":
    main()
