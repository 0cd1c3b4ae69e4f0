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
@click.option("--class-map", help="Map test class folders to train ones: test_name=train_name,...")
def audit(dataset, as_json, out, threshold, cache_dir, class_map):
    """Find exact and near duplicates, label conflicts, and test images copied from train.

    Exact copies share their bytes (SHA-256); near copies are the same picture re-encoded or resized
    (compared on 64x64 gray thumbnails, all pairs). leak_free_test.csv lists the test images with no copy
    in train, for `cnnlab test RUN --manifest`. Nothing is written into the dataset.

    \b
    Example:
      cnnlab data audit ../shared/datasets/brain-tumor-mri --out audit/
      cnnlab test runs/r1 --data ../shared/datasets/brain-tumor-mri --manifest audit/leak_free_test.csv
      cnnlab data audit /tmp/ecl --json --threshold 3
    """
    from cnnlab.audit import audit as run_audit
    from cnnlab.audit import format_audit
    from cnnlab.errors import UserError

    if not 0 <= threshold < 255:
        raise UserError(f"--threshold must be a gray-level distance from 0 to 255, got {threshold:g}")
    report = run_audit(dataset, threshold=threshold / 255, cache_dir=cache_dir, out=out, class_map=class_map)
    if as_json:
        click.echo(json.dumps({k: v for k, v in report.items() if k != "groups"}, indent=2))
    else:
        click.echo(format_audit(report))
