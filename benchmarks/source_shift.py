"""A validation set that shows a source shift, built from the training folder alone, and its scores.

Why: in the MRI Training folder every glioma, and most meningiomas and pituitary tumours, come from one
512x512 source; the Testing folder's tumours come from others. A validation split drawn from Training shows
none of that shift, so it cannot say whether a lever helps a model recognise a tumour from a new source.
Here the off-source images (in a class whose files mostly share one size, the files of any other size:
other scanners, other exports) are all moved to validation, so the model never trains on a tumour from
those sources, and their recall measures transfer to a new source. The test split is never opened.

    # 1. the manifest: a run's validation rows (e.g. a blocked split) plus every off-source training image
    python benchmarks/source_shift.py manifest --data DATA --split-from RUN/split.csv --out shift.csv
    # 2. train on it (any config), then score the runs: in-source macro-F1 and off-source recall
    cnnlab train --config recipes/mri.toml --data DATA --set val_manifest=shift.csv --out R1
    python benchmarks/source_shift.py score --manifest shift.csv --tail 4 R1 [R2 ...]  # needs save_every=1
    # 3. what a run reads from a source's look: its predictions under blur, noise, gamma, ...
    python benchmarks/source_shift.py probe --manifest shift.csv R1
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from sklearn.metrics import f1_score, recall_score

from cnnlab.data.folders import Dataset, scan
from cnnlab.data.manifest import read_manifest
from cnnlab.errors import UserError
from cnnlab.evaluation.loading import load_run
from cnnlab.training.loops import predict_logits
from cnnlab.training.preparation import prepare_run_data
from cnnlab.training.presets import equalize
from cnnlab.training.run_folder import read_config

DOMINANT = 0.8  # a class has one main source when this share of its files has one size


def off_source(ds: Dataset) -> set[str]:
    """Relative paths of the training files whose size differs from their class's dominant size."""
    by_class: dict[int, list[tuple[str, tuple[int, int]]]] = {}
    for s in ds.splits["train"]:
        with Image.open(s.path) as im:
            by_class.setdefault(s.label, []).append((ds.rel(s.path), im.size))
    out = set()
    for label, files in sorted(by_class.items()):
        size, n = Counter(sz for _, sz in files).most_common(1)[0]
        off = [rel for rel, sz in files if sz != size] if n >= DOMINANT * len(files) else []
        print(
            f"{ds.classes[label]}: {n}/{len(files)} files are {size[0]}x{size[1]}; "
            f"{len(off)} off-source" + ("" if off or n >= DOMINANT * len(files) else " (no dominant size)")
        )
        out.update(off)
    return out


def off_paths(manifest) -> set[str]:
    with open(manifest, newline="") as f:
        return {row["path"] for row in csv.DictReader(f) if row.get("source") == "off"}


def write(args) -> int:
    ds = scan(args.data, warn=False)
    listed = read_manifest(Path(args.split_from), ds.root, ds.classes, split="val")
    off = off_source(ds)
    rows = {ds.rel(s.path): ds.classes[s.label] for s in ds.splits["train"] if ds.rel(s.path) in off}
    rows.update((ds.rel(s.path), ds.classes[s.label]) for s in listed)
    with open(args.out, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "class", "split", "source"])
        for rel in sorted(rows):
            w.writerow([rel, rows[rel], "val", "off" if rel in off else "main"])
    print(f"{args.out}: {len(rows)} validation images, {len(off)} of them off-source")
    return 0


def checkpoints(run: Path, args) -> list[str]:
    if not args.tail:
        return [args.checkpoint]
    names = sorted(p.stem for p in run.glob("epoch-*.pt"))
    if len(names) < args.tail:
        raise UserError(
            f"{run} keeps {len(names)} epoch checkpoints, fewer than --tail {args.tail} (train with --set save_every=1)"
        )
    return names[-args.tail :]


_VALIDATION: dict[str, tuple] = {}


def validation(run: Path, off: set[str]):
    """(the run's own validation images, from its split.csv, prepared as this run sees them, class names,
    off-source mask); one decode per data config and split, so runs at other input sizes are each scored at
    their own."""
    cfg = read_config(run)
    key = json.dumps(dataclasses.asdict(cfg.data), sort_keys=True) + (run / "split.csv").read_text()
    if key not in _VALIDATION:
        p = prepare_run_data(cfg, split_csv=run / "split.csv")
        is_off = np.array([p.dataset.rel(s.path) in off for s in p.val.samples])
        _VALIDATION[key] = (p.val, p.dataset.classes, is_off)
    return _VALIDATION[key]


def score(args) -> int:
    off = off_paths(args.manifest)
    which = f"the last {args.tail} epoch checkpoints (mean +- std)" if args.tail else f"{args.checkpoint}.pt"
    print(f"{which} of each run; off-source errors: the classes they were called\n")
    for i, run in enumerate(map(Path, args.runs)):
        val, classes, is_off = validation(run, off)
        y = val.labels.numpy()
        present = sorted(set(y[is_off]))
        if i == 0:
            head = "| run | main macro-F1 | off-source accuracy | " + " | ".join(f"off {classes[c]}" for c in present)
            print(head + " | off-source errors |\n|" + "---|" * (4 + len(present)))
        rows, wrong = [], Counter()
        for name in checkpoints(run, args):
            cfg, _, eng = load_run(run, name)
            pred = predict_logits(eng, val, cfg.train.eval_batch_size).argmax(1).numpy()
            rec = recall_score(y[is_off], pred[is_off], labels=present, average=None, zero_division=0)
            rows.append(
                [f1_score(y[~is_off], pred[~is_off], average="macro"), float((pred[is_off] == y[is_off]).mean()), *rec]
            )
            wrong.update(classes[k] for k in pred[is_off & (pred != y)])
        m, sd = np.mean(rows, 0), np.std(rows, 0)
        cells = [f"{a:.3f}" + (f" +- {b:.3f}" if len(rows) > 1 else "") for a, b in zip(m, sd, strict=True)]
        errs = ", ".join(f"{k} {v / len(rows):.0f}" for k, v in wrong.most_common())
        print(f"| {run.name} | " + " | ".join(cells) + f" | {errs} |")
    return 0


def _probes() -> dict:
    """Perturbations of pixel values in [0, 1]: which one moves the off-source predictions says what the
    model reads from a source's look."""

    def smooth(x, k):
        return F.avg_pool2d(F.pad(x, (k // 2,) * 4, mode="replicate"), k, 1)

    def down_up(x, f):
        small = F.interpolate(x, scale_factor=f, mode="bilinear", antialias=True)
        return F.interpolate(small, size=x.shape[-2:], mode="bilinear")

    return {
        "none": lambda x: x,
        "gamma 0.5 (brighter)": lambda x: x**0.5,
        "gamma 2 (darker)": lambda x: x**2,
        "histogram equalised": equalize,
        "blur 3x3": lambda x: smooth(x, 3),
        "blur 5x5": lambda x: smooth(x, 5),
        "half resolution": lambda x: down_up(x, 0.5),
        "sharpened": lambda x: (x + 1.5 * (x - smooth(x, 3))).clamp(0, 1),
        "gaussian noise 0.05": lambda x: (
            x + 0.05 * torch.randn(x.shape, generator=torch.Generator().manual_seed(0))
        ).clamp(0, 1),
    }


def probe(args) -> int:
    """Predictions on the off-source images, and on as many in-source ones, under each perturbation."""
    off = off_paths(args.manifest)
    run = Path(args.run)
    _, _, eng = load_run(run, args.checkpoint)
    val, classes, is_off = validation(run, off)
    is_off = torch.from_numpy(is_off)
    main = (~is_off).nonzero().flatten()
    main = main[torch.randperm(len(main), generator=torch.Generator().manual_seed(0))[: int(is_off.sum())]]
    print(
        f"{run.name} ({args.checkpoint}.pt): accuracy, and how many images each class was called "
        f"({', '.join(classes)})\n"
    )
    print("| perturbation | off-source accuracy | off-source called | in-source accuracy | in-source called |")
    print("|---|---|---|---|---|")
    for name, fn in _probes().items():
        cells = []
        for idx in (is_off.nonzero().flatten(), main):
            # perturbed, back to uint8 pixels, then the run's own input path (normalisation, channels_last)
            x = eng.eval_input((fn(val.images[idx].float() / 255) * 255).round().to(torch.uint8))
            with torch.no_grad():
                pred = eng.logits(x).argmax(1)
            y = val.labels[idx]
            cells += [
                f"{(pred == y).float().mean():.3f}",
                " / ".join(str(int(v)) for v in torch.bincount(pred, minlength=len(classes))),
            ]
        print(f"| {name} | " + " | ".join(cells) + " |")
    return 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    m = sub.add_parser("manifest", help="write the source-shift validation manifest")
    m.add_argument("--data", required=True)
    m.add_argument("--split-from", required=True, help="a run's split.csv whose val rows are kept")
    m.add_argument("--out", required=True)
    s = sub.add_parser("score", help="score runs trained on the manifest")
    s.add_argument("--manifest", required=True)
    s.add_argument("--checkpoint", default="best", help="best, last or epoch-NNN")
    s.add_argument("--tail", type=int, default=0, help="average over the last K epoch-NNN.pt checkpoints")
    s.add_argument("runs", nargs="+")
    pr = sub.add_parser("probe", help="what a run reads from a source's look: predictions under perturbations")
    pr.add_argument("--manifest", required=True)
    pr.add_argument("--checkpoint", default="last")
    pr.add_argument("run")
    args = ap.parse_args(argv)
    try:
        return {"manifest": write, "score": score, "probe": probe}[args.cmd](args)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code


if __name__ == "__main__":
    sys.exit(main())
