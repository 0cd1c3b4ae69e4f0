"""A search with pruning against the same search without it: wall clock, epochs trained, best validation macro-F1.

    python benchmarks/tune_pruning.py --data D --out DIR --trials 12 --epochs 8 \
        --param lr=log:1e-4:1e-1 --param optimizer=adam,sgd,rmsprop --param dropout=0.0:0.5 \
        [--config C] [--set key=value ...] [--jobs 1] [--lr-find]

Runs `cnnlab tune` twice with the same seed, space and trials (DIR/median, DIR/none), one trial a time by default
(so pruning judges each trial against every finished one). Both searches resume from their folders: rerun the
command to continue one that was cut off, and its wall clock counts only the trials it trained. With `--lr-find`
it also runs `cnnlab lr-find` on the base config (DIR/lr-find). Only the training folder is read (validation is
split from it); the test split is never scored. Prints JSON (and writes DIR/tune_pruning.json).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import cnnlab
from cnnlab.config import parse_sets
from cnnlab.studies.reports import machine


def search(args, pruner: str) -> dict:
    out = Path(args.out) / pruner
    t0 = time.perf_counter()
    s = cnnlab.tune(
        args.data,
        out=out,
        trials=args.trials,
        params=args.param,
        config=args.config,
        jobs=args.jobs,
        pruner=pruner,
        sampler_seed=args.sampler_seed,
        log=lambda line: print(line, flush=True) if "best val macro-F1" in line else None,
        **{"train.epochs": args.epochs, **parse_sets(args.set)},
    )
    best = s["best"]
    return {
        "pruner": pruner,
        "wall_s_this_call": round(time.perf_counter() - t0, 1),
        "training_s": round(s["seconds"], 1),
        "epochs_trained": s["epochs_trained"],
        "finished": s["n_complete"],
        "pruned": s["n_pruned"],
        "best_trial": best and best["trial"],
        "best_val_f1": best and round(best["value"], 4),
        "best_params": best and best["params"],
        "importances": s["importances"],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--trials", type=int, default=12)
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--param", action="append", required=True)
    ap.add_argument("--config")
    ap.add_argument("--set", action="append", default=[])
    ap.add_argument("--jobs", default="1")
    ap.add_argument("--sampler-seed", type=int, default=0)
    ap.add_argument("--lr-find", action="store_true")
    args = ap.parse_args()
    result = {
        "command": "python benchmarks/tune_pruning.py " + " ".join(__import__("sys").argv[1:]),
        "machine": machine(),
        "date": time.strftime("%Y-%m-%d"),
        "searches": [search(args, "median"), search(args, "none")],
    }
    if args.lr_find:
        lf = cnnlab.lr_find(
            args.data, out=Path(args.out) / "lr-find", config=args.config, progress=False, **parse_sets(args.set)
        )
        result["lr_find"] = {k: lf[k] for k in ("suggested_lr", "min_loss_lr", "steps", "diverged", "seconds")}
    Path(args.out, "tune_pruning.json").write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
