"""Studies: a base config plus named overrides, run as independent, resumable runs.

A study is data, not code: the built-ins below are dicts, and a TOML file in the same shape works too:

    name = "my-study"
    [base]            # config overrides shared by every run (bare or qualified keys)
    image_size = 96
    [runs.adam]       # one table per run
    optimizer = "adam"
    [runs.sgd]
    optimizer = "sgd"
    momentum = 0.9

The base of every run is the assignment's recipe (`recipes/assignment.toml`) unless another config is given.
Every run's config (every --param value, every stage of the assignment) is checked before anything trains.
Runs go through an executor (studies/executors.py: one small interface, `map(jobs) -> summaries`), so a study
can be spread over more processes or machines without touching the rest.
"""

from __future__ import annotations

import csv
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from cnnlab.config import Config, parse_sets, read_toml
from cnnlab.data.folders import find_splits
from cnnlab.data.labels import is_label_file, protected_paths, read_rows
from cnnlab.errors import UserError, nearest
from cnnlab.evaluation.testing import find_test, test_run
from cnnlab.files import atomic_write, output_folder
from cnnlab.reporting.reporter import Reporter
from cnnlab.reporting.strings import translations
from cnnlab.studies.executors import Executor, Job, given_or_local
from cnnlab.studies.reports import assignment_report, study_report
from cnnlab.training import run_folder
from cnnlab.training.checks import make_config


@dataclass
class Study:
    """A study: its name, its runs (run name -> config overrides), the overrides every run shares (`base`), the question
    it answers (and, for a built-in, in each report language), and the fields an assignment stage carries forward."""

    name: str
    runs: dict[str, dict]
    base: dict = field(default_factory=dict)
    question: str = ""
    # The config fields a stage of the assignment carries forward from its winner.
    carries: tuple[str, ...] = ()
    # The question in each report language (reporting/strings.py), for built-in studies; else `question` as written.
    questions: dict[str, str] = field(default_factory=dict)


def _builtin(name: str, runs: dict[str, dict], carries: tuple[str, ...] = ()) -> Study:
    asked = translations(f"question.{name}")
    return Study(name, runs, question=asked["en"], carries=carries, questions=asked)


STUDIES: dict[str, Study] = {
    s.name: s
    for s in [
        _builtin(
            "regularization",
            {
                "simple": {"model": "simple"},
                "simple-bn": {"model": "simple-bn"},
                "simple-dropout": {"model": "simple-dropout"},
                "simple-bn-dropout": {"model": "simple-bn-dropout"},
            },
            carries=("model",),
        ),
        _builtin(
            "optimizers",
            {
                "sgd": {"optimizer": "sgd", "momentum": 0.0},
                "rmsprop": {"optimizer": "rmsprop"},
                "adam": {"optimizer": "adam"},
                "adagrad": {"optimizer": "adagrad"},
            },
            carries=("optimizer", "momentum"),
        ),
        _builtin("lr", {f"lr={v:g}": {"lr": v} for v in (1e-3, 5e-3, 1e-2, 5e-2)}, carries=("lr",)),
        _builtin(
            "overfitting",
            {
                "baseline": {},
                "plateau": {"scheduler": "plateau", "plateau_patience": 3, "plateau_factor": 0.1},
                "label-smoothing": {"label_smoothing": 0.1},
                "plateau+smoothing": {
                    "scheduler": "plateau",
                    "plateau_patience": 3,
                    "plateau_factor": 0.1,
                    "label_smoothing": 0.1,
                },
            },
            carries=("scheduler", "plateau_patience", "plateau_factor", "label_smoothing"),
        ),
        _builtin(
            "imbalance",
            {
                "none": {"imbalance": "none"},
                "weights": {"imbalance": "weights"},
                "oversample": {"imbalance": "oversample"},
                "undersample": {"imbalance": "undersample"},
            },
        ),
        _builtin(
            "architecture",
            {
                "mlp": {"model": "mlp", "resize": "squash"},
                "simple-bn-dropout": {"model": "simple-bn-dropout"},
                "adaptive": {"model": "adaptive", "resize": "keep"},
                "resnet": {"model": "resnet"},
            },
        ),
        _builtin("activations", {a: {"activation": a} for a in ("relu", "leaky_relu", "tanh", "gelu")}),
    ]
}
ASSIGNMENT_STAGES = ("regularization", "optimizers", "lr", "overfitting")
NAMES = (*STUDIES, "assignment")


def load_study(name_or_path: str) -> Study:
    """A built-in study by name (NAMES), or a study TOML file ([base] and one [runs.NAME] table a run), its keys and
    values checked against the config before anything runs; a UserError otherwise."""
    path = Path(name_or_path)
    if path.suffix == ".toml":
        d = read_toml(path, "study file")
        runs = d.get("runs")
        if not isinstance(runs, dict) or not runs or not all(isinstance(v, dict) for v in runs.values()):
            raise UserError(f"{path}: a study needs [runs.NAME] tables, one per run")
        study = Study(str(d.get("name", path.stem)), runs, dict(d.get("base", {})), str(d.get("question", "")))
        for overrides in [study.base, *study.runs.values()]:
            Config().update(overrides)  # unknown keys and bad values fail here, before anything runs
        return study
    if name_or_path not in STUDIES:
        raise nearest(name_or_path, NAMES, "study")
    return STUDIES[name_or_path]


def sweep(study: Study, param: str) -> Study:
    """`NAME=v1,v2,...`: the same study shape, sweeping any config field instead."""
    if "=" not in param:
        raise UserError(f"bad --param '{param}': expected NAME=v1,v2,...")
    key, values = param.split("=", 1)
    values = [v.strip() for v in values.split(",") if v.strip()]
    if len(values) < 2:
        raise UserError(f"--param {key} needs at least two values")
    for v in values:
        parse_sets([f"{key}={v}"])
        Config().set(key.strip(), v)
    key = key.strip()
    asked = translations("question.sweep", key=key)
    return Study(
        f"{key}-sweep",
        {f"{key}={v}": {key: v} for v in values},
        study.base,
        asked["en"],
        carries=(key,),
        questions=asked,
    )


# ------------------------------------------------------------------------------------------ running


SUMMARY_COLUMNS = ["run", "seed", *run_folder.SUMMARY_KEYS, "out"]


def make_jobs(study: Study, base: Config, out: Path, seeds: int, threads: int) -> list[Job]:
    """One job per run and seed, each config made and checked (`make_config`) before any job starts."""
    jobs = []
    for run, overrides in study.runs.items():
        for k in range(seeds):
            seed = base.train.seed + k
            folder = out / "runs" / (_slug(run) + (f"-seed{seed}" if seeds > 1 else ""))
            try:
                cfg = make_config(base.absolute(), study.base, overrides, {"seed": seed, "threads": threads})
                jobs.append(Job(run, seed, cfg, str(folder)))
            except UserError as e:
                raise UserError(f"study {study.name}, run {run}: {e}") from None
    return jobs


def study_threads(base: Config, jobs: int) -> int:
    """Threads per run: the cores (or the configured threads) shared among the parallel jobs."""
    return max(1, (base.train.threads or os.cpu_count() or 1) // max(1, jobs))


def _slug(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_.=+" else "_" for c in name)


def run_study(
    study: Study,
    base: Config,
    out: Path,
    seeds: int = 1,
    executor: Executor | None = None,
    jobs: int = 1,
    reporter: Reporter | None = None,
    known: dict[str, dict] | None = None,
) -> list[dict]:
    """Run (or resume) every run of a study; write summary.csv, overlay.png, report.md and report.html (in the
    reporter's language; summary.csv is the same in every language).

    `known` maps a config (as JSON) to the result of a run already trained with it: such a run is not trained
    again (in the assignment, a stage's baseline is often the previous stage's winner).
    """
    reporter = reporter or Reporter()
    out = Path(out)
    all_jobs = make_jobs(study, base, out, seeds, study_threads(base, jobs))
    output_folder(out, protected_paths(base.data.path), "study folder")
    known = {} if known is None else known
    keys = [json.dumps(j.config.to_dict(), sort_keys=True) for j in all_jobs]
    todo = [j for j, k in zip(all_jobs, keys, strict=True) if k not in known]
    for j, k in zip(all_jobs, keys, strict=True):
        if k in known:
            reporter.line(f"  {j.run} seed {j.seed}: same config as {known[k]['out']}, reusing its result")
    with given_or_local(executor, jobs, reporter.line) as runner:
        trained = iter(runner.map(todo))
    results = []
    for j, k in zip(all_jobs, keys, strict=True):
        r = {**known[k], "run": j.run} if k in known else next(trained)
        known.setdefault(k, r)
        results.append(r)
    write_summary(results, out / "summary.csv")
    study_report(study, results, out, reporter.lang)
    return results


def write_summary(results: list[dict], path: Path) -> None:
    with atomic_write(path) as tmp, open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, SUMMARY_COLUMNS, extrasaction="ignore")
        w.writeheader()
        for r in results:
            w.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in r.items()})


def mean_by_run(results: list[dict], key: str = "best_val_f1") -> dict[str, float]:
    by: dict[str, list[float]] = {}
    for r in results:
        by.setdefault(r["run"], []).append(r[key])
    return {k: sum(v) / len(v) for k, v in by.items()}


def run_assignment(
    base: Config,
    out: Path,
    seeds: int = 1,
    executor: Executor | None = None,
    jobs: int = 1,
    reporter: Reporter | None = None,
) -> dict:
    """The whole assignment: each stage's winner (by validation macro-F1 only) becomes the next stage's base;
    the final choice is scored once on the test split. The reports are in the reporter's language."""
    reporter = reporter or Reporter()
    out = Path(out)
    for name in ASSIGNMENT_STAGES:  # every stage's runs are checked before the first one trains
        make_jobs(STUDIES[name], base, out / name, seeds, study_threads(base, jobs))
    output_folder(out, protected_paths(base.data.path), "study folder")
    stages = []
    current = base.copy()
    known: dict[str, dict] = {}
    with given_or_local(executor, jobs, reporter.line) as runner:  # one set of workers for every stage
        for name in ASSIGNMENT_STAGES:
            study = STUDIES[name]
            reporter.line(f"== stage {name}: {study.question}")
            results = run_study(study, current, out / name, seeds, runner, jobs, reporter, known)
            means = mean_by_run(results)
            winner = max(means, key=means.get)
            for k, v in study.runs[winner].items():
                if k in study.carries:
                    current.set(k, v)
            stages.append({"study": name, "winner": winner, "mean_val_f1": means[winner], "results": results})
            reporter.line(f"   winner by validation macro-F1: {winner} ({means[winner]:.4f})")
    final = stages[-1]
    final_runs = [r for r in final["results"] if r["run"] == final["winner"]]
    tests = []
    if current.data.path and _has_test(current):
        for r in final_runs:
            # Rerunning a finished assignment (to redraw its report) reads the one test back, never re-tests.
            res = find_test(Path(r["out"]), current.data.path) or test_run(Path(r["out"]), current.data.path)
            tests.append(
                {
                    "run": r["run"],
                    "seed": r["seed"],
                    "out": r["out"],
                    "macro_f1": res["macro_f1"],
                    "accuracy": res["accuracy"],
                    "per_class": res["per_class"],
                    "evaluation_number": res["evaluation_number"],
                }
            )
    summary = {"stages": stages, "final_config": current.to_dict(), "tests": tests}
    assignment_report(summary, out, STUDIES, reporter.lang)
    return summary


def _has_test(cfg: Config) -> bool:
    if is_label_file(cfg.data.path):
        return any(row.split == "test" for row in read_rows(cfg.data.path)[1])
    return "test" in find_splits(Path(cfg.data.path))
