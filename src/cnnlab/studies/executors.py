"""Executors: where a study's runs train, chosen by name (`make_executor`: local or ray) and held for the length of
a command (`running`: closed after it, stopped at once on an error or SIGTERM). The job and the interface are in
`jobs`, the executors in `local_executor` (this machine's worker processes) and `ray_executor` (a Ray cluster).

This module imports no torch: a command creates its executor first, so that its worker processes import torch
while the command itself still reads and checks its configs.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from collections.abc import Callable

from cnnlab.errors import UserError
from cnnlab.studies.jobs import Executor, Job, run_job
from cnnlab.studies.local_executor import LocalExecutor
from cnnlab.studies.ray_executor import RayExecutor

__all__ = [
    "AUTO_JOBS_MAX",
    "EXECUTORS",
    "Executor",
    "Job",
    "LocalExecutor",
    "RayExecutor",
    "Stopped",
    "Terminated",
    "given_or_local",
    "make_executor",
    "resolve_jobs",
    "run_job",
    "running",
]

EXECUTORS = ("local", "ray")


AUTO_JOBS_MAX = 4  # --jobs auto: at most this many runs at once on one machine


def resolve_jobs(jobs: int | str, kind: str = "local") -> int:
    """--jobs as a number of parallel runs. `auto`: one run a core up to AUTO_JOBS_MAX on this machine (small
    networks use one core each better than they share several: docs/results/throughput.md).

    The same for every executor `kind`: jobs divides this machine's cores into each run's threads
    (definitions.study_threads), part of a run's config, so one command gives every run the same config, hence
    the same results, locally or on Ray (where Ray, not jobs, decides how many run at once)."""
    if jobs == "auto":
        return max(1, min(AUTO_JOBS_MAX, os.cpu_count() or 1))
    try:
        n = int(jobs)
    except (TypeError, ValueError):
        raise UserError(f"--jobs must be a number or auto, not '{jobs}'") from None
    if n < 1:
        raise UserError("--jobs must be at least 1")
    return n


def make_executor(
    kind: str = "local",
    jobs: int = 1,
    address: str | None = None,
    gpus_per_run: float = 0.25,
    log=print,
    task: Callable[[Job], dict] = run_job,
) -> Executor:
    """The executor the `study` command names: local (the default) or ray, running `task` on each job (`run_job`; a
    search's `tune_task`). A local one with jobs > 1 starts its worker processes now."""
    if kind == "ray":
        return RayExecutor(address, gpus_per_run, log=log, task=task)
    if kind != "local":
        raise UserError(f"unknown executor '{kind}' (choose from: {', '.join(EXECUTORS)})")
    if address:
        raise UserError("--address is the address of a Ray cluster: it needs --executor ray")
    return LocalExecutor(jobs, log=log, task=task)


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised in the main thread while an executor is `running` (a KeyboardInterrupt: nothing that
    catches Exception stops it)."""


class Stopped(UserError):
    """The command was stopped by SIGTERM: one line, and the exit code of a process ended by SIGTERM."""

    exit_code = 128 + 15


@contextlib.contextmanager
def running(executor: Executor):
    """`executor` for the duration of a block: closed after it, aborted (workers stopped at once, the runs going
    keeping their last finished epoch) if it fails. SIGTERM stops the block as Ctrl-C does, then ends in one line
    (`Stopped`); whatever ends this process, its workers stop too (cnnlab.studies.worker)."""
    with _sigterm_raises() as fired:
        try:
            yield executor
        except BaseException as e:
            executor.abort()
            if fired and isinstance(e, KeyboardInterrupt):  # Terminated, or what a C extension (Ray) made of it
                raise Stopped(
                    "stopped by SIGTERM: the runs under way keep their last finished epoch; rerun the "
                    "same command to resume"
                ) from None
            raise
        executor.close()


@contextlib.contextmanager
def _sigterm_raises():
    """SIGTERM raises Terminated (once), where this is the main thread and SIGTERM has no handler of its own; the
    list yielded holds the signal once it came."""
    try:
        installed = (
            threading.current_thread() is threading.main_thread() and signal.getsignal(signal.SIGTERM) == signal.SIG_DFL
        )
    except (AttributeError, ValueError):
        installed = False
    fired: list[int] = []
    if not installed:
        yield fired
        return

    def handler(signum, frame):
        if not fired:  # a second SIGTERM does not cut the stopping short
            fired.append(signum)
            raise Terminated

    handler.raises_interrupt = True  # a run trained in this process (--jobs 1) keeps it (training/trainer.py)
    signal.signal(signal.SIGTERM, handler)
    try:
        yield fired
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


@contextlib.contextmanager
def given_or_local(executor: Executor | None, jobs: int, log=print, task: Callable[[Job], dict] = run_job):
    """`executor`, or a LocalExecutor of `jobs` running `task` for the duration (`running`)."""
    if executor is not None:
        yield executor
        return
    with running(LocalExecutor(jobs, log=log, task=task)) as local:
        yield local
