"""Executors: where a study's runs train. One small interface, `map(jobs) -> summaries`, in job order.

A job is one run of a study (its validated config and its folder); `run_job` trains it, resumes it, or reads
back its result when it has finished, so an executor may run a job again safely. `LocalExecutor` runs jobs on
this machine; `RayExecutor` runs each as a Ray task on a cluster (Ray is optional: `pip install cnnlab[ray]`,
imported only here, only when asked for).

This module imports no torch: a command creates its executor first, so that its worker processes import torch
while the command itself still reads and checks its configs.
"""

from __future__ import annotations

import contextlib
import dataclasses
import multiprocessing
import os
import socket
import sys
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from cnnlab.config import Config
from cnnlab.errors import UserError

EXECUTORS = ("local", "ray")
AUTO_JOBS_MAX = 4  # --jobs auto: at most this many runs at once on one machine


@dataclass
class Job:
    run: str
    seed: int
    config: Config  # validated
    out: str


class Executor(Protocol):
    def map(self, jobs: list[Job]) -> list[dict]: ...

    def close(self) -> None: ...

    def abort(self) -> None: ...


def run_job(job: Job, progress: bool = False) -> dict:
    """Train one run, or resume it, or read its result if it has finished. Safe to call again."""
    from cnnlab.training import run_folder
    from cnnlab.training.trainer import fit, resume

    # A run folder's config.toml holds absolute paths: compare like with like, whatever the working directory.
    out, cfg, quiet = Path(job.out), job.config.absolute(), lambda *a: None
    if run_folder.is_run(out):
        saved = run_folder.read_config(out)
        if saved != cfg:
            changed = sorted(k for k in Config.keys() if saved.get(k) != cfg.get(k))
            raise UserError(f"{out} holds a run with another config ({', '.join(changed)} differ): "
                            "use another --out, or delete that folder")
        summary = resume(out, progress=progress, log=quiet)
    else:
        summary = fit(cfg, out, progress=progress, log=quiet)
    return {"run": job.run, "seed": job.seed, "out": str(out), **summary}


def resolve_jobs(jobs: int | str, kind: str = "local") -> int:
    """--jobs as a number of parallel runs. `auto`: one run a core up to AUTO_JOBS_MAX on this machine (small
    networks use one core each better than they share several: docs/results/throughput.md); with ray, 1 (Ray
    decides how many run at once; jobs only divides this machine's cores into each run's threads)."""
    if jobs == "auto":
        return 1 if kind == "ray" else max(1, min(AUTO_JOBS_MAX, os.cpu_count() or 1))
    try:
        n = int(jobs)
    except (TypeError, ValueError):
        raise UserError(f"--jobs must be a number or auto, not '{jobs}'") from None
    if n < 1:
        raise UserError("--jobs must be at least 1")
    return n


def make_executor(kind: str = "local", jobs: int = 1, address: str | None = None, gpus_per_run: float = 0.25,
                  log=print) -> Executor:
    """The executor the `study` command names: local (the default) or ray. A local one with jobs > 1 starts its
    worker processes now."""
    if kind == "ray":
        return RayExecutor(address, gpus_per_run, log=log)
    if kind != "local":
        raise UserError(f"unknown executor '{kind}' (choose from: {', '.join(EXECUTORS)})")
    if address:
        raise UserError("--address is the address of a Ray cluster: it needs --executor ray")
    return LocalExecutor(jobs, log=log)


@contextlib.contextmanager
def running(executor: Executor):
    """`executor` for the duration of a block: closed after it, aborted (workers stopped at once) if it fails."""
    try:
        yield executor
    except BaseException:
        executor.abort()
        raise
    executor.close()


@contextlib.contextmanager
def given_or_local(executor: Executor | None, jobs: int, log=print):
    """`executor`, or a LocalExecutor of `jobs` for the duration (`running`)."""
    if executor is not None:
        yield executor
        return
    with running(LocalExecutor(jobs, log=log)) as local:
        yield local


def _done(log, r: dict) -> None:
    log(f"  {r['run']} seed {r['seed']}: best val macro-F1 {r.get('best_val_f1', float('nan')):.4f} "
        f"at epoch {r.get('best_epoch')} of {r.get('epochs')}")


class LocalExecutor:
    """Runs jobs here: in this process with jobs=1, else in `jobs` long-lived worker processes sharing the cores.

    The workers start when the executor is made, which a command does before it reads any config (see
    `_worker_context`), and live until `close`: every stage of the assignment (one `map` each) uses the same
    workers, which import torch once and keep the decoded images of their last data set in memory. Runs go to
    the first free worker; results come back in job order."""

    def __init__(self, jobs: int = 1, log=print, task: Callable[[Job], dict] = run_job):
        self.jobs = max(1, jobs)
        self.log, self.task = log, task
        self.pool = None
        if self.jobs > 1:
            self.pool = ProcessPoolExecutor(self.jobs, mp_context=_worker_context(), initializer=_worker_start)
            for _ in range(self.jobs):  # a submit starts a worker: start them all now
                self.pool.submit(int)

    def map(self, jobs: list[Job]) -> list[dict]:
        if self.pool is None:
            results = []
            for i, job in enumerate(jobs, 1):
                self.log(f"[{i}/{len(jobs)}] {job.run} (seed {job.seed})")
                results.append(self.task(job, progress=True))
                _done(self.log, results[-1])
            return results
        if jobs:
            self.log(f"{len(jobs)} runs, {min(self.jobs, len(jobs))} at a time in worker processes")
        futures = [self.pool.submit(self.task, job) for job in jobs]
        results = []
        try:
            for job, f in zip(jobs, futures, strict=True):
                try:
                    results.append(f.result())
                except BrokenProcessPool:
                    raise UserError(f"a worker process died while training {job.run} seed {job.seed} (killed, or "
                                    "out of memory?): rerun the same command to resume from the last finished "
                                    "epochs, or use fewer --jobs") from None
                _done(self.log, results[-1])
        except BaseException:  # an error or Ctrl-C: queued runs do not start (they resume on the next try)
            # The runs going save their last epoch (they got the Ctrl-C too).
            self.pool.shutdown(wait=True, cancel_futures=True)
            self.pool = None
            raise
        return results

    def close(self) -> None:
        """Stop the workers (each exits at once: see `_worker_start`)."""
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=True)
            self.pool = None

    def abort(self) -> None:
        """Stop the workers now, whatever they do: the command failed before it handed them any run."""
        if self.pool is not None:
            procs = list((getattr(self.pool, "_processes", None) or {}).values())  # 3.14: terminate_workers()
            self.pool.shutdown(wait=False, cancel_futures=True)
            for p in procs:
                p.terminate()
            self.pool = None


def _imports() -> None:
    """What every run imports: torch, torch._dynamo (torch's optimizers import it on first use: a second or two)
    and matplotlib (curves.png)."""
    import matplotlib.figure  # noqa: F401
    import torch._dynamo  # noqa: F401


def _worker_context():
    """How workers start. Where this process has not imported torch yet (a `cnnlab` command, before it reads any
    config), it imports what runs need once, then forks: the workers start with those imports done, in no time.
    Forking after torch has run (a notebook, a test) could deadlock in OpenMP, and macOS and Windows lack a safe
    fork: there, spawn, and each worker imports for itself, in parallel with this process."""
    if sys.platform == "linux" and "torch" not in sys.modules:
        _imports()
        return multiprocessing.get_context("fork")
    return multiprocessing.get_context("spawn")


def _worker_start() -> None:
    """A worker's first step: the imports (done already in a forked worker), and a quick exit. By the time a
    worker exits, its results have been sent and its runs' files written and closed, so the interpreter's
    teardown of torch (about a second) is skipped: atexit runs this handler first, as it is registered last."""
    import atexit

    _imports()
    atexit.register(os._exit, 0)


# ------------------------------------------------------------------------------------------ Ray


def _import_ray():
    try:
        import ray
    except ImportError:
        raise UserError("--executor ray needs Ray, which is not installed: pip install cnnlab[ray]") from None
    return ray


def _ray_task(task: Callable[[Job], dict], job: Job) -> tuple[dict | None, str | None]:
    """One job on a Ray worker. A UserError comes back as a value, not an exception, so Ray never retries it."""
    try:
        return task(job), None
    except UserError as e:
        import ray

        return None, f"{e} (on Ray node {ray.util.get_node_ip_address()})"


class RayExecutor:
    """Runs each job as a Ray task, on the cluster at `address` or on a Ray started here with this machine's cores.

    A task reserves the run's threads as CPUs and, when the run may use a GPU, `gpus_per_run` of one (0.25: four
    runs share a GPU), so Ray runs as many runs at once as the cluster holds. Every node must reach the dataset
    and the study folder at the same path (a shared file system), and have cnnlab installed. A task whose worker
    dies, or which raises anything but a UserError, runs again (`max_retries`) and resumes from the run's last
    checkpoint. `task` is what a task runs on a job (`run_job`; tests wrap it).
    """

    def __init__(self, address: str | None = None, gpus_per_run: float = 0.25, max_retries: int = 3, log=print,
                 task: Callable[[Job], dict] = run_job):
        if not 0 < gpus_per_run <= 1:
            raise UserError(f"--gpus-per-run must be in (0, 1], not {gpus_per_run:g}: a run uses at most one GPU")
        self.ray = _import_ray()  # before anything trains: a missing Ray is one clear line
        self.address, self.gpus_per_run, self.max_retries = address, gpus_per_run, max_retries
        self.log, self.task, self.started = log, task, False

    def _connect(self) -> None:
        if self.ray.is_initialized():  # e.g. a test's own ray.init, or an earlier stage of the assignment
            return
        host, _, port = (self.address or "").rpartition(":")
        if host and "://" not in host and port.isdigit():
            try:  # ray.init waits minutes for an address where nothing listens: fail at once instead
                socket.create_connection((host, int(port)), timeout=10).close()
            except OSError as e:
                raise UserError(f"no Ray cluster answers at {self.address} ({e.strerror or e}): start one there "
                                "with `ray start --head`, or check --address") from None
        try:
            self.ray.init(address=self.address)
        except ConnectionError as e:
            raise UserError(f"cannot connect to the Ray cluster at {self.address}: {e}") from None
        self.started = True

    def map(self, jobs: list[Job]) -> list[dict]:
        if not jobs:
            return []
        self._connect()
        # Workers on other nodes start in other folders: every path they get must be absolute.
        jobs = [dataclasses.replace(j, config=j.config.absolute(), out=str(Path(j.out).absolute())) for j in jobs]
        resources = self.ray.cluster_resources()
        cpus, gpus = resources.get("CPU", 0), resources.get("GPU", 0)
        largest = max((n["Resources"].get("CPU", 0) for n in self.ray.nodes() if n["Alive"]), default=0)
        options = [{"num_cpus": self._cpus(job, largest), "num_gpus": self._gpus(job, gpus)} for job in jobs]
        self.log(f"ray: {len(jobs)} runs on a cluster of {cpus:g} CPUs and {gpus:g} GPUs")
        remote = self.ray.remote(_ray_task)
        refs = [remote.options(**o, max_retries=self.max_retries, retry_exceptions=True,
                               name=f"cnnlab {job.run} seed {job.seed}").remote(self.task, job)
                for job, o in zip(jobs, options, strict=True)]
        results: list[dict] = []
        try:
            for job, ref in zip(jobs, refs, strict=True):
                try:
                    summary, error = self.ray.get(ref)
                except self.ray.exceptions.RayError as e:  # still failing after its retries (OOM, a lost node)
                    first = (str(e).strip().splitlines() or [type(e).__name__])[0][:160]
                    raise UserError(f"run {job.run} seed {job.seed} failed on Ray after {self.max_retries} "
                                    f"retries: {first}") from None
                if error is not None:
                    raise UserError(error)
                results.append(summary)
                _done(self.log, summary)
        finally:
            for ref in refs[len(results):]:  # after an error or Ctrl-C, stop the runs still going (they resume)
                self.ray.cancel(ref)
        return results

    @staticmethod
    def _cpus(job: Job, largest: float) -> int:
        cpus = max(1, job.config.train.threads)
        if cpus > largest:  # Ray would wait forever for a node that big
            raise UserError(f"a run asks for {cpus} threads but the largest Ray node has {largest:g} CPUs: "
                            f"pass --set threads={max(1, int(largest))} (or --jobs to divide the cores)")
        return cpus

    def _gpus(self, job: Job, cluster_gpus: float) -> float:
        device = job.config.train.device
        if device not in ("auto", "cpu", "cuda", "cuda:0"):
            raise UserError(f"device {device}: with --executor ray use device=cuda (Ray picks each run's GPU)")
        if device == "cpu" or (device == "auto" and not cluster_gpus):
            return 0
        if not cluster_gpus:
            raise UserError(f"device {device} asked for, but the Ray cluster has no GPU")
        return self.gpus_per_run

    def close(self) -> None:
        """Leave Ray if this executor joined it: a Ray started here stops; a cluster it connected to runs on."""
        if self.started:
            self.ray.shutdown()
            self.started = False

    abort = close
