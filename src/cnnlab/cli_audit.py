"""`cnnlab data audit`: duplicates, label conflicts and train/test leakage (registered by cnnlab.cli)."""

from __future__ import annotations

import json

import click


@click.command("audit")
@click.argument("dataset")
@click.option("--json", "as_json", is_flag=True,
              help="Print the summary as JSON (the group listing goes to audit.json).")
@click.option("--out", type=click.Path(), help="Folder for audit.json, leak_free_test.csv, the distance "
              "histogram and galleries of the largest and of every cross-label group.")
@click.option("--threshold", type=float, default=4.0, show_default=True,
              help="Near copy: mean absolute difference, in gray levels (0-255), between 64x64 gray "
                   "thumbnails. The default sits in the gap of the MRI data's distance histogram.")
@click.option("--cache-dir", type=click.Path(), help="Decode cache folder (default: the user cache).")
@click.option("--class-map", help="Map class names to DATASET's train classes: its test folders "
              "(test_name=train_name,...) and, with --against, the other data set's classes (other_name=name,...).")
@click.option("--against", "other", metavar="OTHER",
              help="Also find the copies of DATASET's images in the data set OTHER, and the label conflicts "
                   "among them (against_copies.csv, gallery_against_conflicts.png).")
def audit(dataset, as_json, out, threshold, cache_dir, class_map, other):
    """Find exact and near duplicates, label conflicts, and test images copied from train.

    Exact copies share their bytes (SHA-256); near copies are the same picture re-encoded or resized
    (compared on 64x64 gray thumbnails, all pairs). leak_free_test.csv lists the test images with no copy
    in train, for `cnnlab test RUN --manifest`. With --against OTHER, the same comparison between the two
    data sets (cross pairs only): copies, and copies filed under a different class. Nothing is written into
    either data set.

    \b
    Example:
      cnnlab data audit ../shared/datasets/brain-tumor-mri --out audit/
      cnnlab test runs/r1 --data ../shared/datasets/brain-tumor-mri --manifest audit/leak_free_test.csv
      cnnlab data audit /tmp/ecl --json --threshold 3
      cnnlab data audit ../shared/datasets/brain-tumor-mri --against ../shared/datasets/figshare-brain-tumor \\
          --class-map glioma=glioma_tumor,meningioma=meningioma_tumor,pituitary=pituitary_tumor --out /tmp/a
    """
    from cnnlab.audit import audit as run_audit
    from cnnlab.audit import format_audit
    from cnnlab.errors import UserError

    if not 0 <= threshold < 255:
        raise UserError(f"--threshold must be a gray-level distance from 0 to 255, got {threshold:g}")
    extra = []
    if other is None:
        report = run_audit(dataset, threshold=threshold / 255, cache_dir=cache_dir, out=out, class_map=class_map)
    else:
        from cnnlab.crossaudit import audit_against, format_against

        report = audit_against(dataset, other, threshold=threshold / 255, cache_dir=cache_dir, out=out,
                               class_map=class_map)
        extra = format_against(report)
    if as_json:
        click.echo(json.dumps({k: v for k, v in report.items() if k != "groups"}, indent=2))
    else:
        click.echo(format_audit(report, extra))
