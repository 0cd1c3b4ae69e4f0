"""What a study shows while its runs train: on a terminal or in Jupyter one tqdm bar for the whole study (epochs
done of all the runs', with tqdm's estimate of the time left) whose text names each running run's epoch and best
validation macro-F1; in a log (not a terminal), one line per finished epoch per run, naming the run.
"""

from __future__ import annotations

import sys
from collections.abc import Callable

from cnnlab.reporting.progress import in_notebook, progress_bar
from cnnlab.studies.jobs import Job


def interactive() -> bool:
    """True on a terminal (stderr is one) or in Jupyter: where a bar can be drawn."""
    try:
        return in_notebook() or sys.stderr.isatty()
    except (AttributeError, ValueError):  # no stderr, or a closed one
        return False


class StudyProgress:
    """The live view of one `map` of jobs: `epoch` after each epoch a job trains, `done` when a job's result is in.

    live: a bar (True) or log lines (False); default: a bar on a terminal or in Jupyter, lines elsewhere."""

    def __init__(self, jobs: list[Job], log: Callable[[str], None] = print, live: bool | None = None):
        self.log, self.live = log, interactive() if live is None else live
        self.names = {id(j): f"{j.run} seed {j.seed}" for j in jobs}
        self.epochs = {id(j): j.config.train.epochs for j in jobs}
        self.total, self.count = sum(self.epochs.values()), 0  # epochs of all the jobs; counted so far
        self.seen: dict[int, int] = {}  # epochs counted, a job
        self.best: dict[int, tuple[int, float]] = {}  # the running jobs' last epoch and best macro-F1
        self.bar = (
            progress_bar(total=self.total, desc="study", unit="epoch", leave=True, enabled=self.live)
            if self.live
            else None
        )

    def epoch(self, job: Job, event: dict) -> None:
        """An epoch of `job` has ended: event = {"epoch", "epochs", "val_f1"}."""
        key = id(job)
        best = max(event["val_f1"], self.best.get(key, (0, float("-inf")))[1])
        self.best[key] = (event["epoch"], best)
        if self.bar is None:
            self.log(
                f"  {self.names.get(key, job.run)}: epoch {event['epoch']}/{event['epochs']}, val macro-F1 "
                f"{event['val_f1']:.4f} (best {best:.4f})"
            )
            return
        self._count(key, 1)

    def done(self, job: Job) -> None:
        """`job` has its result: the bar counts its epochs left (early stopping, or a run finished before)."""
        key = id(job)
        self.best.pop(key, None)
        if self.bar is not None:
            self._count(key, max(0, self.epochs.get(key, 0) - self.seen.get(key, 0)))

    def _count(self, key: int, n: int) -> None:
        self.seen[key] = self.seen.get(key, 0) + n
        self.count += n
        self.bar.update(n)
        self.bar.set_postfix_str(self.status(), refresh=True)

    def status(self) -> str:
        """The bar's text: each running run's last epoch and best validation macro-F1."""
        return "; ".join(f"{self.names[k]} epoch {e} f1 {f:.3f}" for k, (e, f) in self.best.items())

    def write(self, text: str) -> None:
        """A log line that leaves the bar intact (above it, on a terminal)."""
        if self.bar is None:
            self.log(text)
        else:
            self.bar.write(text)

    def close(self) -> None:
        """Close the bar (the lines need nothing)."""
        if self.bar is not None:
            self.bar.close()
