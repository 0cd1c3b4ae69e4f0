"""The `cnnlab` command line. Heavy imports (torch) happen inside commands so `--help` stays fast."""

from __future__ import annotations

import json
import sys
import warnings
from pathlib import Path

import click

from cnnlab.errors import UserError

_show_warning = warnings.showwarning


def _echo_warning(message, category, filename, lineno, file=None, line=None):
    if "cnnlab" in str(filename):
        click.echo(f"warning: {message}", err=True)
    else:
        _show_warning(message, category, filename, lineno, file, line)


class _Group(click.Group):
    """A click group that turns UserError (and a few OS errors) into one line and exit code 2."""

    def invoke(self, ctx):
        try:
            with warnings.catch_warnings():
                # Library warnings (skipped files, a reused test split) become one stderr line each.
                warnings.simplefilter("always", UserWarning)
                warnings.showwarning = _echo_warning
                return super().invoke(ctx)
        except UserError as e:
            click.echo(f"error: {e}", err=True)
            sys.exit(e.exit_code)
        except click.UsageError as e:  # a bad option value or a missing argument: one line, like any user error
            click.echo(f"error: {e.format_message()}" + (f" (see: {e.ctx.command_path} --help)" if e.ctx else ""),
                       err=True)
            sys.exit(2)
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            sys.exit(130)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="cnnlab")
def main():
    """cnnlab: train CNN image classifiers from scratch on folder-per-class data.

    \b
    Example, end to end on the built-in synthetic eclipse set:
      cnnlab data synth-eclipse /tmp/ecl
      cnnlab data inspect /tmp/ecl --out /tmp/ecl-look
      cnnlab train --data /tmp/ecl --model simple-bn-dropout --epochs 10 --out runs/r1
      cnnlab test runs/r1 --data /tmp/ecl
    """


@main.group(cls=_Group)
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
    from cnnlab.inspection import format_report

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

    \b
    Example:
      cnnlab data synth-eclipse /tmp/ecl --train-per-class 300 --test-per-class 60
    """
    from cnnlab.synth import synth_eclipse

    summary = synth_eclipse(out, train_per_class, test_per_class, size=size, seed=seed, progress=True)
    click.echo(f"wrote {out}: " + json.dumps(summary.get("counts", summary)))


# ------------------------------------------------------------------------------------- training


def build_config(config_file, flags: dict, sets, default=None):
    """The config of a command: the file or recipe (else `default`, else cnnlab's defaults), then the flags, then
    --set; every value checked before the command does anything."""
    from cnnlab.api import make_config
    from cnnlab.config import parse_sets

    return make_config(config_file, default, **{**flags, **parse_sets(sets)})  # --set wins


@main.command()
@click.option("--config", "config_file", type=click.Path(),
              help="TOML config, or a shipped recipe by name (assignment, mri); flags and --set override it.")
@click.option("--data", help="Dataset root (train/test or Training/Testing split folders, or a class tree).")
@click.option("--model", help="simple, simple-bn, simple-dropout, simple-bn-dropout, mlp, adaptive, resnet.")
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
def train(config_file, data, model, epochs, image_size, batch_size, optimizer, lr, device, dedupe, strict,
          class_map, cache_dir, sets, out, resume, quiet, force):
    """Train one model from scratch; writes config.toml, split.csv, history.csv, curves.png, checkpoints.

    \b
    Examples:
      cnnlab train --data /tmp/ecl --model simple-bn-dropout --image-size 64 --epochs 10 --out runs/r1
      cnnlab train --config recipes/mri.toml --data ../shared/datasets/brain-tumor-mri --set seed=1 --out R
      cnnlab train --resume runs/r1        # after Ctrl-C, SIGTERM or kill -9
    """
    from cnnlab import api

    flags = {"data.path": data, "model.model": model, "train.epochs": epochs, "data.image_size": image_size,
             "train.batch_size": batch_size, "optim.optimizer": optimizer, "optim.lr": lr, "train.device": device,
             "data.dedupe": dedupe, "data.strict": strict, "data.class_map": class_map,
             "data.cache_dir": cache_dir}
    if resume:
        ctx = click.get_current_context()
        given = [max(p.opts, key=len) for p in ctx.command.params if p.name not in ("resume", "quiet")
                 and ctx.get_parameter_source(p.name) == click.core.ParameterSource.COMMANDLINE]
        if given:
            raise UserError(f"--resume continues a run exactly as it was configured: {', '.join(given)} cannot "
                            "change it (start a new run with --out to train differently)")
        out = Path(resume)
        run = lambda: api.load(out).resume(progress=not quiet, log=click.echo)  # noqa: E731
    else:
        cfg = build_config(config_file, flags, sets)
        out = Path(out or api.default_out(cfg))
        run = lambda: api.train(config=cfg, out=out, progress=not quiet, log=click.echo, force=force)  # noqa: E731
    try:
        summary = run().summary
    except KeyboardInterrupt:
        click.echo(_interrupted_advice(out), err=True)
        sys.exit(130)
    click.echo(f"run {out}: best val macro-F1 {summary['best_val_f1']:.4f} at epoch {summary['best_epoch']} "
               f"of {summary['epochs']}; curves in {out / 'curves.png'}")


def _interrupted_advice(out: Path) -> str:
    from cnnlab import runs

    if runs.is_run(out):
        return f"interrupted; continue with: cnnlab train --resume {out}"
    return "interrupted before the run started: nothing was written; run the same command again to start it"


@main.command("test")
@click.argument("run", type=click.Path())
@click.option("--data", help="Dataset root (default: the run's own).")
@click.option("--manifest", type=click.Path(), help="Score only the images listed (CSV: path,class[,split]).")
@click.option("--class-map", help="test_name=train_name,... when test folders are named differently.")
@click.option("--json", "as_json", is_flag=True, help="Print the full result as JSON.")
def test_cmd(run, data, manifest, class_map, as_json):
    """Score a run's best checkpoint once on the test split (or a manifest); writes test.json.

    Use it once, for the final choice: every evaluation is counted in the run folder, and a repeat warns.

    \b
    Example:
      cnnlab test runs/r1 --data /tmp/ecl
      cnnlab test runs/r1 --data DATA --manifest audit/leak_free_test.csv
    """
    from cnnlab.evaluate import test_run

    r = test_run(Path(run), data, manifest, class_map)
    if as_json:
        click.echo(json.dumps(r, indent=2))
        return
    click.echo(f"{r['split']}: {r['n_images']} images  macro-F1 {r['macro_f1']:.4f}  accuracy {r['accuracy']:.4f}"
               f"  (evaluation #{r['evaluation_number']} of this split)")
    width = max(len(c) for c in r["per_class"])
    click.echo(f"  {'class':<{width}}  precision  recall     f1  support")
    for c, m in r["per_class"].items():
        click.echo(f"  {c:<{width}}  {m['precision']:9.3f} {m['recall']:7.3f} {m['f1']:6.3f} {m['support']:8d}")
    click.echo(f"wrote {Path(run) / (r['split'] + '.json')}")


@main.command()
@click.argument("run", type=click.Path())
@click.argument("paths", nargs=-1, required=True)
@click.option("--json", "as_json", is_flag=True, help="A JSON list of {path, label, probs}.")
@click.option("--csv", "as_csv", is_flag=True, help="CSV: path, label, one probability column per class.")
def predict(run, paths, as_json, as_csv):
    """Classify images or folders of images with a run's best checkpoint, or with a FILE.onnx from
    `cnnlab export` (on onnxruntime alone: no torch needed).

    \b
    Example:
      cnnlab predict runs/r1 photo.jpg more_photos/ --json
      cnnlab predict model.onnx photo.jpg --csv
    """
    if run.lower().endswith(".onnx") and not Path(run).is_dir():  # before anything imports torch
        from cnnlab.onnx_model import predict as do_predict
    else:
        from cnnlab.evaluate import predict as do_predict

    rows = do_predict(Path(run), list(paths))
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


@main.command("explain")
@click.argument("run", type=click.Path())
@click.argument("images", nargs=-1)
@click.option("--out", type=click.Path(), help="Folder for the overlays (and, with --boxes, the galleries).")
@click.option("--method", default="gradcam", show_default=True, help="gradcam or gradcam++.")
@click.option("--class", "target", help="Explain this class (default: each image's predicted class).")
@click.option("--data", help="With --boxes: the dataset root the box paths are relative to (default: the run's).")
@click.option("--boxes", type=click.Path(), help="CSV path,cx,cy,w,h (0-1, YOLO): score how well heatmaps point "
                                                 "at these boxes (pointing game, energy in box).")
@click.option("--manifest", type=click.Path(), help="With --boxes: only the images listed (its test rows, if it "
                                                    "has a split column).")
@click.option("--json", "as_json", is_flag=True, help="With --boxes: print the scores as JSON.")
def explain_cmd(run, images, out, method, target, data, boxes, manifest, as_json):
    """Heatmaps (Grad-CAM, Grad-CAM++) of what drove a run's predictions: an overlay PNG per image and a contact
    sheet; or, with --boxes, how often the heatmap's maximum falls in a known box. Needs cnnlab[explain].

    \b
    Examples:
      cnnlab explain runs/r1 img.jpg more/ --out cam/ --method gradcam++
      cnnlab explain runs/r1 --data ../shared/datasets/figshare-brain-tumor \\
          --boxes ../shared/datasets/figshare-brain-tumor/boxes.csv --manifest test.csv --json --out cam/
    """
    from cnnlab.explain import explain_images, localisation

    if boxes:
        if images:
            raise UserError("give images, or --boxes for the localisation score, not both")
        r = localisation(Path(run), boxes, data, manifest, method, target, out)
        if as_json:
            click.echo(json.dumps(r, indent=2))
        else:
            click.echo(f"{r['n_images']} images, {method}: pointing game {r['pointing_game']:.3f} (random "
                       f"{r['random_pointing_game']:.3f}), energy in box {r['energy_in_box']:.3f} (random "
                       f"{r['random_energy_in_box']:.3f})" + (f"; wrote {out}" if out else ""))
        return
    if data or manifest or as_json:
        raise UserError("--data, --manifest and --json go with --boxes")
    if not images:
        raise UserError("no images given: cnnlab explain RUN IMAGES... --out DIR (or --boxes CSV for the "
                        "localisation score)")
    if not out:
        raise UserError("--out DIR is needed: the overlays are written there")
    for r in explain_images(Path(run), list(images), out, method, target):
        click.echo(f"{r['label']:<24} {r['prob']:.3f}  {r['path']}  -> {r['overlay']}")
    click.echo(f"wrote {Path(out) / 'contact_sheet.png'}")


@main.command("export")
@click.argument("run", type=click.Path())
@click.option("--onnx", "onnx_file", type=click.Path(), metavar="FILE", required=True, help="The ONNX file to write.")
def export_cmd(run, onnx_file):
    """Export a run's best checkpoint with its preprocessing to ONNX, checked against PyTorch on the run's images.

    The file takes uint8 N x C x H x W images, decoded and resized as cnnlab does (its metadata says how), and
    returns logits: normalisation and flip TTA are in the graph. `cnnlab predict FILE.onnx` runs it without torch.

    \b
    Example:
      cnnlab export runs/r1 --onnx model.onnx
      cnnlab predict model.onnx photo.jpg --json
    """
    from cnnlab.export import export_onnx

    export_onnx(Path(run), Path(onnx_file), log=click.echo)
    click.echo(f"wrote {onnx_file}")


@main.command("serve")
@click.argument("run", type=click.Path())
@click.option("--port", type=int, default=7860, show_default=True, help="The page's port.")
@click.option("--host", default="127.0.0.1", show_default=True,
              help="The address to listen on (0.0.0.0 opens the page to the network).")
def serve_cmd(run, port, host):
    """A local web page (Gradio) that classifies a dropped image with a run's best checkpoint: class
    probabilities, a heatmap over the image, and the run's summary and curves. Needs cnnlab[serve].

    \b
    Example:
      cnnlab serve runs/r1 --port 7860
    """
    from cnnlab.serve import make_app, serve_forever

    app = make_app(Path(run))  # a folder that is not a run is an error before any server starts
    serve_forever(app, host, port, log=click.echo)


def executor_options(f):
    """--jobs, --executor, --address and --gpus-per-run: where the runs of a study or a cross-validation train."""
    for option in reversed([
        click.option("--jobs", default="auto", show_default=True,
                     help="Runs at once, each in a worker process, the cores divided among them; auto: one a core, "
                          "up to 4; 1: one after another in this process, with progress bars. With ray: auto is 1, "
                          "and jobs only divides this machine's cores into each run's threads; Ray runs as many at "
                          "once as the cluster's CPUs allow."),
        click.option("--executor", type=click.Choice(["local", "ray"]), default="local", show_default=True,
                     help="Where runs train: this machine, or one Ray task each (pip install cnnlab[ray])."),
        click.option("--address", help="Ray cluster to join (as `ray start` printed it, or auto); default: "
                                       "$RAY_ADDRESS, a Ray already started on this machine, or a new one on its "
                                       "cores."),
        click.option("--gpus-per-run", type=float, default=0.25, show_default=True,
                     help="With ray, the share of a GPU each run reserves when its device is cuda or auto on a "
                          "cluster with GPUs (0.25: four runs per GPU)."),
    ]):
        f = option(f)
    return f


@main.command()
@click.argument("name")
@click.option("--data", help="Dataset root.")
@click.option("--out", type=click.Path(), required=True,
              help="Study folder (runs, summary.csv, report); with ray, on a file system every node shares.")
@click.option("--epochs", type=int, help="Maximum epochs per run (default 50, early stopping at patience 10).")
@click.option("--set", "sets", multiple=True, metavar="KEY=VALUE", help="Config override for every run.")
@click.option("--param", help="Sweep any field: NAME=v1,v2,... (replaces the lr values of the lr study).")
@click.option("--seeds", default=1, show_default=True, help="Repeat each run with K seeds (mean ± std).")
@click.option("--config", "config_file", type=click.Path(),
              help="Base config for every run: a TOML file or a recipe name (default: assignment).")
@click.option("--lang", type=click.Choice(["en", "ru"]), default="en", show_default=True,
              help="Language of report.md/report.html and the conclusions.")
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
    from cnnlab.api import study as run_study
    from cnnlab.config import parse_sets

    run_study(name, data, out=out, seeds=seeds, jobs=jobs, config=config_file, param=param, executor=executor,
              address=address, gpus_per_run=gpus_per_run, lang=lang, log=click.echo,
              **{"train.epochs": epochs, **parse_sets(sets)})
    out = Path(out)
    click.echo(f"report: {out / 'report.md'} and {out / 'report.html'}")


@main.command()
@click.option("--config", "config_file", type=click.Path(),
              help="Config of every fold's run: a TOML file or a recipe name (default: cnnlab train's defaults).")
@click.option("--data", required=True, help="Dataset root.")
@click.option("--folds", "folds_csv", type=click.Path(), required=True,
              help="CSV with the columns path (relative to --data), class, fold.")
@click.option("--out", type=click.Path(), required=True, help="Folder for the folds' runs, cv.json and the report.")
@click.option("--epochs", type=int, help="Maximum epochs per fold.")
@click.option("--set", "sets", multiple=True, metavar="KEY=VALUE", help="Config override for every fold.")
@click.option("--lang", type=click.Choice(["en", "ru"]), default="en", show_default=True,
              help="Language of report.md/report.html and the conclusions.")
@executor_options
def cv(config_file, data, folds_csv, out, epochs, sets, lang, jobs, executor, address, gpus_per_run):
    """Cross-validate on the data set's own folds (e.g. patient-wise): each fold scored once by a run trained on
    the others, validated on another whole fold; cv.json, report.md and report.html. Rerunning resumes.

    \b
    Example:
      cnnlab cv --config mri --data ../shared/datasets/figshare-brain-tumor \\
          --folds ../shared/datasets/figshare-brain-tumor/folds.csv --out runs/figshare-cv --jobs 2
    """
    import shlex

    from cnnlab.executors import make_executor, resolve_jobs, running

    jobs = resolve_jobs(jobs, executor)
    # The executor first: its workers start while this process reads and checks the config.
    with running(make_executor(executor, jobs, address, gpus_per_run, log=click.echo)) as runner:
        from cnnlab.cv import run_cv

        base = build_config(config_file, {"data.path": data, "train.epochs": epochs}, sets)
        r = run_cv(base, Path(folds_csv), Path(out), runner, jobs, log=click.echo,
                   command=shlex.join(["cnnlab", *sys.argv[1:]]), lang=lang)
    click.echo(f"{len(r['folds'])} folds: accuracy {r['mean_accuracy']:.4f} ± {r['std_accuracy']:.4f}, macro-F1 "
               f"{r['mean_macro_f1']:.4f} ± {r['std_macro_f1']:.4f}; report: {Path(out) / 'report.md'}")


def _register():
    # Command groups that live in their own modules.
    from cnnlab.cli_audit import audit
    from cnnlab.cli_optim import optim

    data.add_command(audit)
    main.add_command(optim)


_register()


def entry():
    """The `cnnlab` console script: `main`, then an immediate exit. Unloading torch at interpreter exit takes about
    a second and nothing of cnnlab needs it: every file is written and closed, every worker stopped, by the time
    a command returns. An unexpected exception still unwinds normally, with its traceback."""
    import os

    try:
        main()
        code = 0
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else 0 if e.code is None else 1
        if not isinstance(e.code, int | None):
            print(e.code, file=sys.stderr)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    entry()
