"""`cnnlab study` and `cnnlab cv`, thin layers over `api.study` and `api.cv`, and the executor options they share
(`--jobs`, `--executor`, `--address`, `--gpus-per-run`). Heavy imports happen inside commands."""

from __future__ import annotations

import sys
from pathlib import Path

import click

lang_option = click.option(
    "--lang",
    type=click.Choice(["en", "ru"]),
    default="en",
    show_default=True,
    help="Language of report.md/report.html and the conclusions.",
)


def config_option(help: str):
    """--config (as `config_file`): a TOML file or a shipped recipe by name."""
    return click.option("--config", "config_file", type=click.Path(), help=help)


def executor_options(f):
    """--jobs, --executor, --address and --gpus-per-run: where the runs of a study or a cross-validation train."""
    for option in reversed(
        [
            click.option(
                "--jobs",
                default="auto",
                show_default=True,
                help="Runs at once, each in a worker process, the cores divided among them; auto: one a core, "
                "up to 4; 1: one after another in this process, with progress bars. With ray, jobs (auto "
                "too) only divides this machine's cores into each run's threads, as it does locally, so "
                "every run has the same config under either executor; Ray runs as many at once as the "
                "cluster's CPUs allow.",
            ),
            click.option(
                "--executor",
                type=click.Choice(["local", "ray"]),
                default="local",
                show_default=True,
                help="Where runs train: this machine, or one Ray task each (pip install cnnlab[ray]).",
            ),
            click.option(
                "--address",
                help="Ray cluster to join (as `ray start` printed it, or auto); default: "
                "$RAY_ADDRESS, a Ray already started on this machine, or a new one on its "
                "cores.",
            ),
            click.option(
                "--gpus-per-run",
                type=float,
                default=0.25,
                show_default=True,
                help="With ray, the share of a GPU each run reserves when its device is cuda or auto on a "
                "cluster with GPUs (0.25: four runs per GPU).",
            ),
        ]
    ):
        f = option(f)
    return f


@click.command()
@click.argument("name")
@click.option("--data", help="Dataset root, or a label file LABELS.csv.")
@click.option(
    "--out",
    type=click.Path(),
    required=True,
    help="Study folder (runs, summary.csv, report); with ray, on a file system every node shares.",
)
@click.option("--epochs", type=int, help="Maximum epochs per run (default 50, early stopping at patience 10).")
@click.option("--set", "sets", multiple=True, metavar="KEY=VALUE", help="Config override for every run.")
@click.option("--param", help="Sweep any field: NAME=v1,v2,... (replaces the lr values of the lr study).")
@click.option("--seeds", default=1, show_default=True, help="Repeat each run with K seeds (mean ± std).")
@click.option(
    "--config",
    "config_file",
    type=click.Path(),
    help="Base config for every run: a TOML file or a recipe name (default: assignment).",
)
@lang_option
@executor_options
def study(name, data, out, epochs, sets, param, jobs, seeds, config_file, lang, executor, address, gpus_per_run):
    """Run a comparison study (or resume one): summary.csv, overlay plot, report.md and report.html.

    NAME is one of regularization, optimizers, lr, overfitting, imbalance, architecture, activations,
    assignment (all of the assignment's stages in order, each winner chosen on validation, then one test),
    or a study TOML file with a [base] table and one [runs.NAME] table per run.
    The base is the assignment's recipe (recipes/assignment.toml: simple-bn-dropout, 128 px, batch 256,
    Adam 1e-3, class weights, 50 epochs, patience 10) unless --config names another.
    Every run's config is checked before the first run trains.

    With --executor ray, every run is a Ray task (retried, and resumed from its last checkpoint, if its worker
    dies). The dataset and --out must be at the same path on every node: a shared file system.

    \b
    Examples:
      cnnlab study regularization --data /tmp/ecl --out S --epochs 20 --set image_size=64
      cnnlab study lr --data D --out S --param momentum=0.5,0.9,0.95,0.99 --set optimizer=sgd
      cnnlab study assignment --data ../shared/datasets/brain-tumor-mri --out runs/assignment --jobs 2
      cnnlab study my_study.toml --data D --out S --seeds 3
      cnnlab study regularization --data /shared/ecl --out /shared/S --executor ray --address 10.0.0.1:6379
    """
    from cnnlab import api
    from cnnlab.config import parse_sets

    api.study(
        name,
        data,
        out=out,
        seeds=seeds,
        jobs=jobs,
        config=config_file,
        param=param,
        executor=executor,
        address=address,
        gpus_per_run=gpus_per_run,
        lang=lang,
        log=click.echo,
        **{"train.epochs": epochs, **parse_sets(sets)},
    )
    out = Path(out)
    click.echo(f"report: {out / 'report.md'} and {out / 'report.html'}")


@click.command()
@click.option(
    "--config",
    "config_file",
    type=click.Path(),
    help="Config of every fold's run: a TOML file or a recipe name (default: cnnlab train's defaults).",
)
@click.option("--data", required=True, help="Dataset root, or a label file LABELS.csv.")
@click.option(
    "--folds",
    "folds_csv",
    type=click.Path(),
    help="CSV with the columns path (relative to --data), class, fold; without it, --set split=groups deals the "
    "data set's groups (a label file's group column, a group_file) into --n-folds folds.",
)
@click.option("--n-folds", type=int, default=5, show_default=True, help="Folds made from groups (no --folds).")
@click.option("--out", type=click.Path(), required=True, help="Folder for the folds' runs, cv.json and the report.")
@click.option("--epochs", type=int, help="Maximum epochs per fold.")
@click.option("--set", "sets", multiple=True, metavar="KEY=VALUE", help="Config override for every fold.")
@lang_option
@executor_options
def cv(config_file, data, folds_csv, n_folds, out, epochs, sets, lang, jobs, executor, address, gpus_per_run):
    """Cross-validate on the data set's own folds (e.g. patient-wise): each fold scored once by a run trained on
    the others, validated on another whole fold; cv.json, report.md and report.html. Rerunning resumes.

    \b
    Example:
      cnnlab cv --config mri --data ../shared/datasets/figshare-brain-tumor \\
          --folds ../shared/datasets/figshare-brain-tumor/folds.csv --out runs/figshare-cv --jobs 2
      cnnlab cv --data labels.csv --set split=groups --n-folds 5 --out runs/cv   # by its group column
    """
    import shlex

    from cnnlab import api
    from cnnlab.config import parse_sets

    r = api.cv(
        data,
        folds_csv,
        out=out,
        config=config_file,
        jobs=jobs,
        executor=executor,
        address=address,
        gpus_per_run=gpus_per_run,
        lang=lang,
        log=click.echo,
        command=shlex.join(["cnnlab", *sys.argv[1:]]),
        n_folds=n_folds,
        **{"train.epochs": epochs, **parse_sets(sets)},
    )
    click.echo(
        f"{len(r['folds'])} folds: accuracy {r['mean_accuracy']:.4f} ± {r['std_accuracy']:.4f}, macro-F1 "
        f"{r['mean_macro_f1']:.4f} ± {r['std_macro_f1']:.4f}; report: {Path(out) / 'report.md'}"
    )
