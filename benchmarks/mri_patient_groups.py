"""A group file that keeps the MRI set's patients apart, from its copies of the figshare set.

    cnnlab data audit ../shared/datasets/brain-tumor-mri --against ../shared/datasets/figshare-brain-tumor \
        --class-map glioma=glioma_tumor,meningioma=meningioma_tumor,pituitary=pituitary_tumor --out AUDIT
    python benchmarks/mri_patient_groups.py --copies AUDIT/against_copies.csv \
        --folds ../shared/datasets/figshare-brain-tumor/folds.csv --out groups.csv
    cnnlab train --config mri --data ../shared/datasets/brain-tumor-mri --set split=groups \
        --set group_file=groups.csv --out R

Every MRI Training image that is a copy of a figshare image joins the group of that image's figshare fold: the
folds keep each patient's slices together, so a validation made of whole groups holds out whole patients. The other
Training images (no_tumor, and the tumours from other sources) are not listed: `split = groups` keeps them in runs
of `block_size` files in name order, as the blocked split does. An MRI image whose copies lie in different folds
joins the first, and is counted.
"""

from __future__ import annotations

import argparse
import csv
import sys
from collections import Counter


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--copies", required=True, help="against_copies.csv of `cnnlab data audit --against`")
    ap.add_argument("--folds", required=True, help="the figshare set's folds.csv (path,class,fold)")
    ap.add_argument("--out", required=True)
    args = ap.parse_args(argv)
    with open(args.folds, newline="") as f:
        fold_of = {row["path"]: row["fold"] for row in csv.DictReader(f)}
    groups: dict[str, str] = {}
    split_folds = 0
    with open(args.copies, newline="") as f:
        for row in csv.DictReader(f):
            if row["split"] != "train" or row["other_path"] not in fold_of:
                continue
            group = f"figshare-fold-{fold_of[row['other_path']]}"
            if groups.setdefault(row["path"], group) != group:
                split_folds += 1
    with open(args.out, "w", newline="") as f:
        csv.writer(f).writerows([("path", "group"), *sorted(groups.items())])
    sizes = Counter(groups.values())
    print(
        f"{args.out}: {len(groups)} Training images in {len(sizes)} groups "
        f"({', '.join(f'{g} {n}' for g, n in sorted(sizes.items()))}); {split_folds} copies in a second fold"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
