"""`cnnlab data`: `inspect`, `synth-eclipse` and `audit` (with `--against`), over the datatools and data packages.
Heavy imports (torch) happen inside commands so `--help` stays fast."""

from __future__ import annotations

import json

import click

from cnnlab.cli.main import _Group


@click.group(cls=_Group)
def data():
    """Look at, generate and audit datasets (cnnlab never writes into a dataset folder).

    \b
    Examples:
      cnnlab data inspect ../shared/datasets/brain-tumor-mri --out look/
      cnnlab data audit ../shared/datasets/brain-tumor-mri --out audit/
      cnnlab data synth-eclipse /tmp/ecl --train-per-class 200
    """


# ------------------------------------------------------------------------------------------ data


@data.command("inspect")
@click.argument("dataset")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@click.option("--out", type=click.Path(), help="Folder for contact sheets (one PNG per split).")
@click.option("--cache-dir", type=click.Path(), help="Decode cache folder (default: the user cache).")
@click.option("--class-map", help="Map test class folders to train ones: test_name=train_name,...")
def data_inspect(dataset, as_json, out, cache_dir, class_map):
    """Counts per split and class, image sizes and modes, unusable files, sample images.

    \b
    Example:
      cnnlab data inspect ../shared/datasets/brain-tumor-mri --out look/
      cnnlab data inspect /tmp/ecl --json
    """
    from cnnlab.api import inspect
    from cnnlab.datatools.inspection import format_report

    report = inspect(dataset, out=out, class_map=class_map, cache_dir=cache_dir)
    click.echo(json.dumps(report, indent=2) if as_json else format_report(report))


@data.command("synth-eclipse")
@click.argument("out", type=click.Path())
@click.option("--train-per-class", default=200, show_default=True, help="Training images per class.")
@click.option("--test-per-class", default=50, show_default=True, help="Test images per class.")
@click.option("--size", default=128, show_default=True, help="Side of the square images, in pixels.")
@click.option("--seed", default=0, show_default=True, help="Same seed, byte-identical files.")
def data_synth(out, train_per_class, test_per_class, size, seed):
    """Render the synthetic solar-eclipse set (annular, partial, total) in the real set's layout.

    Also writes OUT/boxes.csv: the Sun's disk box of every image (path,cx,cy,w,h: centre and size relative to
    the image, the YOLO convention, after the augmentation). Rerunning on an older set adds it.

    \b
    Example:
      cnnlab data synth-eclipse /tmp/ecl --train-per-class 300 --test-per-class 60
    """
    from cnnlab.data.synthetic import synth_eclipse

    summary = synth_eclipse(out, train_per_class, test_per_class, size=size, seed=seed, progress=True)
    click.echo(f"wrote {out}: " + json.dumps(summary.get("counts", summary)))


@data.command("audit")
@click.argument("dataset")
@click.option(
    "--json", "as_json", is_flag=True, help="Print the summary as JSON (the group listing goes to audit.json)."
)
@click.option(
    "--out",
    type=click.Path(),
    help="Folder for audit.json, leak_free_test.csv, the distance "
    "histogram and galleries of the largest and of every cross-label group.",
)
@click.option(
    "--threshold",
    type=float,
    default=4.0,
    show_default=True,
    help="Near copy: mean absolute difference, in gray levels (0-255), between 64x64 gray "
    "thumbnails. The default sits in the gap of the MRI data's distance histogram.",
)
@click.option("--cache-dir", type=click.Path(), help="Decode cache folder (default: the user cache).")
@click.option(
    "--class-map",
    help="Map class names to DATASET's train classes: its test folders "
    "(test_name=train_name,...) and, with --against, the other data set's classes (other_name=name,...).",
)
@click.option(
    "--against",
    "other",
    metavar="OTHER",
    help="Also find the copies of DATASET's images in the data set OTHER, and the label conflicts "
    "among them (against_copies.csv, gallery_against_conflicts.png).",
)
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
    from cnnlab.datatools.audit import format_audit, run_audit
    from cnnlab.errors import UserError

    if not 0 <= threshold < 255:
        raise UserError(f"--threshold must be a gray-level distance from 0 to 255, got {threshold:g}")
    extra = []
    if other is None:
        report = run_audit(dataset, threshold=threshold / 255, cache_dir=cache_dir, out=out, class_map=class_map)
    else:
        from cnnlab.datatools.audit_against import audit_against, format_against

        report = audit_against(
            dataset, other, threshold=threshold / 255, cache_dir=cache_dir, out=out, class_map=class_map
        )
        extra = format_against(report)
    if as_json:
        click.echo(json.dumps({k: v for k, v in report.items() if k != "groups"}, indent=2))
    else:
        click.echo(format_audit(report, extra))
