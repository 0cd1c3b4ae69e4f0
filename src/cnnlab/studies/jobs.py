"""A study's unit of work: a `Job` (one run: its name, seed, checked config and folder), `run_job` (train it,
resume it, or read back its result when it has finished, so any executor may run a job again safely), and the
`Executor` interface every executor implements (`map(jobs) -> summaries`, in job order).

This module imports no torch: a command creates its executor first, so that its worker processes import torch
while the command itself still reads and checks its configs.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from cnnlab.config import Config
from cnnlab.errors import UserError


@dataclass
class Job:
    """One run of a study: its name in the study, its seed, its checked config, and its run folder."""

    run: str
    seed: int
    config: Config  # validated
    out: str


class Executor(Protocol):
    """Where jobs train. `map(jobs)` trains them all and returns their summaries in job order; `close` stops the workers
    when the work is done, `abort` stops them now, whatever they do (the command failed before it handed
    them its runs)."""

    def map(self, jobs: list[Job]) -> list[dict]: ...

    def close(self) -> None: ...

    def abort(self) -> None: ...


# Called with (job, {"epoch", "epochs", "val_f1"}) after each epoch a job trains, wherever it trains: a worker
# process sets it to send the event to the command (cnnlab.studies.worker), an in-process executor to its display.
epoch_hook: Callable[[Job, dict], None] | None = None


def set_epoch_hook(hook: Callable[[Job, dict], None] | None) -> None:
    """What `run_job` calls after each epoch, from now on (None: nothing)."""
    global epoch_hook
    epoch_hook = hook


def run_job(job: Job, progress: bool = False, check: Callable[[dict], None] | None = None) -> dict:
    """Train one run, or resume it, or read its result if it has finished. Safe to call again. After every epoch
    `epoch_hook` (if set) hears of it, then `check` (if given) gets its history row, and may raise to stop the run
    there (a search's pruning): the epoch is on disk by then."""
    from cnnlab.reporting.reporter import Reporter
    from cnnlab.training import run_folder
    from cnnlab.training.trainer import fit, resume

    # A run folder's config.toml holds absolute paths: compare like with like, whatever the working directory.
    out, cfg = Path(job.out), job.config.absolute()
    hook = epoch_hook

    def on_epoch(row: dict, improved: bool) -> None:
        if hook is not None:
            hook(job, {"epoch": int(row["epoch"]), "epochs": cfg.train.epochs, "val_f1": float(row["val_f1"])})
        if check is not None:
            check(row)

    # A bar per epoch at most: the study prints its own lines.
    reporter = Reporter.quiet().with_(progress=progress, on_epoch=on_epoch)
    if run_folder.is_run(out):
        saved = run_folder.read_config(out)
        if saved != cfg:
            changed = sorted(k for k in Config.keys() if saved.get(k) != cfg.get(k))
            raise UserError(
                f"{out} holds a run with another config ({', '.join(changed)} differ): "
                "use another --out, or delete that folder"
            )
        summary = resume(out, reporter)
    else:
        summary = fit(cfg, out, reporter)
    return {"run": job.run, "seed": job.seed, "out": str(out), **summary}


def import_run_modules() -> None:
    """What every run imports: torch, torch._dynamo (torch's optimizers import it on first use: a second or two)
    and matplotlib (curves.png)."""
    import matplotlib.figure  # noqa: F401
    import torch._dynamo  # noqa: F401
