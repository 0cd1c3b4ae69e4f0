"""`cnnlab tune`: a search over config fields with Optuna (`pip install cnnlab[tune]`): a TPE sampler proposes
each trial's settings, a pruner stops a trial whose validation macro-F1 lags the finished trials' at the same
epoch. Every trial is an ordinary run folder (`T/trials/trial-NNN`), trained by a study's executor (`--jobs`
worker processes, or Ray tasks), so the search never reads the test split.

Reproducible by construction. Trials go out in rounds of `jobs`: each is asked for with a sampler seeded from
(seed, trial number), and is pruned against a fixed basis, the trials that had finished when its round began
(recorded with it); the pruner runs in the worker, on an in-memory Optuna study of that basis. So a trial's
settings and its pruning depend on the search's seed and order alone, not on which trial of a round ends first,
nor on the executor: one trial at a time gives the same search locally and on Ray. Optuna's storage is a SQLite
file in `T` (`optuna.db`): rerunning the command continues the search, an interrupted trial resumes from its run
folder (its pruning checked again on the epochs it had), and a finished or pruned trial is never trained again.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

from cnnlab.config import Config, TrainConfig, resolve_key
from cnnlab.data.labels import protected_paths
from cnnlab.errors import UserError
from cnnlab.files import output_folder, write_text
from cnnlab.reporting.reporter import Reporter
from cnnlab.studies.definitions import study_threads
from cnnlab.studies.executors import Executor, given_or_local
from cnnlab.studies.jobs import Job, run_job
from cnnlab.training.checks import make_config
from cnnlab.training.run_folder import CONFIG, HISTORY, read_config, read_history, summarize_history
from cnnlab.training.trainer import Best

PRUNERS = ("median", "halving", "none")
SETTINGS = "tune.json"  # the search's settings, checked on a rerun
STORAGE = "optuna.db"
MEDIAN_STARTUP = 3  # finished trials before the median pruner prunes
# A trial trains a quarter of its epochs (at least one) before a pruner judges it: from scratch, the first epochs
# say little (on the MRI set, the median pruner with one epoch's warm-up stopped the eventual best trial at epoch 2;
# docs/results/tune.md).
WARMUP_FRACTION = 4


def optuna_module():
    """Optuna, imported only for a search; one line when it is missing."""
    try:
        import optuna
    except ImportError:
        raise UserError("cnnlab tune needs Optuna: pip install 'cnnlab[tune]'") from None
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna


# ------------------------------------------------------------------------------------------ the space


@dataclass(frozen=True)
class Param:
    """One searched field: `kind` float | int | choice; `low`/`high` (and `log`: log-uniform) for a range,
    `choices` for a choice."""

    name: str
    kind: str
    low: float = 0.0
    high: float = 0.0
    choices: tuple = ()
    log: bool = False

    def suggest(self, trial):
        if self.kind == "choice":
            return trial.suggest_categorical(self.name, list(self.choices))
        if self.kind == "int":
            return trial.suggest_int(self.name, int(self.low), int(self.high), log=self.log)
        return trial.suggest_float(self.name, self.low, self.high, log=self.log)


def parse_param(spec: str) -> Param:
    """`lr=log:1e-4:1e-1` (log-uniform), `dropout=0.0:0.5` (uniform; an integer field such as `width=16:64` or
    `batch_size=log:16:256`: integers), `optimizer=adam,sgd,rmsprop` (a choice) -> Param, the field checked to
    exist."""
    if "=" not in spec:
        raise UserError(f"bad --param '{spec}': expected NAME=log:LOW:HIGH, NAME=LOW:HIGH or NAME=A,B,...")
    name, _, values = (v.strip() for v in spec.partition("="))
    _, _, typ = resolve_key(name)
    if "," in values:
        choices = tuple(v.strip() for v in values.split(",") if v.strip())
        if len(choices) < 2:
            raise UserError(f"--param {name} needs at least two choices")
        return Param(name, "choice", choices=choices)
    parts = values.split(":")
    log = parts[0] == "log"
    try:
        low, high = (float(v) for v in parts[1 if log else 0 :])
    except ValueError:
        raise UserError(f"bad --param '{spec}': a range is LOW:HIGH or log:LOW:HIGH, choices are A,B,...") from None
    if not (math.isfinite(low) and math.isfinite(high) and low < high) or (log and low <= 0):
        raise UserError(f"bad --param '{spec}': needs LOW < HIGH (and LOW > 0 for log)")
    if typ not in (int, float):
        raise UserError(f"--param {name}: a range needs a numeric field; give choices instead (A,B,...)")
    if typ is int and not (low.is_integer() and high.is_integer()):
        raise UserError(f"bad --param '{spec}': {name} is an integer field: LOW and HIGH must be integers")
    return Param(name, "int" if typ is int else "float", low, high, log=log)


# ------------------------------------------------------------------------------------------ one trial


@dataclass
class TrialJob(Job):
    """A trial's run, with what its pruning needs: the pruner's name and the finished trials it is judged against
    (each {"state": COMPLETE | PRUNED, "values": {epoch: val_f1}})."""

    pruner: str = "median"
    basis: list[dict] = field(default_factory=list)


class Pruned(Exception):
    """A trial stopped by its pruner (its run folder keeps the epochs it trained)."""


def warmup_epochs(epochs: int) -> int:
    """The epochs a trial of `epochs` trains before its pruner may stop it."""
    return max(1, epochs // WARMUP_FRACTION)


def make_pruner(name: str, warmup: int):
    """Optuna's pruner `name`, judging from epoch `warmup` + 1 (steps are epochs, from 1)."""
    optuna = optuna_module()
    if name == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=MEDIAN_STARTUP, n_warmup_steps=warmup + 1)
    if name == "halving":
        return optuna.pruners.SuccessiveHalvingPruner(min_resource=warmup + 1, reduction_factor=3)
    return optuna.pruners.NopPruner()


def _rungs(values: dict[int, float], warmup: int) -> dict[str, float]:
    """The successive-halving rungs a trial of these per-epoch values reached, as Optuna's pruner records them on
    a trial it judges (`completed_rung_R`: the value at epoch (warmup + 1) * 3**R)."""
    out, rung = {}, 0
    while (step := (warmup + 1) * 3**rung) in values:
        out[f"completed_rung_{rung}"] = values[step]
        rung += 1
    return out


def pruning_check(pruner: str, basis: list[dict], train: TrainConfig):
    """A function of a history row that raises Pruned when the pruner, judging against `basis` alone, would stop
    the trial after that epoch; never after the epoch that ends the run anyway (its last, early stopping, a
    diverged loss): nothing is left to save there, and the trial has finished."""
    optuna = optuna_module()
    warmup = warmup_epochs(train.epochs)
    study = optuna.create_study(direction="maximize", pruner=make_pruner(pruner, warmup))
    for b in basis:
        state = optuna.trial.TrialState[b["state"]]
        values = {int(k): v for k, v in b["values"].items()}
        value = max(values.values()) if state == optuna.trial.TrialState.COMPLETE else None
        attrs = _rungs(values, warmup) if pruner == "halving" else {}
        study.add_trial(
            optuna.trial.create_trial(state=state, value=value, intermediate_values=values, system_attrs=attrs)
        )
    trial, best = study.ask(), Best(train.monitor)

    def check(row: dict) -> None:
        epoch = int(row["epoch"])
        trial.report(float(row["val_f1"]), epoch)
        best.update(float(row[train.monitor]), epoch)
        last = epoch >= train.epochs or (train.patience and best.bad_epochs >= train.patience)
        if not (last or not math.isfinite(float(row["train_loss"]))) and trial.should_prune():
            raise Pruned

    return check


def tune_task(job: TrialJob, progress: bool = False) -> dict:
    """Train one trial (or resume it, or read it back), pruned as its basis says; what any executor runs. -> the
    run's summary, with `pruned` and `values` (epoch -> validation macro-F1)."""
    check = pruning_check(job.pruner, job.basis, job.config.train)
    done = Path(job.out) / HISTORY
    pruned = False
    try:
        for row in read_history(done) if done.is_file() else []:  # a resumed trial: judge the epochs it had
            check(row)
        run_job(job, progress, check=check)
    except Pruned:
        pruned = True
    history = read_history(done)
    best = max(history, key=lambda r: r["val_f1"])["epoch"]
    return {
        "run": job.run,
        "seed": job.seed,
        "out": job.out,
        **summarize_history(history, best),
        "pruned": pruned,
        "values": {int(r["epoch"]): float(r["val_f1"]) for r in history},
    }


# ------------------------------------------------------------------------------------------ the search


def _settings(base: Config, params: list[Param], trials: int, pruner: str, seed: int) -> dict:
    return {
        "base": base.absolute().to_dict(),  # a rerun from another folder names the same data
        "params": [dataclasses.asdict(p) | {"choices": list(p.choices)} for p in params],
        "pruner": pruner,
        "seed": seed,
        "trials": trials,
    }


def _check_settings(out: Path, settings: dict) -> None:
    """A rerun continues the same search: the same base config, space, pruner and seed (more trials allowed)."""
    path = out / SETTINGS
    if path.is_file():
        saved = json.loads(path.read_text())
        changed = [k for k in ("base", "params", "pruner", "seed") if saved.get(k) != settings[k]]
        if changed:
            raise UserError(
                f"{out} holds a search with other settings ({', '.join(changed)} differ): use another --out"
            )
    write_text(path, json.dumps(settings, indent=1) + "\n")


def _basis(study) -> list[dict]:
    optuna = optuna_module()
    done = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
    return [
        {"number": t.number, "state": t.state.name, "values": {str(k): v for k, v in t.intermediate_values.items()}}
        for t in study.get_trials(deepcopy=False, states=done)
    ]


def _trial_config(base: Config, params: dict, threads: int) -> Config:
    try:
        return make_config(base.absolute(), {**params, "threads": threads})
    except UserError as e:
        raise UserError(f"trial {params}: {e}") from None


def _round(study, params: list[Param], seed: int, jobs: int, trials: int, basis: list[int]) -> list:
    """This round's trials: the interrupted ones first (in number order), then new ones up to `jobs` (and the
    search's `trials` in all), each sampled by a TPE sampler seeded from (seed, its number), the numbers of the
    finished trials it will be pruned against (`basis`) recorded with it."""
    optuna = optuna_module()
    every = study.get_trials(deepcopy=False)
    running = [t for t in every if t.state == optuna.trial.TrialState.RUNNING]
    for t in running:
        if "basis" not in t.user_attrs:  # stopped while it was being sampled: never trained, never resumed
            study.tell(t.number, state=optuna.trial.TrialState.FAIL)
    out = [optuna.Trial(study, t._trial_id) for t in running if "basis" in t.user_attrs][:jobs]
    total = len(every)
    while len(out) < jobs and total < trials:
        study.sampler = optuna.samplers.TPESampler(seed=seed * 100_003 + total, n_startup_trials=_startup(trials))
        trial = study.ask()
        for p in params:
            p.suggest(trial)
        trial.set_user_attr("basis", basis)
        out.append(trial)
        total += 1
    return out


def _startup(trials: int) -> int:
    """Random trials before TPE models the rest: a third of the search, 3 to 10."""
    return max(3, min(10, trials // 3))


def _job(trial, base: Config, out: Path, pruner: str, basis: list[dict], threads: int) -> TrialJob:
    """The trial's job; an interrupted trial keeps the config its run folder was started with (its threads came
    from the --jobs of that call)."""
    run = out / "trials" / f"trial-{trial.number:03d}"
    cfg = read_config(run) if (run / CONFIG).is_file() else _trial_config(base, dict(trial.params), threads)
    wanted = set(trial.user_attrs.get("basis", []))
    return TrialJob(
        f"trial-{trial.number:03d}",
        cfg.train.seed,
        cfg,
        str(out / "trials" / f"trial-{trial.number:03d}"),
        pruner=pruner,
        basis=[b for b in basis if b["number"] in wanted],
    )


def run_tune(
    base: Config,
    params: list[Param],
    out: Path,
    trials: int,
    executor: Executor | None = None,
    jobs: int = 1,
    reporter: Reporter | None = None,
    pruner: str = "median",
    seed: int = 0,
) -> dict:
    """Run (or continue) a search of `trials` trials over `params` from `base`; write its report; -> its summary
    (`tune_summary`)."""
    optuna = optuna_module()
    reporter = reporter or Reporter()
    if pruner not in PRUNERS:
        raise UserError(f"unknown pruner '{pruner}' (choose from: {', '.join(PRUNERS)})")
    if trials < 1 or not params:
        raise UserError("cnnlab tune needs --trials N >= 1 and at least one --param")
    if len({p.name for p in params}) < len(params):
        raise UserError("a field is searched twice: give each --param once")
    if not base.data.path:
        raise UserError("no dataset given: pass --data DIR")
    threads = study_threads(base, jobs)
    for p in params:  # every value the space can reach is a valid config, before anything trains
        for v in p.choices or (p.low, p.high):
            _trial_config(base, {p.name: int(v) if p.kind == "int" else v}, threads)
    out = output_folder(Path(out), protected_paths(base.data.path), "tune folder")
    _check_settings(out, _settings(base, params, trials, pruner, seed))
    storage = f"sqlite:///{(out / STORAGE).resolve()}"
    study = optuna.create_study(study_name="cnnlab", storage=storage, direction="maximize", load_if_exists=True)
    with given_or_local(executor, jobs, reporter.line, task=tune_task) as runner:
        while True:
            basis = _basis(study)  # the trials finished before this round: what its trials are pruned against
            batch = _round(study, params, seed, jobs, trials, [b["number"] for b in basis])
            if not batch:
                break
            todo = []
            for t in batch:
                try:
                    todo.append(_job(t, base, out, pruner, basis, threads))
                except UserError:  # settings that make no valid config: the trial fails, the search stops here
                    study.tell(t, state=optuna.trial.TrialState.FAIL)
                    raise
            results = runner.map(todo)
            for trial, r in zip(batch, results, strict=True):
                for epoch, value in sorted(r["values"].items()):
                    trial.report(value, epoch)
                state = optuna.trial.TrialState.PRUNED if r["pruned"] else optuna.trial.TrialState.COMPLETE
                study.tell(trial, None if r["pruned"] else max(r["values"].values()), state=state)
    from cnnlab.studies.tune_report import tune_report

    return tune_report(study, base, params, out, reporter.lang)


def tune(
    data=None,
    *,
    out,
    trials: int,
    params,
    config=None,
    jobs: int | str = "auto",
    executor: str = "local",
    address: str | None = None,
    gpus_per_run: float = 0.25,
    pruner: str = "median",
    sampler_seed: int = 0,
    lang: str = "en",
    log=print,
    **overrides,
) -> dict:
    """Search `params` (specs such as "lr=log:1e-4:1e-1", "optimizer=adam,sgd", "dropout=0.0:0.5") over `trials`
    runs of `config` (a TOML file or recipe; else `cnnlab train`'s defaults) with `overrides`, on `data`'s
    validation split; `jobs` trials at a time, locally or as Ray tasks (`executor`, `address`, `gpus_per_run` as
    for `study`; `sampler_seed` seeds the sampler, a config `seed` the trials). Resumes when called again. Writes
    `out/report.md`, `best.toml`, `trials.csv`, `results.json`; returns results.json's contents. `cnnlab tune` is
    this function."""
    from cnnlab.studies.executors import make_executor, resolve_jobs, running

    reporter = Reporter(log=log, lang=lang)
    jobs = resolve_jobs(jobs, executor)
    specs = [parse_param(p) for p in ([params] if isinstance(params, str) else params)]
    optuna_module()  # a missing Optuna is the first thing said
    with running(make_executor(executor, jobs, address, gpus_per_run, log=log, task=tune_task)) as runner:
        base = make_config(config, {"data.path": None if data is None else str(data), **overrides})
        return run_tune(base, specs, Path(out), trials, runner, jobs, reporter, pruner, sampler_seed)
