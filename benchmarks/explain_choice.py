"""Choose a heatmap method and layer on VALIDATION images: each candidate's pointing game against tumour boxes.

    python benchmarks/explain_choice.py RUN --data D --boxes B --manifest FOLD.csv --out DIR \
        [--candidates gradcam@default layercam@8 ...] [--split val]

The images scored are the manifest's `--split` rows (default val: for a figshare fold manifest, the validation
fold), never its test rows: the held-out fold is scored once, later, with the method chosen here. Each candidate is
METHOD@LAYER (LAYER: `default`, or module names joined by +, fused). Writes DIR/choice.json (every candidate's
`cnnlab explain --boxes` figures) and prints a markdown table, best strict pointing game first.
"""

from __future__ import annotations

import argparse
import csv
import json
import time
from pathlib import Path

from cnnlab.explain.heatmaps import localisation
from cnnlab.studies.reports import machine

DEFAULT = ["gradcam@default", "gradcam@8", "layercam@default", "layercam@8", "layercam@8+10", "gradcam++@8"]


def as_test_rows(manifest: Path, split: str, out: Path) -> Path:
    """The manifest's `split` rows relabelled as test rows (what `localisation` scores), in OUT/scored.csv."""
    with open(manifest, newline="", encoding="utf-8") as f:
        rows = [r for r in csv.DictReader(f) if r.get("split") == split]
    if not rows:
        raise SystemExit(f"{manifest} has no {split} rows")
    path = out / "scored.csv"
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(["path", "class", "split"])
        w.writerows([r["path"], r["class"], "test"] for r in rows)
    return path


def figures(r: dict) -> dict:
    b = r.get("baselines", {})
    return {
        "n_images": r["n_images"],
        "pointing_game": r["pointing_game"],
        "pointing_game_tol": r.get("pointing_game_tol"),
        "energy": r["energy_in_box"],
        "centre": b.get("centre"),
        "class_prior": b.get("class_prior"),
        "per_class": {c: v["pointing_game"] for c, v in r["per_class"].items()},
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", type=Path)
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--boxes", type=Path, required=True)
    ap.add_argument("--manifest", type=Path, required=True)
    ap.add_argument("--split", default="val")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--candidates", nargs="+", default=DEFAULT)
    args = ap.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    scored = as_test_rows(args.manifest, args.split, args.out)
    results = []
    for cand in args.candidates:
        method, _, layer = cand.partition("@")
        layer = None if layer in ("", "default") else layer.replace("+", ",")
        t0 = time.perf_counter()
        r = localisation(args.run, args.boxes, data=args.data, manifest=scored, method=method, layer=layer)
        results.append({"method": method, "layer": layer or "default", **figures(r)})
        results[-1]["seconds"] = round(time.perf_counter() - t0, 1)
        print(f"{cand}: {results[-1]['pointing_game']:.3f} (tol {results[-1]['pointing_game_tol']:.3f})", flush=True)
    results.sort(key=lambda r: -r["pointing_game"])
    doc = {
        "run": str(args.run),
        "scored": f"{args.manifest} rows with split = {args.split}",
        "candidates": results,
        "command": "python benchmarks/explain_choice.py " + " ".join(map(str, argv or __import__("sys").argv[1:])),
        "machine": machine(),
        "date": time.strftime("%Y-%m-%d"),
    }
    (args.out / "choice.json").write_text(json.dumps(doc, indent=2) + "\n")
    print("| method | layer | pointing game | with tolerance | energy in box | centre | class prior |")
    print("|---|---|---|---|---|---|---|")
    for r in results:
        print(
            f"| {r['method']} | {r['layer']} | {r['pointing_game']:.3f} | {r['pointing_game_tol']:.3f} | "
            f"{r['energy']:.3f} | {r['centre']:.3f} | {r['class_prior']:.3f} |"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
