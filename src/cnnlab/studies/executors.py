"""Executors: where a study's runs train. One small interface, `map(jobs) -> summaries`, in job order.

A job is one run of a study (its validated config and its folder); `run_job` trains it, resumes it, or reads
back its result when it has finished, so an executor may run a job again safely. `LocalExecutor` runs jobs on
this machine; `RayExecutor` runs each as a Ray task on a cluster (Ray is optional: `pip install cnnlab[ray]`,
imported only here, only when asked for).

This module imports no torch: a command creates its executor first, so that its worker processes import torch
while the command itself still reads and checks its configs.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import os
import pickle
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from cnnlab.config import Config
from cnnlab.errors import UserError

EXECUTORS = ("local", "ray")
AUTO_JOBS_MAX = 4  # --jobs auto: at most this many runs at once on one machine


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


def run_job(job: Job, progress: bool = False) -> dict:
    """Train one run, or resume it, or read its result if it has finished. Safe to call again."""
    from cnnlab.reporting.reporter import Reporter
    from cnnlab.training import run_folder
    from cnnlab.training.trainer import fit, resume

    # A run folder's config.toml holds absolute paths: compare like with like, whatever the working directory.
    out, cfg = Path(job.out), job.config.absolute()
    reporter = Reporter.quiet().with_(progress=progress)  # a bar per epoch at most: the study prints its own lines
    if run_folder.is_run(out):
        saved = run_folder.read_config(out)
        if saved != cfg:
            changed = sorted(k for k in Config.keys() if saved.get(k) != cfg.get(k))
            raise UserError(f"{out} holds a run with another config ({', '.join(changed)} differ): "
                            "use another --out, or delete that folder")
        summary = resume(out, reporter)
    else:
        summary = fit(cfg, out, reporter)
    return {"run": job.run, "seed": job.seed, "out": str(out), **summary}


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
                raise Stopped("stopped by SIGTERM: the runs under way keep their last finished epoch; rerun the "
                              "same command to resume") from None
            raise
        executor.close()


@contextlib.contextmanager
def _sigterm_raises():
    """SIGTERM raises Terminated (once), where this is the main thread and SIGTERM has no handler of its own; the
    list yielded holds the signal once it came."""
    try:
        installed = (threading.current_thread() is threading.main_thread()
                     and signal.getsignal(signal.SIGTERM) == signal.SIG_DFL)
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

    signal.signal(signal.SIGTERM, handler)
    try:
        yield fired
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


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
    `_start_workers`), and live until `close`: every stage of the assignment (one `map` each) uses the same
    workers, which import torch once and keep the decoded images of their last data set in memory. Runs go to
    the first free worker; results come back in job order. A worker runs cnnlab's own code only
    (cnnlab.studies.worker), never the user's script, and never outlives this process."""

    def __init__(self, jobs: int = 1, log=print, task: Callable[[Job], dict] = run_job):
        self.jobs = max(1, jobs)
        self.log, self.task = log, task
        self.workers: list[_Worker] = _start_workers(self.jobs) if self.jobs > 1 else []
        self.closed = False

    def map(self, jobs: list[Job]) -> list[dict]:
        if self.closed:
            raise RuntimeError("this LocalExecutor is closed (or stopped after an error)")
        if not self.workers:
            results = []
            for i, job in enumerate(jobs, 1):
                self.log(f"[{i}/{len(jobs)}] {job.run} (seed {job.seed})")
                results.append(self.task(job, progress=True))
                _done(self.log, results[-1])
            return results
        if not jobs:
            return []
        self.log(f"{len(jobs)} runs, {min(self.jobs, len(jobs))} at a time in worker processes")
        todo: queue.SimpleQueue = queue.SimpleQueue()
        for i, job in enumerate(jobs):  # pickled here: a task that cannot be sent fails here, at once
            todo.put((i, pickle.dumps((self.task, job), protocol=pickle.HIGHEST_PROTOCOL)))
        done: queue.SimpleQueue = queue.SimpleQueue()
        drivers = [threading.Thread(target=_drive, args=(w, todo, done), daemon=True, name=f"cnnlab-worker-{w.pid}")
                   for w in self.workers[:len(jobs)]]
        for d in drivers:
            d.start()
        results: list = [_PENDING] * len(jobs)
        logged = 0
        try:
            for _ in jobs:
                i, (kind, *rest) = _wait(done)
                job = jobs[i]
                if kind == "died":
                    raise UserError(f"a worker process died while training {job.run} seed {job.seed} ({rest[0]}): "
                                    "rerun the same command to resume from the last finished epochs")
                if kind == "error":
                    error, text = rest
                    if not isinstance(error, UserError):
                        error.__cause__ = _RemoteTraceback(text)
                    raise error
                results[i] = rest[0]
                while logged < len(jobs) and results[logged] is not _PENDING:
                    _done(self.log, results[logged])
                    logged += 1
        except BaseException:  # an error, Ctrl-C or SIGTERM: queued runs do not start (they resume on the next try)
            with contextlib.suppress(queue.Empty):
                while True:
                    todo.get_nowait()
            self.abort()  # the runs going keep their last finished epoch
            raise
        finally:
            for d in drivers:
                d.join(5)
        return results

    def close(self) -> None:
        """Stop the workers: each exits at once once asked (they are idle between `map`s)."""
        workers, self.workers, self.closed = self.workers, [], True
        for w in workers:
            w.ask_to_stop()
        _finish(workers, grace=10)

    def abort(self) -> None:
        """Stop the workers now, as SIGTERM does: a run going keeps its last finished epoch (it resumes)."""
        workers, self.workers, self.closed = self.workers, [], True
        for w in workers:
            w.terminate()
        _finish(workers, grace=WORKER_GRACE_S)


def _imports() -> None:
    """What every run imports: torch, torch._dynamo (torch's optimizers import it on first use: a second or two)
    and matplotlib (curves.png)."""
    import matplotlib.figure  # noqa: F401
    import torch._dynamo  # noqa: F401


# ------------------------------------------------------------------------------------------ worker processes

WORKER_GRACE_S = 20  # a worker told to stop that has not exited by then is killed
_PENDING = object()
_SPAWN = "from cnnlab.studies.worker import main; main()"
_LIVE: set[_Worker] = set()  # this process's workers: a forked one closes the others' pipes


class _RemoteTraceback(Exception):
    """The traceback of an exception raised in a worker process (as its __cause__)."""

    def __str__(self) -> str:
        return "\n" + self.args[0]


class _Died(Exception):
    pass


def _can_fork() -> bool:
    """Where this process has not imported torch yet (a `cnnlab` command, before it reads any config) and runs
    no other thread, workers are forked after importing what runs need once: they start with those imports done,
    in no time. Forking after torch has run (a notebook, a test) could deadlock in OpenMP, forking beside other
    threads could copy a held lock, and macOS and Windows lack a safe fork: there, each worker is a new Python
    (`python -c "...worker..."`) that imports for itself, in parallel with this process."""
    return sys.platform == "linux" and "torch" not in sys.modules and threading.active_count() == 1


def _start_workers(n: int) -> list[_Worker]:
    fork = _can_fork()
    if fork:
        _imports()
    workers: list[_Worker] = []
    try:
        for _ in range(n):
            workers.append(_Worker.fork() if fork else _Worker.spawn())
        for w in workers:  # threads only now: every fork above is done from a single-threaded process
            w.start()
    except BaseException:
        for w in workers:
            w.terminate()
        _finish(workers, grace=5)
        raise
    return workers


class _Worker:
    """One worker process: a pipe each way for the protocol (cnnlab.studies.worker), and its stderr, forwarded to
    this process's stderr by a thread that keeps its last lines (quoted if the worker dies)."""

    def __init__(self, pid: int, to, frm, err, popen: subprocess.Popen | None = None):
        self.pid, self.to, self.frm, self.err, self.popen = pid, to, frm, err, popen
        self.returncode: int | None = None
        self.lines: collections.deque[str] = collections.deque(maxlen=5)
        self.forwarder: threading.Thread | None = None
        self.reaping = threading.Lock()
        _LIVE.add(self)

    @classmethod
    def spawn(cls) -> _Worker:
        import cnnlab

        env = dict(os.environ)  # cnnlab importable as it is here, whatever this process added to sys.path
        env["PYTHONPATH"] = os.pathsep.join([str(Path(cnnlab.__file__).resolve().parents[1]),
                                             *filter(None, [env.get("PYTHONPATH")])])
        p = subprocess.Popen([sys.executable, "-c", _SPAWN, str(os.getpid())], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, close_fds=True)
        return cls(p.pid, p.stdin, p.stdout, p.stderr, p)

    @classmethod
    def fork(cls) -> _Worker:
        r0, w0 = os.pipe()
        r1, w1 = os.pipe()
        r2, w2 = os.pipe()
        parent = os.getpid()
        for f in (sys.stdout, sys.stderr):  # nothing buffered here is written twice
            with contextlib.suppress(Exception):
                f.flush()
        pid = os.fork()
        if pid == 0:  # the worker: its pipes on fds 0, 1 and 2, the other workers' pipes closed
            code = 1
            try:
                for other in list(_LIVE):
                    for f in (other.to, other.frm, other.err):
                        with contextlib.suppress(OSError):
                            os.close(f.fileno())
                os.dup2(r0, 0)
                os.dup2(w1, 1)
                os.dup2(w2, 2)
                for fd in (r0, w0, r1, w1, r2, w2):
                    os.close(fd)
                from cnnlab.studies.worker import serve

                code = serve(parent)
            except BaseException:  # noqa: BLE001
                import traceback

                traceback.print_exc()
            finally:
                os._exit(code)
        for fd in (r0, w1, w2):
            os.close(fd)
        return cls(pid, os.fdopen(w0, "wb"), os.fdopen(r1, "rb"), os.fdopen(r2, "rb"))

    def start(self) -> None:
        self.send(("path", list(sys.path)))  # where a task's module (a test's) is found
        self.forwarder = threading.Thread(target=self._forward, daemon=True, name=f"cnnlab-stderr-{self.pid}")
        self.forwarder.start()

    def _forward(self) -> None:
        for line in iter(self.err.readline, b""):
            text = line.decode(errors="replace")
            if text.strip():
                self.lines.append(text.strip())
            with contextlib.suppress(Exception):  # no stderr (pythonw), or a closed one
                sys.stderr.write(text)
                sys.stderr.flush()

    def send(self, msg) -> None:
        self.to.write(pickle.dumps(msg, protocol=pickle.HIGHEST_PROTOCOL))
        self.to.flush()

    def call(self, payload: bytes):
        """Run one job (a pickle of task and job): its reply, or _Died saying what happened to the worker."""
        try:
            self.to.write(pickle.dumps(("run", payload), protocol=pickle.HIGHEST_PROTOCOL))
            self.to.flush()
            return pickle.load(self.frm)
        except Exception:  # noqa: BLE001 (a broken pipe, an end of file, a half-written reply)
            raise _Died(self.what_happened()) from None

    def what_happened(self) -> str:
        """How the worker ended (its exit code or signal), and its last line on stderr."""
        rc = self.wait(10)
        if rc is None:
            self.kill()
            self.wait(5)
            what = "it stopped answering, and was killed"
        elif rc < 0:
            what = f"killed by {_signal_name(-rc)}"
        else:
            what = f"exit code {rc}"
        if self.forwarder is not None:
            self.forwarder.join(2)
        return what + (f"; its last line: {self.lines[-1]}" if self.lines else "")

    def wait(self, timeout: float) -> int | None:
        """The exit code (negative: the signal that ended it), or None if it still runs after `timeout` s."""
        if self.returncode is None:
            if self.popen is not None:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    self.returncode = self.popen.wait(timeout)
            else:
                deadline = time.monotonic() + timeout
                while self.returncode is None:
                    with self.reaping:  # a map's thread and the main thread may both wait
                        if self.returncode is not None:
                            break
                        pid, status = os.waitpid(self.pid, os.WNOHANG)
                        if pid:
                            self.returncode = os.waitstatus_to_exitcode(status)
                            break
                    if time.monotonic() >= deadline:
                        break
                    time.sleep(0.05)
        return self.returncode

    def ask_to_stop(self) -> None:
        with contextlib.suppress(Exception):
            self.send(None)
            self.to.close()

    def terminate(self) -> None:
        self._signal(signal.SIGTERM)

    def kill(self) -> None:
        self._signal(getattr(signal, "SIGKILL", signal.SIGTERM))

    def _signal(self, sig) -> None:
        if self.wait(0) is None:
            with contextlib.suppress(OSError):
                if self.popen is not None:
                    self.popen.send_signal(sig)
                else:
                    os.kill(self.pid, sig)


def _finish(workers: list[_Worker], grace: float) -> None:
    """Wait `grace` seconds for the workers to exit, then kill those left; close their pipes."""
    deadline = time.monotonic() + grace
    for w in workers:
        if w.wait(max(0.0, deadline - time.monotonic())) is None:
            w.kill()
            w.wait(5)
    for w in workers:
        if w.forwarder is not None:
            w.forwarder.join(2)
        for f in (w.to, w.frm, w.err):
            with contextlib.suppress(Exception):
                f.close()
        _LIVE.discard(w)


def _signal_name(n: int) -> str:
    try:
        return signal.Signals(n).name
    except ValueError:
        return f"signal {n}"


def _drive(worker: _Worker, todo: queue.SimpleQueue, done: queue.SimpleQueue) -> None:
    """One worker's thread in a `map`: jobs from `todo` until none is left, each reply into `done`."""
    while True:
        try:
            i, payload = todo.get_nowait()
        except queue.Empty:
            return
        try:
            done.put((i, worker.call(payload)))
        except _Died as e:
            done.put((i, ("died", str(e))))
            return
        except BaseException as e:  # noqa: BLE001 (never leave `map` waiting)
            done.put((i, ("error", e, "")))
            return


def _wait(done: queue.SimpleQueue):
    while True:  # a timeout, so that Ctrl-C and SIGTERM reach this thread on every platform
        try:
            return done.get(timeout=0.5)
        except queue.Empty:
            continue


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
            left = refs[len(results):]
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
