"""Executors: where a study's runs train. One small interface, `map(jobs) -> summaries`, in job order.

A job is one run of a study (its validated config and its folder); `run_job` trains it, resumes it, or reads
back its result when it has finished, so an executor may run a job again safely.
"""

from __future__ import annotations

import multiprocessing
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from cnnlab import runs
from cnnlab.config import Config
from cnnlab.errors import UserError
from cnnlab.train import fit, resume


@dataclass
class Job:
    run: str
    seed: int
    config: Config  # validated
    out: str


class Executor(Protocol):
    def map(self, jobs: list[Job]) -> list[dict]: ...


def run_job(job: Job, progress: bool = False) -> dict:
    """Train one run, or resume it, or read its result if it has finished. Safe to call again."""
    out, cfg, quiet = Path(job.out), job.config, lambda *a: None
    if runs.is_run(out):
        saved = runs.read_config(out)
        if saved != cfg:
            changed = sorted(k for k in Config.keys() if saved.get(k) != cfg.get(k))
            raise UserError(f"{out} holds a run with another config ({', '.join(changed)} differ): "
                            "use another --out, or delete that folder")
        summary = resume(out, progress=progress, log=quiet)
    else:
        summary = fit(cfg, out, progress=progress, log=quiet)
    return {"run": job.run, "seed": job.seed, "out": str(out), **summary}


class LocalExecutor:
    """Runs jobs here: in this process with jobs=1, else in `jobs` processes sharing the cores."""

    def __init__(self, jobs: int = 1, log=print):
        self.jobs = max(1, jobs)
        self.log = log

    def map(self, jobs: list[Job]) -> list[dict]:
        if self.jobs == 1:
            results = []
            for i, job in enumerate(jobs, 1):
                self.log(f"[{i}/{len(jobs)}] {job.run} (seed {job.seed})")
                results.append(run_job(job, progress=True))
                self._done(results[-1])
            return results
        # spawn, not fork: forking a process that has started OpenMP threads can deadlock.
        ctx = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(self.jobs, mp_context=ctx) as pool:
            futures = [pool.submit(run_job, job) for job in jobs]
            results = []
            for f in futures:
                results.append(f.result())
                self._done(results[-1])
            return results

    def _done(self, r: dict) -> None:
        self.log(f"  {r['run']} seed {r['seed']}: best val macro-F1 {r.get('best_val_f1', float('nan')):.4f} "
                 f"at epoch {r.get('best_epoch')} of {r.get('epochs')}")
