"""Copy an `assignment` study's report into docs/results/ and set its figures beside the assignment's own.

    python benchmarks/publish_assignment.py STUDY_DIR docs/results/assignment-mri --command "cnnlab study ..."

Copies report.md, the overlay plots and every stage's summary.csv (not the runs: checkpoints stay outside
git), and writes README.md with the comparison table. The assignment's figures are from SPEC.md (its own
solution, 50 epochs on a Colab GPU, best validation macro-F1).
"""

from __future__ import annotations

import argparse
import csv
import json
import shutil
import time
from pathlib import Path

from cnnlab.studies.reports import machine

# (stage, run in our study, the assignment's best validation macro-F1 for the same setting)
ASSIGNMENT = [
    ("regularization", "simple", 0.899),
    ("regularization", "simple-bn", 0.914),
    ("regularization", "simple-dropout", 0.910),
    ("regularization", "simple-bn-dropout", 0.915),
    ("optimizers", "adagrad", 0.888),
    ("optimizers", "rmsprop", 0.892),
    ("optimizers", "sgd", 0.684),
    ("optimizers", "adam", None),
    ("lr", "lr=0.001", None),
    ("lr", "lr=0.005", 0.918),
    ("lr", "lr=0.01", 0.869),
    ("lr", "lr=0.05", 0.868),
    ("overfitting", "baseline", None),
    ("overfitting", "label-smoothing", 0.908),
    ("overfitting", "plateau", 0.915),
    ("overfitting", "plateau+smoothing", None),
]
ASSIGNMENT_TEST_F1 = 0.648


def _summary(path: Path) -> dict[str, dict]:
    with open(path, newline="") as f:
        return {r["run"]: r for r in csv.DictReader(f)}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("study")
    ap.add_argument("dest")
    ap.add_argument("--command", required=True, help="the exact command that produced the study")
    ap.add_argument("--title", default="The assignment on the brain-MRI data, with cnnlab")
    ap.add_argument(
        "--no-reference", action="store_true", help="another data set: no column of the assignment's own (MRI) figures"
    )
    args = ap.parse_args(argv)
    src, dest = Path(args.study), Path(args.dest)
    dest.mkdir(parents=True, exist_ok=True)
    shutil.copy(src / "report.md", dest / "report.md")
    for stage in ("regularization", "optimizers", "lr", "overfitting"):
        (dest / stage).mkdir(exist_ok=True)
        shutil.copy(src / stage / "summary.csv", dest / stage / "summary.csv")
        shutil.copy(src / stage / "overlay.png", dest / stage / "overlay.png")

    rows = []
    for stage, run, theirs in ASSIGNMENT:
        ours = _summary(src / stage / "summary.csv").get(run)
        if ours is None:
            continue
        theirs = None if args.no_reference else theirs
        rows.append(
            f"| {stage} | {run} | {theirs if theirs is not None else '-'} | {float(ours['best_val_f1']):.3f} "
            f"| {ours['best_epoch']} / {ours['epochs']} | {float(ours['wall_s']) / int(ours['epochs']):.1f} |"
        )
    tests = sorted(src.rglob("test.json"))
    test_line = "not run"
    if tests:
        t = json.loads(tests[0].read_text())
        test_line = (
            f"{t['macro_f1']:.3f} (accuracy {t['accuracy']:.3f}, {t['n_images']} images, "
            f"`{Path(t['run']).relative_to(src)}`, evaluation #{t['evaluation_number']})"
        )
    reference = "" if args.no_reference else f"assignment {ASSIGNMENT_TEST_F1}; "
    explain = (
        "Every winner was chosen on validation macro-F1 (a 30% stratified split of the training folder, "
        "seed 42); the test folder was scored once, for the final choice. Runs stop early after 10 epochs "
        "without improvement."
    )
    if not args.no_reference:
        explain += (
            " The assignment's column is its own best validation macro-F1 (50 epochs on a Colab GPU). "
            "Our optimizer and lr stages run on our own winners, so those rows compare the same setting "
            "name, not always the same base network."
        )
    text = f"""# {args.title}

Command (the study resumes, so it was run in pieces; the run folder stays outside git):

```
{args.command}
```

Machine: {machine()}. Date: {time.strftime("%Y-%m-%d")}. The study's own report: [report.md](report.md);
per-stage figures in `*/summary.csv`, learning curves in `*/overlay.png`.

{explain}

| stage | run | assignment | cnnlab | best epoch / epochs | s per epoch (CPU, incl. validation) |
|---|---|---|---|---|---|
{chr(10).join(rows)}

Final test macro-F1: {reference}cnnlab {test_line}.
"""
    (dest / "README.md").write_text(text)
    print(f"wrote {dest}")


if __name__ == "__main__":
    main()
