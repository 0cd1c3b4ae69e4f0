"""Train and test the MRI recipe for several seeds; write docs/results/quality.json.

    python benchmarks/quality.py --data ../shared/datasets/brain-tumor-mri --out runs/quality [--seeds 0 1 2]

Per seed: `cnnlab train --config recipes/mri.toml --set seed=K`, then one `cnnlab test` on the official
Testing folder and one on its leak-free subset (the Testing images with no near copy in Training, from
`cnnlab data audit`). Finished seeds are skipped on a rerun (their runs resume), and their test results
are read back rather than evaluated again. `train_minutes` is the sum of the epoch times; `cpu_minutes` is
this process's CPU time on the seed (data preparation and tests included), summed over the calls.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

from cnnlab.config import Config, parse_sets
from cnnlab.datatools.audit import run_audit
from cnnlab.evaluation.testing import test_run
from cnnlab.studies.reports import machine
from cnnlab.training.trainer import fit, resume

ROOT = Path(__file__).resolve().parents[1]


def _test_once(run: Path, data: str, manifest: Path | None) -> dict:
    name = f"test-{manifest.stem}" if manifest else "test"
    done = run / f"{name}.json"
    if done.is_file():  # scored before: read it back, never evaluate the test split twice
        return json.loads(done.read_text())
    return test_run(run, data, str(manifest) if manifest else None)


def table(result: dict) -> str:
    """The per-seed markdown table of a quality.json, with the mean and std row."""
    seeds = result["seeds"]
    classes = list(seeds[0]["per_class_recall"])
    leak_classes = list(seeds[0]["leak_free_per_class_recall"])
    short = lambda names: " / ".join("no tumour" if c == "no_tumor" else c.removesuffix("_tumor") for c in names)  # noqa: E731
    lines = [
        f"| seed | val macro-F1 | test macro-F1 | test accuracy | leak-free accuracy "
        f"| test recall {short(classes)} | leak-free recall {short(leak_classes)} | minutes | test evaluations |",
        "|---|---|---|---|---|---|---|---|---|",
    ]

    def row(name, get, fmt):
        recall = " / ".join(fmt(get(lambda s, c=c: s["per_class_recall"][c])) for c in classes)
        leak = " / ".join(fmt(get(lambda s, c=c: s["leak_free_per_class_recall"][c])) for c in leak_classes)
        return (
            f"| {name} | {fmt(get(lambda s: s['val_macro_f1']), 3)} | {fmt(get(lambda s: s['test_macro_f1']), 3)} "
            f"| {fmt(get(lambda s: s['test_accuracy']), 3)} | {fmt(get(lambda s: s['leak_free_accuracy']), 3)} "
            f"| {recall} | {leak} | {fmt(get(lambda s: s['train_minutes']), 1)} |"
        )

    for s in seeds:
        evaluations = "1 + 1 leak-free" if s["test_evaluations"] == 1 else str(s["test_evaluations"])
        lines.append(row(s["seed"], lambda f, s=s: [f(s)], lambda v, d=2: f"{v[0]:.{d}f}") + f" {evaluations} |")
    if len(seeds) > 1:

        def mean_std(v, d=2):  # the headline figures (3 decimals) with their std, the rest as means
            return f"{statistics.fmean(v):.{d}f}" + (f" ± {statistics.stdev(v):.{d}f}" if d == 3 else "")

        lines.append(row("mean ± std", lambda f: [f(s) for s in seeds], mean_std) + " |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--table", metavar="QUALITY_JSON", help="only print the per-seed markdown table of a result")
    ap.add_argument("--data")
    ap.add_argument("--out", default="runs/quality")
    ap.add_argument("--recipe", default=str(ROOT / "recipes" / "mri.toml"))
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--result", default=str(ROOT / "docs" / "results" / "quality.json"))
    ap.add_argument(
        "--set",
        dest="sets",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="config override for every seed, e.g. threads=1 while sharing the machine",
    )
    args = ap.parse_args(argv)
    if args.table:
        print(table(json.loads(Path(args.table).read_text())))
        return 0
    if not args.data:
        ap.error("--data is required")
    out = Path(args.out)
    leak_dir = out / "audit"
    if not (leak_dir / "leak_free_test.csv").is_file():
        run_audit(args.data, out=leak_dir)
    manifest = leak_dir / "leak_free_test.csv"

    seeds = []
    for seed in args.seeds:
        run = out / f"seed{seed}"
        cfg = Config.load(args.recipe).update({"path": args.data, "seed": seed, **parse_sets(args.sets)})
        t0 = time.process_time()
        summary = resume(run) if (run / "config.toml").is_file() else fit(cfg, run)
        official, leak_free = _test_once(run, args.data, None), _test_once(run, args.data, manifest)
        cpu_file = run / "cpu_minutes.json"  # summed over the calls that worked on this run (resumes included)
        prior = json.loads(cpu_file.read_text())["cpu_minutes"] if cpu_file.is_file() else 0.0
        cpu_file.write_text(json.dumps({"cpu_minutes": prior + (time.process_time() - t0) / 60}))
        wall_min = summary.get("wall_s", 0) / 60
        seeds.append(
            {
                "seed": seed,
                "run": str(run),
                "val_macro_f1": summary["best_val_f1"],
                "best_epoch": summary["best_epoch"],
                "test_macro_f1": official["macro_f1"],
                "test_accuracy": official["accuracy"],
                "per_class_recall": {c: m["recall"] for c, m in official["per_class"].items()},
                "confusion_matrix": official["confusion_matrix"],
                "leak_free_accuracy": leak_free["accuracy"],
                "leak_free_macro_f1": leak_free["macro_f1"],
                "leak_free_n": leak_free["n_images"],
                "leak_free_per_class_recall": {
                    c: m["recall"] for c, m in leak_free["per_class"].items() if m["support"]
                },
                "train_minutes": wall_min,
                "cpu_minutes": json.loads(cpu_file.read_text())["cpu_minutes"],
                "test_evaluations": official["evaluation_number"],
            }
        )
        print(json.dumps(seeds[-1]), flush=True)

    def mean_std(key):
        vals = [s[key] for s in seeds]
        return {"mean": statistics.fmean(vals), "std": statistics.stdev(vals) if len(vals) > 1 else 0.0}

    result = {
        "recipe": str(Path(args.recipe).relative_to(ROOT)) if Path(args.recipe).is_relative_to(ROOT) else args.recipe,
        "command": "python benchmarks/quality.py --data "
        + args.data
        + " --out "
        + args.out
        + " --seeds "
        + " ".join(map(str, args.seeds))
        + "".join(f" --set {s}" for s in args.sets),
        "machine": machine(),
        "python": platform.python_version(),
        "date": time.strftime("%Y-%m-%d"),
        "seeds": seeds,
        "summary": {
            k: mean_std(k)
            for k in (
                "val_macro_f1",
                "test_macro_f1",
                "test_accuracy",
                "leak_free_accuracy",
                "train_minutes",
                "cpu_minutes",
            )
        },
    }
    Path(args.result).write_text(json.dumps(result, indent=2))
    print(json.dumps(result["summary"], indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
