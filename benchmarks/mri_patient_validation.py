"""The MRI recipe with a validation that holds out whole patients, and its Testing recall with and without the
Testing images whose label contradicts the figshare original they were copied from.

    cnnlab data audit ../shared/datasets/brain-tumor-mri --against ../shared/datasets/figshare-brain-tumor \
        --class-map glioma=glioma_tumor,meningioma=meningioma_tumor,pituitary=pituitary_tumor --out AUDIT
    python benchmarks/mri_patient_groups.py --copies AUDIT/against_copies.csv \
        --folds ../shared/datasets/figshare-brain-tumor/folds.csv --out GROUPS.csv
    python benchmarks/mri_patient_validation.py --data ../shared/datasets/brain-tumor-mri --groups GROUPS.csv \
        --copies AUDIT/against_copies.csv --out OUT --seeds 0 1 2 [--jobs 2] [--threads 1] [--json]

For each seed, `cnnlab train --config mri --set split=groups --set group_file=GROUPS.csv` (resumed if
interrupted), then one `cnnlab test` on the Testing folder (read back, never repeated, if the run already has
test.json). The figures "without the mislabelled images" come from that same evaluation's
test_predictions.csv, leaving out the Testing images that the audit marks as label conflicts: no second
evaluation. Writes OUT/patient-validation.json.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import statistics
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from cnnlab.evaluation.testing import find_test, result_files


def cnnlab(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "cnnlab.cli", *args], check=True)


def train_and_test(data: str, groups: str, out: Path, seed: int, threads: int) -> Path:
    run = out / f"seed{seed}"
    if (run / "last.pt").is_file():
        cnnlab("train", "--resume", str(run), "-q")
    else:
        cnnlab(
            "train",
            "--config",
            "mri",
            "--data",
            data,
            "--set",
            "split=groups",
            "--set",
            f"group_file={groups}",
            "--set",
            f"seed={seed}",
            "--set",
            f"threads={threads}",
            "--out",
            str(run),
            "-q",
        )
    if find_test(run, data) is None:
        cnnlab("test", str(run), "--data", data)
    return run


def recall(rows: list[dict], classes: list[str]) -> dict:
    out = {}
    for c in classes:
        mine = [r for r in rows if r["class"] == c]
        out[c] = sum(r["predicted"] == c for r in mine) / len(mine) if mine else float("nan")
    return out


def scores(run: Path, conflicts: set[str]) -> dict:
    files = result_files(run)  # RUN/tests/NAME/test.json (older runs: RUN/test.json)
    folder = next(iter(files.values())).parent
    test = json.loads((folder / "test.json").read_text())
    with open(folder / "test_predictions.csv", newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    kept = [r for r in rows if r["path"] not in conflicts]
    classes = test["classes"]
    with open(run / "history.csv", newline="") as f:
        best = max(csv.DictReader(f), key=lambda r: float(r["val_f1"]))  # the epoch best.pt holds
    return {
        "seed": run.name,
        "best_epoch": int(best["epoch"]),
        "val_macro_f1": float(best["val_f1"]),
        "val_acc": float(best["val_acc"]),
        "test_accuracy": test["accuracy"],
        "test_macro_f1": test["macro_f1"],
        "evaluation_number": test["evaluation_number"],
        "n_test": len(rows),
        "recall": recall(rows, classes),
        "n_test_without_conflicts": len(kept),
        "accuracy_without_conflicts": sum(r["predicted"] == r["class"] for r in kept) / len(kept),
        "recall_without_conflicts": recall(kept, classes),
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", required=True)
    ap.add_argument("--groups", required=True, help="the group file of benchmarks/mri_patient_groups.py")
    ap.add_argument("--copies", required=True, help="against_copies.csv of `cnnlab data audit --against`")
    ap.add_argument("--out", required=True)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--jobs", type=int, default=1, help="seeds trained at the same time (cores are divided)")
    ap.add_argument("--threads", type=int, help="threads a run (default: the cores divided by --jobs)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with open(args.copies, newline="", encoding="utf-8") as f:
        conflicts = {r["path"] for r in csv.DictReader(f) if r["split"] == "test" and r["conflict"] == "1"}
    threads = args.threads or max(1, (os.cpu_count() or 1) // args.jobs)
    with ThreadPoolExecutor(args.jobs) as pool:
        runs = list(
            pool.map(lambda s: train_and_test(args.data, str(Path(args.groups).resolve()), out, s, threads), args.seeds)
        )
    per_seed = [scores(r, conflicts) for r in runs]
    classes = list(per_seed[0]["recall"])

    def mean_sd(key, cls=None):
        vals = [s[key][cls] if cls else s[key] for s in per_seed]
        return [statistics.fmean(vals), statistics.stdev(vals) if len(vals) > 1 else 0.0]

    result = {
        "seeds": per_seed,
        "conflicts_left_out": sorted(conflicts),
        "mean": {
            k: mean_sd(k)
            for k in ("val_macro_f1", "val_acc", "test_accuracy", "test_macro_f1", "accuracy_without_conflicts")
        }
        | {f"recall {c}": mean_sd("recall", c) for c in classes}
        | {f"recall {c} without conflicts": mean_sd("recall_without_conflicts", c) for c in classes},
    }
    (out / "patient-validation.json").write_text(json.dumps(result, indent=2))
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        for k, (m, s) in result["mean"].items():
            print(f"{k:<40} {m:.4f} ± {s:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
