"""`cnnlab lr-find` (the learning-rate range test) and `cnnlab tune` (an Optuna search with pruning), thin layers
over `training.lr_finder.lr_find` and `studies.tuning.tune`. Heavy imports happen inside commands."""

from __future__ import annotations

from pathlib import Path

import click

from cnnlab.cli.study_cmds import config_option, executor_options, lang_option


@click.command("lr-find")
@click.option("--data", help="Dataset root, or a label file LABELS.csv.")
@config_option("The run's config: a TOML file or a recipe name (default: cnnlab train's defaults).")
@click.option("--model", help="Model name, as for cnnlab train.")
@click.option("--image-size", type=int, help="Input side in pixels.")
@click.option("--batch-size", type=int)
@click.option("--optimizer", help="sgd, adam, adamw, rmsprop, adagrad.")
@click.option("--set", "sets", multiple=True, metavar="KEY=VALUE", help="Any config field (repeatable).")
@click.option("--start-lr", type=float, default=1e-7, show_default=True)
@click.option("--end-lr", type=float, default=10.0, show_default=True)
@click.option("--steps", type=int, default=200, show_default=True, help="Training steps (batches) of the test.")
@click.option("--out", type=click.Path(), required=True, help="Folder for lr_find.json and lr_find.png.")
@click.option("-q", "--quiet", is_flag=True, help="No progress bar.")
def lr_find_cmd(data, config_file, model, image_size, batch_size, optimizer, sets, start_lr, end_lr, steps, out, quiet):
    """The learning-rate range test: train a throw-away copy of the run for STEPS batches with the learning rate
    growing from START_LR to END_LR (stopped when the loss diverges), on the run's own data pipeline, model, loss
    and optimizer; suggest the rate where the smoothed loss falls fastest. Writes OUT/lr_find.json
    (suggested_lr, the curve) and OUT/lr_find.png; nothing of a later run depends on it.

    \b
    Example:
      cnnlab lr-find --data /tmp/ecl --model simple-bn --image-size 64 --out lrf
      cnnlab lr-find --config mri --data ../shared/datasets/brain-tumor-mri --out lrf-mri
    """
    from cnnlab.config import parse_sets
    from cnnlab.training.lr_finder import lr_find

    flags = {"model": model, "image_size": image_size, "batch_size": batch_size, "optimizer": optimizer}
    lr_find(
        data,
        out=out,
        config=config_file,
        start_lr=start_lr,
        end_lr=end_lr,
        steps=steps,
        progress=not quiet,
        log=click.echo,
        **{**flags, **parse_sets(sets)},
    )


@click.command()
@click.option("--data", help="Dataset root, or a label file LABELS.csv.")
@config_option("Base config of every trial: a TOML file or a recipe name (default: cnnlab train's defaults).")
@click.option("--out", type=click.Path(), required=True, help="Search folder (trials/, optuna.db, report).")
@click.option("--trials", type=int, required=True, help="Trials in the search (a rerun continues up to this).")
@click.option(
    "--param",
    "params",
    multiple=True,
    required=True,
    help="A searched field: NAME=log:LOW:HIGH (log-uniform), NAME=LOW:HIGH (uniform; integers for an integer "
    "field) or NAME=A,B,... (a choice). Repeatable.",
)
@click.option("--epochs", type=int, help="Maximum epochs of each trial.")
@click.option("--set", "sets", multiple=True, metavar="KEY=VALUE", help="Config override for every trial.")
@click.option(
    "--pruner",
    type=click.Choice(["median", "halving", "none"]),
    default="median",
    show_default=True,
    help="Stop a trial whose validation macro-F1 is below the finished trials' median at the same epoch (after "
    "3 finished, and after a quarter of its epochs), or successive halving, or never.",
)
@click.option(
    "--sampler-seed", type=int, default=0, show_default=True, help="The sampler's seed (--set seed=N: the runs')."
)
@lang_option
@executor_options
def tune(
    data,
    config_file,
    out,
    trials,
    params,
    epochs,
    sets,
    pruner,
    sampler_seed,
    lang,
    jobs,
    executor,
    address,
    gpus_per_run,
):
    """Search settings with Optuna (TPE; pip install cnnlab[tune]): every trial a run under OUT/trials/, scored on
    validation macro-F1 each epoch, pruned when it lags; the test split is never read. JOBS trials run at a
    time (worker processes, or Ray tasks with --executor ray), and a trial's settings and pruning depend on the
    seed and the trial order alone, so the same command gives the same search on either executor. Rerunning
    continues the search (Optuna's storage: OUT/optuna.db); a finished trial is never trained again. Writes
    report.md, report.html, trials.csv, results.json and best.toml (`cnnlab train --config best.toml`).

    \b
    Example:
      cnnlab tune --data /tmp/ecl --out T --trials 16 --epochs 10 --param lr=log:1e-4:1e-1 \\
          --param optimizer=adam,sgd,rmsprop --param dropout=0.0:0.5 --set image_size=64
    """
    from cnnlab.config import parse_sets
    from cnnlab.studies import tuning

    s = tuning.tune(
        data,
        out=out,
        trials=trials,
        params=list(params),
        config=config_file,
        jobs=jobs,
        executor=executor,
        address=address,
        gpus_per_run=gpus_per_run,
        pruner=pruner,
        sampler_seed=sampler_seed,
        lang=lang,
        log=click.echo,
        **{"train.epochs": epochs, **parse_sets(sets)},
    )
    best = s["best"]
    found = f"best: trial {best['trial']}, val macro-F1 {best['value']:.4f}" if best else "no trial finished"
    click.echo(
        f"{s['n_complete']} finished, {s['n_pruned']} pruned, {s['epochs_trained']} epochs; {found}; "
        f"report: {Path(out) / 'report.md'}"
    )
