"""`cnnlab train` (and `--resume`), `cnnlab test` and `cnnlab predict` (a run, or a FILE.onnx on onnxruntime alone).
Heavy imports (torch) happen inside commands so `--help` stays fast."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from cnnlab.errors import UserError

# ------------------------------------------------------------------------------------- training


@click.command()
@click.option(
    "--config",
    "config_file",
    type=click.Path(),
    help="TOML config, or a shipped recipe by name (assignment, mri); flags and --set override it.",
)
@click.option(
    "--data",
    help="Dataset root (train/test or Training/Testing split folders, or a class tree), or a label file LABELS.csv "
    "(path,label[,split,group]).",
)
@click.option(
    "--model",
    help="simple, simple-bn, simple-dropout, simple-bn-dropout, mlp, adaptive, resnet; torchvision:NAME or "
    "timm:NAME (from scratch); package.module:builder (your own).",
)
@click.option("--epochs", type=int, help="Maximum epochs (early stopping may end sooner).")
@click.option("--image-size", type=int, help="Input side in pixels.")
@click.option("--batch-size", type=int)
@click.option("--optimizer", help="sgd, adam, adamw, rmsprop, adagrad.")
@click.option("--lr", type=float, help="Learning rate.")
@click.option("--device", help="auto (default), cpu, cuda, cuda:N.")
@click.option("--dedupe", is_flag=True, default=None, help="Keep duplicate groups on one side of the split.")
@click.option("--strict", is_flag=True, default=None, help="Unusable files are an error, not a warning.")
@click.option("--class-map", help="test_name=train_name,... when test folders are named differently.")
@click.option("--cache-dir", help="Decode cache folder (default: the user cache).")
@click.option("--set", "sets", multiple=True, metavar="KEY=VALUE", help="Any config field (repeatable).")
@click.option("--out", type=click.Path(), help="Run folder (default runs/<model>-<time>).")
@click.option("--resume", type=click.Path(), help="Continue the run in this folder from its last epoch.")
@click.option("-q", "--quiet", is_flag=True, help="No progress bar or per-epoch lines.")
@click.option("--force", is_flag=True, help="Write into an existing non-empty --out that holds no run.")
@click.option(
    "--procs",
    type=int,
    help="Train data-parallel over N processes on this machine (torchrun: DDP, gloo on the CPU, NCCL on GPUs); "
    "the batch size stays the whole batch, each process takes its share.",
)
@click.option("--nnodes", type=int, default=1, show_default=True, help="With --procs: machines taking part.")
@click.option("--node-rank", type=int, help="With --nnodes > 1: this machine's number, 0 to nnodes - 1.")
@click.option("--rdzv-endpoint", metavar="HOST:PORT", help="With --nnodes > 1: where the machines meet (torchrun).")
def train(
    config_file,
    data,
    model,
    epochs,
    image_size,
    batch_size,
    optimizer,
    lr,
    device,
    dedupe,
    strict,
    class_map,
    cache_dir,
    sets,
    out,
    resume,
    quiet,
    force,
    procs,
    nnodes,
    node_rank,
    rdzv_endpoint,
):
    """Train one model from scratch; writes config.toml, split.csv, history.csv, curves.png, checkpoints.

    \b
    Examples:
      cnnlab train --data /tmp/ecl --model simple-bn-dropout --image-size 64 --epochs 10 --out runs/r1
      cnnlab train --config recipes/mri.toml --data ../shared/datasets/brain-tumor-mri --set seed=1 --out R
      cnnlab train --resume runs/r1        # after Ctrl-C, SIGTERM or kill -9
      cnnlab train --procs 2 --data /tmp/ecl --batch-size 64 --out runs/r2   # torchrun, 2 ranks x 32
    """
    from cnnlab import api
    from cnnlab.training import distributed

    params = click.get_current_context().params
    flags = {field: params[name] for name, field in _FLAG_FIELDS.items()}  # the config field of each flag
    if resume:
        _refuse_changes_on_resume()
        out = Path(resume)
        run = lambda: api.load(out).resume(progress=not quiet, log=click.echo)  # noqa: E731
    else:
        from cnnlab.config import parse_sets
        from cnnlab.training.checks import make_config

        cfg = make_config(config_file, flags, parse_sets(sets))  # --set wins over the flags
        out = Path(out or api.default_out(cfg))
        if distributed.launched():  # every rank writes to rank 0's folder, named by its clock
            out = Path(distributed.join(cfg.train.device).broadcast(str(out)))
        run = lambda: api.train(config=cfg, out=out, progress=not quiet, log=click.echo, force=force)  # noqa: E731
    if procs is not None and not distributed.launched():
        torchrun = distributed.torchrun_args(procs, nnodes, node_rank, rdzv_endpoint)
        sys.exit(distributed.launch(torchrun, _worker_argv(out, resume)))
    _run_and_report(run, out)


def _run_and_report(run, out: Path) -> None:
    """Train (`run`), then one line of its result; from rank 0 alone in a data-parallel run."""
    from cnnlab.training import distributed

    try:
        summary = run().summary
    except KeyboardInterrupt:
        if distributed.current().main:
            click.echo(_interrupted_advice(out), err=True)
        sys.exit(130)
    if distributed.current().main:
        click.echo(
            f"run {out}: best val macro-F1 {summary['best_val_f1']:.4f} at epoch {summary['best_epoch']} "
            f"of {summary['epochs']}; curves in {out / 'curves.png'}"
        )


_FLAG_FIELDS = {
    "data": "data.path",
    "model": "model.model",
    "epochs": "train.epochs",
    "image_size": "data.image_size",
    "batch_size": "train.batch_size",
    "optimizer": "optim.optimizer",
    "lr": "optim.lr",
    "device": "train.device",
    "dedupe": "data.dedupe",
    "strict": "data.strict",
    "class_map": "data.class_map",
    "cache_dir": "data.cache_dir",
}


def _worker_argv(out: Path, resume) -> list[str]:
    """The `cnnlab train` options every rank runs: those given on this command line but the launcher's, and --out
    (the one folder, whatever each rank's clock says)."""
    ctx = click.get_current_context()
    argv = []
    for p in ctx.command.params:
        if p.name in ("procs", "nnodes", "node_rank", "rdzv_endpoint", "out", "resume"):
            continue
        if ctx.get_parameter_source(p.name) != click.core.ParameterSource.COMMANDLINE:
            continue
        value, flag = ctx.params[p.name], max(p.opts, key=len)
        if getattr(p, "is_flag", False):
            argv += [flag] if value else []
        else:
            argv += [x for v in (value if p.multiple else [value]) for x in (flag, str(v))]
    return [*argv, "--resume" if resume else "--out", str(out)]


def _refuse_changes_on_resume() -> None:
    """--resume continues a run as it was configured: any other option given on the command line is an error."""
    ctx = click.get_current_context()
    given = [
        max(p.opts, key=len)
        for p in ctx.command.params
        if p.name not in ("resume", "quiet", "procs", "nnodes", "node_rank", "rdzv_endpoint")
        and ctx.get_parameter_source(p.name) == click.core.ParameterSource.COMMANDLINE
    ]
    if given:
        raise UserError(
            f"--resume continues a run exactly as it was configured: {', '.join(given)} cannot "
            "change it (start a new run with --out to train differently)"
        )


def _interrupted_advice(out: Path) -> str:
    from cnnlab.training import run_folder

    if run_folder.is_run(out):
        return f"interrupted; continue with: cnnlab train --resume {out}"
    return "interrupted before the run started: nothing was written; run the same command again to start it"


@click.command("test")
@click.argument("run", type=click.Path())
@click.option("--data", help="Dataset root or label file (default: the run's own).")
@click.option("--manifest", type=click.Path(), help="Score only the images listed (CSV: path,class[,split]).")
@click.option("--class-map", help="test_name=train_name,... when test folders are named differently.")
@click.option("--json", "as_json", is_flag=True, help="Print the full result as JSON.")
def test_cmd(run, data, manifest, class_map, as_json):
    """Score a run's best checkpoint once on the test split (or a manifest); writes RUN/tests/NAME/test.json.

    Use it once, for the final choice: every evaluation is counted in the run folder, and a repeat warns.

    \b
    Example:
      cnnlab test runs/r1 --data /tmp/ecl
      cnnlab test runs/r1 --data DATA --manifest audit/leak_free_test.csv
    """
    from cnnlab.evaluation.testing import RESULT, run_test

    r, folder = run_test(Path(run), data, manifest, class_map)
    if as_json:
        click.echo(json.dumps(r, indent=2))
        return
    click.echo(
        f"{r['split']}: {r['n_images']} images  macro-F1 {r['macro_f1']:.4f}  accuracy {r['accuracy']:.4f}"
        f"  (evaluation #{r['evaluation_number']} of this split)"
    )
    width = max(len(c) for c in r["per_class"])
    click.echo(f"  {'class':<{width}}  precision  recall     f1  support")
    for c, m in r["per_class"].items():
        click.echo(f"  {c:<{width}}  {m['precision']:9.3f} {m['recall']:7.3f} {m['f1']:6.3f} {m['support']:8d}")
    click.echo(f"wrote {folder / RESULT}, test_predictions.csv, test_confusion.png and test_errors.png")


@click.command()
@click.argument("run", type=click.Path())
@click.argument("paths", nargs=-1, required=True)
@click.option("--json", "as_json", is_flag=True, help="A JSON list of {path, label, probs}.")
@click.option("--csv", "as_csv", is_flag=True, help="CSV: path, label, one probability column per class.")
def predict(run, paths, as_json, as_csv):
    """Classify images or folders of images (or a label file's test rows) with a run's best checkpoint, or with a
    FILE.onnx from `cnnlab export` (on onnxruntime alone: no torch needed).

    \b
    Example:
      cnnlab predict runs/r1 photo.jpg more_photos/ --json
      cnnlab predict runs/r1 labels.csv       # the files of its test rows
      cnnlab predict model.onnx photo.jpg --csv
    """
    if run.lower().endswith(".onnx") and not Path(run).is_dir():  # before anything imports torch
        from cnnlab.export.onnx_runtime import predict_onnx

        rows = predict_onnx(Path(run), list(paths))
    else:
        from cnnlab.evaluation.prediction import predict_files

        rows = predict_files(Path(run), list(paths))
    classes = list(rows[0]["probs"])
    if as_json:
        click.echo(json.dumps(rows, indent=2))
    elif as_csv:
        import csv

        w = csv.writer(sys.stdout)
        w.writerow(["path", "label", *classes])
        for r in rows:
            w.writerow([r["path"], r["label"], *(f"{r['probs'][c]:.6f}" for c in classes)])
    else:
        for r in rows:
            click.echo(f"{r['label']:<24} {r['probs'][r['label']]:.3f}  {r['path']}")
