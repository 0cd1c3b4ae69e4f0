"""Progress bars: tqdm's notebook widget in Jupyter, its text bar in a terminal, nothing in a log file or when
not asked for. Bars advance per batch but never print a line per batch."""

from __future__ import annotations

import sys


def in_notebook() -> bool:
    """True inside a Jupyter kernel (where a widget can be shown), False in a terminal or a script."""
    ipython = sys.modules.get("IPython")
    shell = ipython.get_ipython() if ipython is not None else None
    return shell is not None and "IPKernelApp" in shell.config


def progress_bar(
    iterable=None,
    *,
    total: int | None = None,
    desc: str = "",
    unit: str = "it",
    enabled: bool = True,
    leave: bool = False,
):
    """A tqdm bar: the widget in a notebook (what `tqdm.auto` would pick, without its warning), else the text bar,
    which stays silent when output goes to a file or a pipe. Disabled, it is a no-op with the same methods."""
    from tqdm import tqdm

    if enabled and in_notebook():
        from tqdm.notebook import IProgress
        from tqdm.notebook import tqdm as notebook_tqdm

        if IProgress is not None:  # ipywidgets is installed (cnnlab[notebook])
            return notebook_tqdm(iterable, total=total, desc=desc, unit=unit, leave=leave)
    # The text bar's `disable=None` hides it when the output is not a terminal.
    return tqdm(iterable, total=total, desc=desc, unit=unit, disable=None if enabled else True, leave=leave)
