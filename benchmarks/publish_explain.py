"""Publish the lesion-localisation results: docs/results/explain.json (the issue's shape), the validation choices,
the galleries, and figshare-cv-boxes.json with its report.

    python benchmarks/publish_explain.py --posthoc EXPLAIN_DIR --cv CV_DIR --choices CHOICE_DIR [CHOICE_DIR ...] \
        --out docs/results

EXPLAIN_DIR: `cnnlab explain RUN --boxes ... --out EXPLAIN_DIR` of the model trained without boxes, on its held-out
fold (scored once); CV_DIR: `cnnlab cv ... --set boxes=...` (its fold-1/explain/ is the box-guided model on the same
held-out fold, scored once); CHOICE_DIRs: `benchmarks/explain_choice.py` outputs, on the validation fold only.
Copies figures and JSON, never checkpoints.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

from cnnlab.studies.reports import machine

FIGURES = ("pointing_game", "pointing_game_tol", "energy_in_box")


def entry(r: dict) -> dict:
    """The issue's per-model entry from an explain.json."""
    layer = ",".join(r.get("layer_modules") or []) or r.get("layer")
    out = {"method": r["method"], "layer": layer, "n_images": r["n_images"]}
    out |= {"pointing_game": r["pointing_game"], "pointing_game_tol": r["pointing_game_tol"]}
    out |= {"energy": r["energy_in_box"], "accuracy": r.get("accuracy")}
    out["per_class"] = {
        c: {k: v.get(k) for k in ("n", "pointing_game", "pointing_game_tol", "energy_in_box")}
        for c, v in r["per_class"].items()
    }
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--posthoc", type=Path, required=True)
    ap.add_argument("--cv", type=Path, required=True)
    ap.add_argument("--choices", type=Path, nargs="+", default=[])
    ap.add_argument("--fold", default="1")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args(argv)
    post = json.loads((args.posthoc / "explain.json").read_text())
    guided = json.loads((args.cv / f"fold-{args.fold}" / "explain" / "explain.json").read_text())
    finished = (args.cv / "cv.json").is_file()  # the box-guided fold's figures stand before the other folds end
    cv = json.loads((args.cv / "cv.json").read_text()) if finished else None
    fold_cfg = args.cv / f"fold-{args.fold}" / "config.toml"
    b = post["baselines"]
    doc = {
        "n_images": post["n_images"],
        "fold": args.fold,
        "baselines": {
            "random": b["random"],
            "random_tol": b["random_tol"],
            "centre": b["centre"],
            "centre_tol": b["centre_tol"],
            "class_prior": b["class_prior"],
            "class_prior_tol": b["class_prior_tol"],
        },
        "baselines_box_guided_run": guided["baselines"],  # its own decoding and training boxes
        "posthoc": entry(post),
        "box_guided": entry(guided),
        "tolerance_px": post["tolerance_px"],
        "per_class_baselines": {c: v["baselines"] for c, v in post["per_class"].items()},
        "command": {
            "posthoc": f"cnnlab explain {post['run']} --data {post['data']} --boxes {post['boxes']} "
            f"--manifest {post['manifest']} --json --out {args.posthoc}",
            "box_guided": f"cnnlab explain {guided['run']} --data {guided['data']} --boxes {guided['boxes']} "
            f"--manifest {guided['manifest']} --json --out {args.cv / f'fold-{args.fold}' / 'explain'} (the fold's "
            f"run of the box-guided cv, config {fold_cfg})",
        },
        "machine": machine(),
        "date": time.strftime("%Y-%m-%d"),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "explain.json").write_text(json.dumps(doc, indent=2) + "\n")
    gallery = args.out / "explain"
    gallery.mkdir(exist_ok=True)
    for name, src in (("posthoc", args.posthoc), ("box-guided", args.cv / f"fold-{args.fold}" / "explain")):
        for kind in ("hits", "misses"):
            if (src / f"{kind}.png").is_file():
                shutil.copy(src / f"{kind}.png", gallery / f"{name}-{kind}.png")
    choices = [json.loads((d / "choice.json").read_text()) for d in args.choices]
    (args.out / "explain-choice.json").write_text(json.dumps(choices, indent=2) + "\n")
    if finished:
        (args.out / "figshare-cv-boxes.json").write_text(json.dumps(cv, indent=2) + "\n")
        report = args.out / "figshare-cv-boxes"
        report.mkdir(exist_ok=True)
        for name in ("report.md", "confusion.png", "curves.png"):
            shutil.copy(args.cv / name, report / name)
    print(json.dumps({k: doc[k] for k in ("baselines", "posthoc", "box_guided")}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
