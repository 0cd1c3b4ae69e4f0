"""`make demo`: render a small synthetic eclipse set, run the regularization study on it, print the report; then
train a small ResNet told where the Sun is (the set's boxes.csv) and score where its heatmaps point.

Sized to finish in a few minutes on a 2-core laptop CPU; rerunning resumes (finished runs are skipped).
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

from cnnlab.errors import UserError


@click.command()
@click.option("--out", default="demo-out", show_default=True, type=click.Path(), help="Folder for everything.")
@click.option("--per-class", default=150, show_default=True, help="Training images per class.")
@click.option("--epochs", default=15, show_default=True, help="Maximum epochs per run.")
def main(out, per_class, epochs):
    """Synthetic eclipses -> inspect -> regularization study -> report."""
    import cnnlab
    from cnnlab.data.synthetic import synth_eclipse
    from cnnlab.datatools.inspection import format_report

    out = Path(out)
    data = out / "eclipse"
    try:
        synth_eclipse(data, train_per_class=per_class, test_per_class=per_class // 3, size=96, seed=0)
        click.echo(format_report(cnnlab.inspect(data, out=out / "inspect")))
        click.echo("\nregularization study: the assignment's CNN plain, +BatchNorm, +Dropout, +both")
        cnnlab.study(
            "regularization",
            data,
            out=out / "study",
            image_size=64,
            batch_size=32,
            epochs=epochs,
            patience=5,
            log=click.echo,
        )
        where = box_guided(data, out / "boxed", epochs)
    except UserError as e:
        click.echo(f"error: {e}", err=True)
        sys.exit(2)
    click.echo(f"\nreport: {out / 'study' / 'report.md'} (and report.html, self-contained)")
    click.echo(f"curves of each run: {out / 'study' / 'runs'}/*/curves.png")
    click.echo(f"where the box-guided model looks: {where}/explain.md, hits.png, misses.png")


def box_guided(data: Path, out: Path, epochs: int) -> Path:
    """A box-guided ResNet on the set (boxes.csv: the Sun's disk), then its pointing game on the test images."""
    import cnnlab
    from cnnlab.data.folders import scan
    from cnnlab.data.manifest import write_manifest

    click.echo("\nbox-guided training: a small ResNet whose class evidence is asked to lie on the Sun (boxes.csv)")
    run_dir = out / "run"
    if (run_dir / "config.toml").is_file():  # a rerun: finished runs are kept, interrupted ones continue
        run = cnnlab.load(run_dir).resume(log=click.echo)
    else:
        run = cnnlab.train(
            data, out=run_dir, model="resnet", width=16, depth=1, image_size=64, batch_size=32,
            epochs=epochs, output_stride=8, boxes=str(data / "boxes.csv"), log=click.echo,
        )  # fmt: skip
    manifest = out / "test.csv"
    write_manifest(scan(data, warn=False), manifest, splits=("test",))
    r = run.localisation(data / "boxes.csv", data=data, manifest=manifest, out=out / "explain")
    b = r["baselines"]
    click.echo(
        f"pointing game on the {r['n_images']} test images: {r['pointing_game']:.3f} (with tolerance "
        f"{r['pointing_game_tol']:.3f}); centre {b['centre']:.3f}, class prior {b['class_prior']:.3f}, "
        f"random {b['random']:.3f}"
    )
    return out / "explain"


if __name__ == "__main__":
    main()
