"""`RayExecutor`: each of a study's runs as a Ray task on a cluster (Ray is optional: `pip install cnnlab[ray]`,
imported only here, only when asked for), retried and resumed if its worker dies.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import signal
import socket
import sys
import threading
from collections.abc import Callable
from pathlib import Path

from cnnlab.errors import UserError
from cnnlab.studies.jobs import Job, run_job
from cnnlab.studies.local_executor import log_done


def _import_ray():
    try:
        import ray
    except ImportError:
        raise UserError("--executor ray needs Ray, which is not installed: pip install cnnlab[ray]") from None
    return ray


def _ray_task(task: Callable[[Job], dict], job: Job, path: list[str] = ()) -> tuple[dict | None, str | None]:
    """One job on a Ray worker. A UserError comes back as a value, not an exception, so Ray never retries it.
    `path`: the driver's sys.path; its folders that exist on this node are appended to the worker's, so that a
    model the run's config names by module (`package.module:builder`, `model.registered_in`) imports here as it
    did there (on a cluster: from a shared file system)."""
    sys.path += [p for p in path if p and p not in sys.path and os.path.isdir(p)]
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

    def __init__(
        self,
        address: str | None = None,
        gpus_per_run: float = 0.25,
        max_retries: int = 3,
        log=print,
        task: Callable[[Job], dict] = run_job,
    ):
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
                raise UserError(
                    f"no Ray cluster answers at {self.address} ({e.strerror or e}): start one there "
                    "with `ray start --head`, or check --address"
                ) from None
        main = threading.current_thread() is threading.main_thread()
        ours = signal.getsignal(signal.SIGTERM) if main else None
        try:
            self.ray.init(address=self.address)
        except ConnectionError as e:
            raise UserError(f"cannot connect to the Ray cluster at {self.address}: {e}") from None
        finally:
            if callable(ours):  # ray.init makes SIGTERM exit at once: keep `running`'s (the runs stop, then Ray)
                signal.signal(signal.SIGTERM, ours)
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
        refs = [
            remote.options(
                **o, max_retries=self.max_retries, retry_exceptions=True, name=f"cnnlab {job.run} seed {job.seed}"
            ).remote(self.task, job, list(sys.path))
            for job, o in zip(jobs, options, strict=True)
        ]
        results: list[dict] = []
        try:
            for job, ref in zip(jobs, refs, strict=True):
                try:
                    summary, error = self.ray.get(ref)
                except self.ray.exceptions.RayError as e:  # still failing after its retries (OOM, a lost node)
                    first = (str(e).strip().splitlines() or [type(e).__name__])[0][:160]
                    raise UserError(
                        f"run {job.run} seed {job.seed} failed on Ray after {self.max_retries} retries: {first}"
                    ) from None
                if error is not None:
                    raise UserError(error)
                results.append(summary)
                log_done(self.log, summary)
        finally:
            left = refs[len(results) :]
            for ref in left:  # after an error, Ctrl-C or SIGTERM, stop the runs still going (they resume)
                self.ray.cancel(ref)
            if left:  # a cancelled run keeps its last finished epoch before Ray (if started here) shuts down
                with contextlib.suppress(Exception):
                    self.ray.wait(left, num_returns=len(left), timeout=10)
        return results

    @staticmethod
    def _cpus(job: Job, largest: float) -> int:
        cpus = max(1, job.config.train.threads)
        if cpus > largest:  # Ray would wait forever for a node that big
            raise UserError(
                f"a run asks for {cpus} threads but the largest Ray node has {largest:g} CPUs: "
                f"pass --set threads={max(1, int(largest))} (or --jobs to divide the cores)"
            )
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
