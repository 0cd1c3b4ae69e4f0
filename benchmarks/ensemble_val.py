"""Validation macro-F1 of finished runs, alone and with their class probabilities averaged (an ensemble).

    python benchmarks/ensemble_val.py RUN [RUN ...]

The runs must share one data config (the first run's split is used for all). Only validation images are
scored; the test split is never opened.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from sklearn.metrics import f1_score

from cnnlab.evaluation.loading import load_run
from cnnlab.training.loops import predict_logits
from cnnlab.training.preparation import prepare_run_data


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+")
    args = ap.parse_args(argv)
    cfg, ckpt, _ = load_run(args.runs[0])
    val = prepare_run_data(cfg, split_csv=Path(args.runs[0]) / "split.csv", classes=ckpt["classes"]).val
    y = val.labels.numpy()
    probs = []
    for run in args.runs:
        _, _, eng = load_run(run)
        probs.append(predict_logits(eng, val, cfg.train.eval_batch_size).softmax(1))
        print(f"{run}: {f1_score(y, probs[-1].argmax(1).numpy(), average='macro'):.4f}")
    mean = torch.stack(probs).mean(0)
    print(f"ensemble of {len(probs)}: {f1_score(y, mean.argmax(1).numpy(), average='macro'):.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
