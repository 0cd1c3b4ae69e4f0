"""A study's worker process (cnnlab.studies.local_executor.LocalExecutor): runs jobs one at a time until told to stop.

A worker is started from cnnlab's own entry point, never from the user's script: spawned as
`python -c "from cnnlab.studies.worker import main; main()" PARENT_PID`, or forked by a fresh `cnnlab` command
(see `local_executor._start_workers`). Either way it runs `serve`, which talks to its parent over its standard input
and output, one pickle a message:

    parent -> worker: ("path", sys.path) | ("share", index, workers) | ("run", pickle of (task, job)) | None (stop)
    worker -> parent: ("epoch", {"epoch", "epochs", "val_f1"}) after each epoch of a job, then its reply:
                      ("ok", result) | ("error", exception, traceback text)

Anything the worker itself prints goes to its standard error, which the parent forwards to its own and whose last
line it quotes if the worker dies. A worker never outlives its parent: on Linux the kernel sends it SIGTERM when the
parent dies (PR_SET_PDEATHSIG); everywhere, a closed standard input (the parent is gone) or a changed parent pid
stops it, as SIGTERM does: the run going keeps its last finished epoch (cnnlab.training.trainer), then it exits.
"""

from __future__ import annotations

import _thread
import os
import pickle
import queue
import signal
import sys
import threading
import time
import traceback

GRACE_S = 15  # after its parent is gone, a worker that has not stopped by itself in this time exits at once
_PR_SET_PDEATHSIG = 1


def main() -> None:
    """The spawned worker's entry point: argv[1] is the parent's pid."""
    os._exit(serve(int(sys.argv[1])))


def _setting(msg: tuple) -> bool:
    """Apply a message that sets up this worker (True), not a job (False): the parent's import path (a task, a
    test's, may live in a module of its own), or which worker of how many it is (its GPU and memory share)."""
    if msg[0] == "path":
        sys.path[:] = msg[1]
        return True
    if msg[0] == "share":
        from cnnlab.training.engine import share_machine

        share_machine(msg[1], msg[2])
        return True
    return False


def serve(parent: int) -> int:
    """Run jobs from stdin until told to stop, or until the parent is gone; the exit code. A signal that arrives
    while it sets itself up (a command that stops at a user error stops its workers at once) ends it as quietly as
    one that arrives later."""
    doing = ""
    try:
        _stop_with_parent(parent)
        out, messages = _connect(parent)
        from cnnlab.studies.jobs import import_run_modules, set_epoch_hook

        import_run_modules()  # while the parent still reads its configs (a forked worker has them already)
        while True:
            msg = _next(messages)
            if msg is None:  # asked to stop, or the parent is gone
                return 0
            if _setting(msg):
                continue
            _busy.set()
            try:
                task, job = pickle.loads(msg[1])
                doing = f" while training {job.run} seed {job.seed} (its last finished epoch is kept)"
                set_epoch_hook(lambda job, event: _send(out, ("epoch", event)))
                reply = ("ok", task(job))
            except KeyboardInterrupt:
                raise
            except BaseException as e:  # noqa: BLE001 (SystemExit too: it is the job's, not the worker's)
                reply = ("error", _portable(e), traceback.format_exc())
            doing = ""
            _busy.clear()
            try:
                data = pickle.dumps(reply, protocol=pickle.HIGHEST_PROTOCOL)
            except Exception as e:  # noqa: BLE001 (an unpicklable result)
                data = pickle.dumps(("error", RuntimeError(f"cannot send a result back: {e}"), traceback.format_exc()))
            _send(out, data)
    except KeyboardInterrupt:  # SIGINT, SIGTERM (its own or its parent's death), or the parent gone
        if doing and not _gone.is_set():  # else nothing to say, or nobody to read it
            try:
                print(f"cnnlab worker {os.getpid()}: stopped{doing}", file=sys.stderr, flush=True)
            except OSError:
                pass
        return 130
    except BrokenPipeError:  # the parent is gone before the result could be sent
        return 1
    except BaseException:
        if _interrupted.is_set() and not _busy.is_set():
            return 130  # stopped while importing, where a library may turn the interrupt into its own error
        raise
    finally:
        for f in (sys.stdout, sys.stderr):
            try:
                f.flush()
            except Exception:  # noqa: BLE001
                pass


def _connect(parent: int) -> tuple:
    """The parent's pipes: -> (the output the replies go to, the queue the stdin reader fills). The protocol keeps
    the original stdin and stdout; fd 1 (print, C libraries) then goes to stderr. A watchdog thread stops this
    worker if the parent is gone."""
    inp, out = os.fdopen(os.dup(0), "rb"), os.fdopen(os.dup(1), "wb")
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    os.dup2(2, 1)
    messages: queue.Queue = queue.Queue()
    threading.Thread(target=_read, args=(inp, messages), daemon=True, name="cnnlab-worker-stdin").start()
    threading.Thread(target=_watch_parent, args=(parent,), daemon=True, name="cnnlab-worker-parent").start()
    return out, messages


def _send(out, message) -> None:
    """One message to the parent: a pickled reply as it is, or an event (`("epoch", {...})`) pickled here."""
    out.write(message if isinstance(message, bytes) else pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL))
    out.flush()


def _stop_with_parent(parent: int) -> None:
    signal.signal(signal.SIGTERM, _raise_interrupt)  # like Ctrl-C, also while idle (the trainer's does the same)
    signal.signal(signal.SIGINT, _raise_interrupt)
    if sys.platform.startswith("linux"):
        try:
            import ctypes

            ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)
        except Exception:  # noqa: BLE001 (no libc prctl: the watchdogs below still work)
            pass
    if os.getppid() != parent:  # the parent died before the line above
        os._exit(1)


def _raise_interrupt(signum, frame):
    """KeyboardInterrupt, unless one is being handled already: a second signal (Ctrl-C reaches the whole process
    group, and the parent then sends SIGTERM) must not cut short the saving of the last finished epoch."""
    _interrupted.set()
    if not isinstance(sys.exc_info()[1], KeyboardInterrupt):
        raise KeyboardInterrupt


def _read(inp, messages: queue.Queue) -> None:
    """The stdin reader: messages into the queue; end of file without a stop message means the parent is gone."""
    while True:
        try:
            msg = pickle.load(inp)
        except Exception:  # noqa: BLE001 (EOFError: the parent closed the pipe or died)
            messages.put(None)  # an idle worker stops at once
            if _busy.is_set():
                _parent_gone()
            return
        messages.put(msg)
        if msg is None:
            return


_gone = threading.Event()  # the parent is gone
_busy = threading.Event()  # a job is under way
_interrupted = threading.Event()  # told to stop by a signal


def _parent_gone() -> None:
    """Stop the job going as SIGTERM would (it keeps its last finished epoch), then exit, within GRACE_S at most."""
    if _gone.is_set():
        return
    _gone.set()
    _thread.interrupt_main(signal.SIGTERM)
    threading.Timer(GRACE_S, os._exit, (1,)).start()


def _watch_parent(parent: int) -> None:
    """Where the pipe's end of file is slow to come (a grandchild holding it open), a changed parent pid (Unix:
    an orphan is re-parented) tells that the parent is gone."""
    while not _gone.is_set():
        time.sleep(0.5)
        if os.name == "posix" and os.getppid() != parent:
            _parent_gone()


def _next(messages: queue.Queue):
    while True:  # a timeout, so that signals (and interrupt_main) reach this thread while it waits
        try:
            return messages.get(timeout=0.25)
        except queue.Empty:
            continue


def _portable(e: BaseException) -> BaseException:
    """`e` if it pickles both ways (a UserError does), else a RuntimeError saying what it was."""
    try:
        pickle.loads(pickle.dumps(e))
        return e
    except Exception:  # noqa: BLE001
        return RuntimeError(f"{type(e).__name__}: {e}")
