"""`make demo`: render a small synthetic eclipse set, run the regularization study on it, print the report.

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
    except UserError as e:
        click.echo(f"error: {e}", err=True)
        sys.exit(2)
    click.echo(f"\nreport: {out / 'study' / 'report.md'} (and report.html, self-contained)")
    click.echo(f"curves of each run: {out / 'study' / 'runs'}/*/curves.png")


if __name__ == "__main__":
    main()
