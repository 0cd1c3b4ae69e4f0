"""The Python API, for notebooks and scripts; the `cnnlab` command line is a thin layer over the same functions.

    import cnnlab
    run = cnnlab.train(data="ecl", model="simple-bn", epochs=10, image_size=64, out="runs/r1")
    run.history                  # a pandas DataFrame, one row an epoch
    run.plot()                   # the learning curves (inline in Jupyter)
    run.test()                   # scored once on the test split, counted like `cnnlab test`
    s = cnnlab.study("regularization", data="ecl", out="runs/reg", epochs=10, image_size=64)
    s.summary, s.plot(), s.report()

Every function takes config fields as keywords, bare or qualified (`image_size=64`, `**{"train.seed": 1}`), and
checks all of them before any work. A mistake raises `cnnlab.UserError` with the one-line message the command
line prints. Nothing here imports torch until it is needed, so `import cnnlab` stays fast.
"""

from __future__ import annotations

import csv
import time
from collections.abc import Iterable
from pathlib import Path

from cnnlab.errors import UserError
from cnnlab.reporting.display import Image, Report

__all__ = ["Image", "Report", "Run", "StudyResults", "cv", "inspect", "load", "make_config", "register_model"]
__all__ += ["study", "train"]


def make_config(config=None, default: str | None = None, **overrides):
    """The checked `Config` of a run: `config` (a Config, or the TOML file or recipe it names; else `default`, else
    `cnnlab train`'s defaults), then `overrides` (config fields, bare or qualified); None values are skipped.
    This is `cnnlab.training.make_config`, the one path every command and function takes."""
    from cnnlab.training import checks

    return checks.make_config(config, overrides, default=default)


def register_model(name: str, cam_layer=None):
    """Decorator: your own model as `model=name` (`--model name`): a callable or nn.Module class called as
    `fn(model_config, in_channels, n_classes)` (plus `image_size=` if it takes it), trained from scratch. Runs
    record the registering module (`model.registered_in`), which fresh processes (`cnnlab predict`, spawned
    workers, Ray tasks) import: define it in a module on PYTHONPATH, not in a notebook. `cam_layer(model)` may
    pick the layer heatmaps explain (default: the last spatial map before the head). docs/api.md has an example."""
    from cnnlab.training import models

    return models.register_model(name, cam_layer)


def _shown(fig):
    """`fig`, which Jupyter shows inline when a cell returns it. cnnlab draws on plain matplotlib Figures, never
    through pyplot, so the inline backend may never have been loaded: register its PNG formatter for them."""
    from cnnlab.reporting.progress import in_notebook

    if in_notebook():
        from IPython import get_ipython
        from IPython.core.pylabtools import print_figure
        from matplotlib.figure import Figure

        get_ipython().display_formatter.formatters["image/png"].for_type(
            Figure, lambda f: print_figure(f, "png", bbox_inches="tight")
        )
    return fig


def _frame(rows: list[dict]):
    import pandas as pd

    return pd.DataFrame(rows)


def _read_csv(path: Path) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


# ------------------------------------------------------------------------------------------------ a run


class Run:
    """A run folder (see training/run_folder.py): its config, history, checkpoints and scores."""

    def __init__(self, path: str | Path):
        from cnnlab.training import run_folder

        self.path = Path(path)
        if not run_folder.is_run(self.path):
            raise UserError(f"{self.path} is not a cnnlab run folder (no {run_folder.CONFIG})")
        self._summary: dict | None = None  # as training returned it, when this object trained the run

    def __repr__(self) -> str:
        return f"Run({str(self.path)!r})"

    @property
    def config(self):
        """The run's resolved `Config`."""
        from cnnlab.training import run_folder

        return run_folder.read_config(self.path)

    @property
    def history(self):
        """One row an epoch: losses, macro-F1, accuracy, learning rate, timing, each class's validation recall."""
        from cnnlab.training import run_folder

        path = self.path / run_folder.HISTORY
        return _frame(run_folder.read_history(path) if path.is_file() else [])

    @property
    def summary(self) -> dict:
        """The figures a study's summary.csv lists for this run (best validation macro-F1 and its epoch, gaps,
        stability, speed), from its history and best checkpoint's epoch."""
        from cnnlab.training import run_folder

        if self._summary is not None:
            return self._summary
        path = self.path / run_folder.HISTORY
        history = run_folder.read_history(path) if path.is_file() else []
        if not history or not (self.path / run_folder.BEST).is_file():
            raise UserError(f"{self.path} has no finished epoch with a best checkpoint yet")
        return run_folder.summarize_history(history, run_folder.load_checkpoint(self.path / run_folder.BEST)["epoch"])

    def plot(self, title: str | None = None):
        """Loss and macro-F1 per epoch, train solid and validation dashed: a matplotlib Figure."""
        from cnnlab.reporting.figures import overlay_figure

        return _shown(overlay_figure({title or self.path.name: self.history.to_dict("records")}, title=title or ""))

    def test(self, data: str | None = None, manifest: str | None = None, class_map: str | None = None) -> dict:
        """Score the best checkpoint on the test split of `data` (default: the run's own data set) or on the images
        a manifest lists, as `cnnlab test` does: the evaluation is counted in the run folder and a repeat warns.
        Its files go to a folder of its own, RUN/tests/NAME/ (see `tests`). Returns test.json's content (accuracy,
        macro_f1, per_class, confusion_matrix, ...)."""
        from cnnlab.evaluation.testing import test_run

        return test_run(self.path, data, manifest, class_map)

    @property
    def tests(self) -> dict[str, dict]:
        """Every test of the run, {NAME: test.json's content}, in name order. NAME is the folder RUN/tests/NAME/
        that holds that evaluation's test.json, test_predictions.csv, test_confusion.png and test_errors.png: the
        data set folder's name, the manifest's stem if one chose the images, and 8 characters of the images' hash
        (e.g. `ecl-1f3a9c0d`, `ecl-leak_free_test-77b2e410`), so each data set keeps its own results and the same
        images tested again reuse theirs. A run tested before tests/ existed lists its top-level test.json as
        `test` (and test-MANIFEST.json by its stem). Empty if the run was never tested."""
        from cnnlab.evaluation.testing import read_test, result_files

        return {name: read_test(path) for name, path in result_files(self.path).items()}

    def predict(self, images: str | Path | Iterable[str | Path]):
        """Classify image files and folders of images: a DataFrame of path, label and one probability column a
        class."""
        from cnnlab.evaluation.prediction import predict_files

        rows = predict_files(self.path, _paths(images))
        return _frame([{"path": r["path"], "label": r["label"], **r["probs"]} for r in rows])

    def explain(
        self,
        images: str | Path | Iterable[str | Path],
        out: str | Path,
        method: str | None = None,
        target: str | None = None,
        layer: str | None = None,
    ):
        """Heatmaps of what drove each prediction (`method`: a name of `cnnlab.evaluation.METHODS`; default the
        model family's, Grad-CAM++ for resnet), written to `out` as overlays and a contact sheet; returns that sheet
        as an `Image` a notebook shows. Needs cnnlab[explain]."""
        from cnnlab.explain.heatmaps import explain_images

        explain_images(self.path, _paths(images), out, method, target, layer=layer)
        return Image(Path(out) / "contact_sheet.png")

    def localisation(
        self,
        boxes: str | Path,
        data: str | Path | None = None,
        manifest: str | Path | None = None,
        method: str | None = None,
        layer: str | None = None,
        out: str | Path | None = None,
    ) -> dict:
        """How well the heatmaps point at known boxes (`cnnlab explain RUN --boxes`): the pointing game, strict and
        with tolerance, and the energy in the box, beside the random, centre and class-prior baselines; over the
        manifest's test rows (else every boxed image). With `out`: explain.json, explain.md, galleries."""
        from cnnlab.explain.heatmaps import localisation

        return localisation(self.path, boxes, data=data, manifest=manifest, method=method, layer=layer, out=out)

    def resume(self, progress: bool = True, log=print) -> Run:
        """Continue an interrupted run from its last finished epoch (a finished run is left as it is)."""
        from cnnlab.reporting.reporter import Reporter
        from cnnlab.training.trainer import resume

        self._summary = resume(self.path, Reporter(log=log, progress=progress))
        return self


def _paths(images) -> list[str]:
    if isinstance(images, (str, Path)):
        return [str(images)]
    return [str(p) for p in images]


def inspect(
    data: str | Path, out: str | Path | None = None, class_map: str | None = None, cache_dir: str | None = None
) -> dict:
    """What a data set holds before anything trains: per split and class, counts, image sizes and modes, unusable
    files; with `out`, a contact sheet per split (`report["contact_sheets"]`, show one with `Image`). `cnnlab data
    inspect` prints the same report (`cnnlab.datatools.format_report`)."""
    from cnnlab.datatools.inspection import inspect_dataset

    return inspect_dataset(data, out=out, cache_dir=cache_dir, class_map=class_map)


def load(path: str | Path) -> Run:
    """The run in `path` (a folder `cnnlab train` or `cnnlab.training` wrote)."""
    return Run(path)


def default_out(cfg) -> Path:
    return Path(f"runs/{cfg.model.model}-{time.strftime('%Y%m%d-%H%M%S')}")


def train(
    data: str | Path | None = None,
    *,
    out: str | Path | None = None,
    config=None,
    progress: bool = True,
    force: bool = False,
    log=print,
    **overrides,
) -> Run:
    """Train one model from scratch into the run folder `out` (default runs/<model>-<time>) and return it.

    `config` is a TOML file, a shipped recipe name (`assignment`, `mri`) or a Config; `data` and the keywords
    override it, e.g. `train(data="ecl", model="simple-bn", epochs=10, image_size=64, lr=3e-4)`. `out` must be
    new or empty (`force=True`: any folder that holds no run)."""
    from cnnlab.reporting.reporter import Reporter
    from cnnlab.training.trainer import fit

    cfg = make_config(config, **{"data.path": None if data is None else str(data), **overrides})
    out = Path(out or default_out(cfg))

    summary = fit(cfg, out, Reporter(log=log, progress=progress), force=force)
    run = Run(out)
    run._summary = summary
    return run


# ---------------------------------------------------------------------------------------------- a study


class StudyResults:
    """A study folder: summary.csv (one row a run and seed), each run's folder, report.md and report.html. For the
    assignment, the stages' summaries one after the other (column `study`) and the final test."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        if not (self.path / "report.html").is_file():
            raise UserError(f"{self.path} holds no finished study (no report.html)")

    def __repr__(self) -> str:
        return f"StudyResults({str(self.path)!r})"

    def _summary_rows(self) -> list[dict]:
        """summary.csv's rows, `out` made a path that works from here (a study started from another directory lists
        relative ones): the folder as written if it is there, else the same folder found under the study's."""
        if (self.path / "summary.csv").is_file():
            tables = [(self.path, {})]
        else:
            order = _assignment_order()
            stages = sorted(
                (p.parent for p in self.path.glob("*/summary.csv")),
                key=lambda p: (order.get(p.name, len(order)), p.name),
            )
            tables = [(stage, {"study": stage.name}) for stage in stages]
        rows = []
        for folder, extra in tables:
            for r in _read_csv(folder / "summary.csv"):
                rows.append({**extra, **r, "out": str(self._find(Path(r["out"])))})
        return rows

    def _find(self, out: Path) -> Path:
        tails = [self.path.joinpath(*out.parts[k:]) for k in range(1, len(out.parts))]
        return next((p for p in [out, *tails] if p.is_dir()), out)

    @property
    def summary(self):
        """One row a run (and seed): its name, seed, folder and the figures of `Run.summary`."""
        import pandas as pd

        frame = _frame(self._summary_rows())
        for column in frame.columns:  # the CSV's numbers back to numbers
            if column not in ("study", "run", "out"):
                frame[column] = pd.to_numeric(frame[column])
        return frame

    @property
    def runs(self) -> dict[str, Run]:
        """The runs by name (`study/run` in the assignment; with several seeds, `run#seed`)."""
        rows = self._summary_rows()
        seeds = len({r.get("seed") for r in rows}) > 1
        return {
            ("/".join(filter(None, [r.get("study"), r["run"]])) + (f"#{r['seed']}" if seeds else "")): Run(r["out"])
            for r in rows
        }

    def _results(self) -> list[dict]:
        """summary's rows as dicts; for the assignment, only the last stage's."""
        rows = self.summary.to_dict("records")
        return [r for r in rows if r.get("study") == rows[-1].get("study")]

    @property
    def best(self) -> str:
        """The run with the best mean validation macro-F1 over its seeds: the one the assignment carries forward
        (for the assignment, the last stage's)."""
        from cnnlab.studies.definitions import mean_by_run

        means = mean_by_run(self._results())
        return max(means, key=means.get)

    def conclusions(self, lang: str = "en") -> list[str]:
        """The report's conclusions: sentences computed from the summary (winner and its margin against the noise,
        overfitting, stability, convergence, speed); for the assignment, the last stage's."""
        from cnnlab.reporting.strings import check_lang
        from cnnlab.studies.reports import aggregate, conclusions

        check_lang(lang)
        return conclusions(aggregate(self._results()), lang)

    @property
    def tests(self) -> list[dict]:
        """The assignment's final test scores (empty for a single study): each test of each run that has one
        (`Run.tests`), with the run's folder."""
        folders = dict.fromkeys(run.path for run in self.runs.values())  # a reused run is listed in two stages
        return [{"run": str(p), **result} for p in folders for result in Run(p).tests.values()]

    def plot(self, title: str | None = None):
        """Every run's curves on one figure (the first seed of each): a matplotlib Figure."""
        from cnnlab.reporting.figures import overlay_figure

        seen: dict[str, list[dict]] = {}
        for name, run in self.runs.items():
            seen.setdefault(name.split("#")[0], run.history.to_dict("records"))
        return _shown(overlay_figure(seen, title=title or self.path.name))

    def report(self) -> Report:
        """The study's report (tables, figures, conclusions), shown inline in Jupyter."""
        return Report(self.path / "report.html")


def _assignment_order() -> dict[str, int]:
    from cnnlab.studies.definitions import ASSIGNMENT_STAGES

    return {name: i for i, name in enumerate(ASSIGNMENT_STAGES)}


def study(
    name: str,
    data: str | Path | None = None,
    *,
    out: str | Path,
    seeds: int = 1,
    jobs: int | str = "auto",
    config: str | Path | None = None,
    param: str | None = None,
    executor: str = "local",
    address: str | None = None,
    gpus_per_run: float = 0.25,
    lang: str = "en",
    log=print,
    **overrides,
) -> StudyResults:
    """Run (or resume) a comparison study and return its results.

    `name`: regularization, optimizers, lr, overfitting, imbalance, architecture, activations, assignment (every
    stage in order, each winner chosen on validation, then one test), or a study TOML file. The base config is
    the assignment's recipe unless `config` names another; keywords override it for every run, e.g.
    `study("regularization", data="ecl", out="runs/reg", epochs=20, image_size=64)`. `param="lr=0.1,0.01"` sweeps
    one field instead; `jobs` runs that many at once (`auto`: one a core, up to 4; 1: in this process, with
    progress bars); `executor="ray"` spreads them over a Ray cluster."""
    from cnnlab.reporting.reporter import Reporter
    from cnnlab.studies.executors import make_executor, resolve_jobs, running

    if seeds < 1:
        raise UserError("--seeds must be at least 1")
    reporter = Reporter(log=log, lang=lang)  # a bad language fails here, before any worker starts
    jobs = resolve_jobs(jobs, executor)
    # The executor first: its workers start while this process reads and checks the configs.
    with running(make_executor(executor, jobs, address, gpus_per_run, log=log)) as runner:
        _study(name, data, out, seeds, jobs, config, param, runner, reporter, overrides)
    return StudyResults(out)


def _study(name, data, out, seeds, jobs, config, param, runner, reporter, overrides) -> None:
    from cnnlab.data.folders import check_root
    from cnnlab.studies.definitions import load_study, run_assignment, run_study, sweep

    base = make_config(config, default="assignment", **{"data.path": None if data is None else str(data), **overrides})
    if not base.data.path:
        raise UserError("no dataset given: pass --data DIR")
    check_root(base.data.path)  # before the study folder is made
    if name == "assignment" and param:
        raise UserError("--param applies to a single study, not to the assignment")
    spec = None if name == "assignment" else load_study(name)
    if param:
        spec = sweep(spec, param)
    if spec is None:
        run_assignment(base, Path(out), seeds, runner, jobs=jobs, reporter=reporter)
    else:
        run_study(spec, base, Path(out), seeds, runner, jobs=jobs, reporter=reporter)


def cv(
    data: str | Path,
    folds: str | Path | None = None,
    *,
    out: str | Path,
    config: str | Path | None = None,
    jobs: int | str = "auto",
    executor: str = "local",
    address: str | None = None,
    gpus_per_run: float = 0.25,
    lang: str = "en",
    log=print,
    command: str = "",
    n_folds: int = 5,
    **overrides,
) -> dict:
    """Cross-validate on a data set's own folds (or resume) and return the contents of `out/cv.json`.

    `folds`: a CSV with the columns path (relative to `data`), class and fold, e.g. patient-wise folds; or None with
    `split="groups"`: the groups (a label file's group column, a group_file) dealt into `n_folds`. Each fold is
    scored once, by a run trained on the other folds and validated on the next one; `config` is a TOML file or a
    recipe (default: `cnnlab train`'s defaults), keywords override it. `jobs`, `executor`, `address` and
    `gpus_per_run` are `study`'s. `cnnlab cv` is this function."""
    from cnnlab.reporting.reporter import Reporter
    from cnnlab.studies.executors import make_executor, resolve_jobs, running

    reporter = Reporter(log=log, lang=lang)
    jobs = resolve_jobs(jobs, executor)
    # The executor first: its workers start while this process reads and checks the config.
    with running(make_executor(executor, jobs, address, gpus_per_run, log=log)) as runner:
        from cnnlab.studies.cross_validation import run_cv

        base = make_config(config, **{"data.path": str(data), **overrides})
        return run_cv(base, folds and Path(folds), Path(out), runner, jobs, reporter, command, n_folds)
