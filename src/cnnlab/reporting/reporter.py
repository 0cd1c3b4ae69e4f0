"""The one reporter: what a piece of work tells a person, handed to it instead of `log=`, `progress=` and `lang`.

A `Reporter` holds where log lines go (`line`), whether progress bars show (`bar`), the language of reports
(`lang`), and what happens when an epoch ends (`epoch`: the epoch line on a terminal, or a hook such as a study
worker's, which forwards the event to the command that started it). Work that prints nothing takes
`Reporter.quiet()`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

from cnnlab.reporting.progress import progress_bar
from cnnlab.reporting.strings import check_lang


def _nothing(*args, **kwargs) -> None:
    return None


def epoch_line(row: dict, improved: bool) -> str:
    """The line a finished epoch prints: its losses, macro-F1, accuracy and speed (and with box guidance the share
    of the true class's map inside the box); `*` when the monitored score improved."""
    box = f" box {row['train_box_inside']:.2f}" if "train_box_inside" in row else ""
    return (
        f"epoch {row['epoch']:3d}  train loss {row['train_loss']:.4f} f1 {row['train_f1']:.3f}{box}  "
        f"val loss {row['val_loss']:.4f} f1 {row['val_f1']:.3f} acc {row['val_acc']:.3f}  "
        f"{row['epoch_s']:.1f}s {row['images_per_s']:.0f} img/s{'  *' if improved else ''}"
    )


@dataclass(frozen=True)
class Reporter:
    """Where a command's words go.

    log: a function of one string (print, click.echo, a logger's info); progress: progress bars and per-epoch
    lines on or off; lang: the language of reports (`cnnlab.reporting.LANGS`); on_epoch: called with
    (history row, improved) after every epoch, whatever `progress` says (a study worker forwards it)."""

    log: Callable[[str], None] = print
    progress: bool = True
    lang: str = "en"
    on_epoch: Callable[[dict, bool], None] | None = None

    def __post_init__(self):
        check_lang(self.lang)

    @classmethod
    def quiet(cls, lang: str = "en") -> Reporter:
        """A reporter that prints nothing and shows no bar."""
        return cls(log=_nothing, progress=False, lang=lang)

    def with_(self, **changes) -> Reporter:
        """A copy with some fields changed, e.g. `reporter.with_(progress=False)`."""
        return replace(self, **changes)

    def line(self, text: str) -> None:
        """One log line."""
        self.log(text)

    def note(self, text: str) -> None:
        """A line shown only while progress is on (what a quiet run leaves out: the device, each epoch)."""
        if self.progress:
            self.log(text)

    def bar(self, total: int | None = None, desc: str = "", unit: str = "it", **kwargs):
        """A tqdm progress bar (a widget in Jupyter, text on a terminal, nothing in a log), or one that shows
        nothing when progress is off; use it as tqdm's (`update`, `set_postfix`, `close`)."""
        return progress_bar(total=total, desc=desc, unit=unit, enabled=self.progress, **kwargs)

    def epoch(self, row: dict, improved: bool) -> None:
        """An epoch has ended: its line while progress is on, and the `on_epoch` hook."""
        self.note(epoch_line(row, improved))
        if self.on_epoch is not None:
            self.on_epoch(row, improved)
