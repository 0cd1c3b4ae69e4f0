"""How far validation images are from their nearest training image, for each way of splitting Training.

    python benchmarks/split_distance.py --data ../shared/datasets/brain-tumor-mri [--blocks 10 20 40 80]

Distance: mean absolute difference of 64x64 gray thumbnails (the audit's measure; a near copy is <= 4/255).
Also: the distance between files that are neighbours in name order against random pairs of the same class,
the evidence that files were exported subject by subject. Reads Training only; Testing is never opened.
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np
import torch

from cnnlab.data.duplicates import duplicate_groups, thumbnails
from cnnlab.data.folders import scan
from cnnlab.data.splits import block_split_groups, natural_key, split_train_val


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", required=True)
    ap.add_argument("--fraction", type=float, default=0.3)
    ap.add_argument("--split-seed", type=int, default=42)
    ap.add_argument("--blocks", type=int, nargs="+", default=[10, 20, 40, 80])
    args = ap.parse_args(argv)

    full = scan(args.data, warn=False)
    samples = full.splits["train"]
    thumbs, good = thumbnails(samples, full.root, None)
    row = {full.rel(samples[j].path): i for i, j in enumerate(good)}
    flat = thumbs.float().flatten(1) / 255
    dups = duplicate_groups(full, "train")

    print("| class | neighbours in name order: median distance | random pairs: median |")
    print("|---|---|---|")
    rng = np.random.default_rng(0)
    for label, name in enumerate(full.classes):
        rels = sorted(
            (full.rel(s.path) for s in samples if s.label == label and full.rel(s.path) in row),
            key=lambda r: natural_key(os.path.basename(r)),
        )
        idx = torch.tensor([row[r] for r in rels])
        near = (flat[idx[1:]] - flat[idx[:-1]]).abs().mean(1)
        pairs = torch.from_numpy(rng.choice(len(idx), (1000, 2)))
        far = (flat[idx[pairs[:, 0]]] - flat[idx[pairs[:, 1]]]).abs().mean(1)
        print(f"| {name} | {near.median():.4f} | {far.median():.4f} |")

    print("\n| split | validation images | nearest training image: median distance | share under 0.03 |")
    print("|---|---|---|---|")
    for size in [0, *args.blocks]:
        ds = scan(args.data, warn=False)
        groups = dups if size == 0 else block_split_groups(ds, size, dups)
        split_train_val(ds, args.fraction, args.split_seed, groups)
        tr = torch.tensor([row[ds.rel(s.path)] for s in ds.splits["train"] if ds.rel(s.path) in row])
        va = torch.tensor([row[ds.rel(s.path)] for s in ds.splits["val"] if ds.rel(s.path) in row])
        nearest = torch.cdist(flat[va], flat[tr], p=1).min(1).values / flat.shape[1]
        name = "random, near copies grouped (dedupe)" if size == 0 else f"blocks of {size} + dedupe"
        print(f"| {name} | {len(va)} | {nearest.median():.4f} | {(nearest < 0.03).float().mean():.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
