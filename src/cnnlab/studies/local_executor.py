"""`LocalExecutor`: a study's runs on this machine, in this process (jobs = 1) or in long-lived worker processes
started from cnnlab's own entry point (cnnlab.studies.worker), never from the user's script; a worker that dies is
reported with its exit code or signal and its last line, and no worker outlives this process.
"""

from __future__ import annotations

import collections
import contextlib
import os
import pickle
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

from cnnlab.errors import UserError
from cnnlab.studies.jobs import Job, import_run_modules, run_job, set_epoch_hook
from cnnlab.studies.live_progress import StudyProgress, interactive


def log_done(log, r: dict) -> None:
    log(
        f"  {r['run']} seed {r['seed']}: best val macro-F1 {r.get('best_val_f1', float('nan')):.4f} "
        f"at epoch {r.get('best_epoch')} of {r.get('epochs')}" + (" (pruned)" if r.get("pruned") else "")
    )


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
            return self._map_here(jobs)
        if not jobs:
            return []
        self.log(f"{len(jobs)} runs, {min(self.jobs, len(jobs))} at a time in worker processes")
        todo: queue.SimpleQueue = queue.SimpleQueue()
        for i, job in enumerate(jobs):  # pickled here: a task that cannot be sent fails here, at once
            todo.put((i, pickle.dumps((self.task, job), protocol=pickle.HIGHEST_PROTOCOL)))
        done: queue.SimpleQueue = queue.SimpleQueue()
        drivers = [
            threading.Thread(target=_drive, args=(w, todo, done), daemon=True, name=f"cnnlab-worker-{w.pid}")
            for w in self.workers[: len(jobs)]
        ]
        for d in drivers:
            d.start()
        results: list = [_PENDING] * len(jobs)
        logged, left, view = 0, len(jobs), StudyProgress(jobs, self.log)
        try:
            while left:
                i, (kind, *rest) = _wait(done)
                job = jobs[i]
                if kind == "epoch":
                    view.epoch(job, rest[0])
                    continue
                left -= 1
                if kind == "died":
                    raise UserError(
                        f"a worker process died while training {job.run} seed {job.seed} ({rest[0]}): "
                        "rerun the same command to resume from the last finished epochs"
                    )
                if kind == "error":
                    error, text = rest
                    if not isinstance(error, UserError):
                        error.__cause__ = _RemoteTraceback(text)
                    raise error
                results[i] = rest[0]
                view.done(job)
                while logged < len(jobs) and results[logged] is not _PENDING:
                    log_done(view.write, results[logged])
                    logged += 1
        except BaseException:  # an error, Ctrl-C or SIGTERM: queued runs do not start (they resume on the next try)
            with contextlib.suppress(queue.Empty):
                while True:
                    todo.get_nowait()
            self.abort()  # the runs going keep their last finished epoch
            raise
        finally:
            view.close()
            for d in drivers:
                d.join(5)
        return results

    def _map_here(self, jobs: list[Job]) -> list[dict]:
        """jobs = 1: one run after another in this process, with the trainer's bars on a terminal and, in a log,
        a line per epoch."""
        results, view = [], StudyProgress(jobs, self.log, live=False)
        set_epoch_hook(None if interactive() else view.epoch)
        try:
            for i, job in enumerate(jobs, 1):
                self.log(f"[{i}/{len(jobs)}] {job.run} (seed {job.seed})")
                results.append(self.task(job, progress=True))
                log_done(self.log, results[-1])
        finally:
            set_epoch_hook(None)
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
        import_run_modules()
    workers: list[_Worker] = []
    try:
        for _ in range(n):
            workers.append(_Worker.fork() if fork else _Worker.spawn())
        for i, w in enumerate(workers):  # threads only now: every fork above is done from a single-threaded process
            w.start(i, n)
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
        env["PYTHONPATH"] = os.pathsep.join(
            [str(Path(cnnlab.__file__).resolve().parents[1]), *filter(None, [env.get("PYTHONPATH")])]
        )
        p = subprocess.Popen(
            [sys.executable, "-c", _SPAWN, str(os.getpid())],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
            close_fds=True,
        )
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
            except KeyboardInterrupt:  # Ctrl-C (the whole process group) before serve could take it: quietly
                code = 130
            except BaseException:  # noqa: BLE001
                import traceback

                traceback.print_exc()
            finally:
                os._exit(code)
        for fd in (r0, w1, w2):
            os.close(fd)
        return cls(pid, os.fdopen(w0, "wb"), os.fdopen(r1, "rb"), os.fdopen(r2, "rb"))

    def start(self, index: int, workers: int) -> None:
        self.send(("path", list(sys.path)))  # where a task's module (a test's) is found
        self.send(("share", index, workers))  # which GPU its CUDA runs use, and with how many others
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

    def call(self, payload: bytes, on_epoch: Callable[[dict], None]):
        """Run one job (a pickle of task and job): its reply, or _Died saying what happened to the worker; each
        epoch event on the way goes to `on_epoch`."""
        try:
            self.to.write(pickle.dumps(("run", payload), protocol=pickle.HIGHEST_PROTOCOL))
            self.to.flush()
            while True:
                msg = pickle.load(self.frm)
                if msg[0] != "epoch":
                    return msg
                on_epoch(msg[1])
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
            done.put((i, worker.call(payload, lambda event, i=i: done.put((i, ("epoch", event))))))
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
