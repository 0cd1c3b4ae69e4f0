"""Pictures of the from-scratch optimizers: one optimizer's path as an animated GIF over the function's contours
(`animate`, `animate_all`), all paths on one plot (`plot_paths`), and the gap to the minimum per step
(`plot_gaps`). matplotlib is imported inside functions only and draws on the Agg canvas (no pyplot state)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np

from cnnlab.teach.functions import _attr, get_function
from cnnlab.teach.optimizers import ASSIGNMENT_OPTIMIZERS, Trajectory, _name, best_lr, gap, trajectory

# ----------------------------------------------------------------------------------------------
# Pictures (matplotlib imported here only; Figure + Agg canvas, no pyplot global state)
# ----------------------------------------------------------------------------------------------

COLORS = {
    "sgd": "tab:blue",
    "momentum": "tab:orange",
    "nesterov": "tab:brown",
    "adagrad": "tab:green",
    "rmsprop": "tab:purple",
    "adam": "tab:red",
}


def _figure(figsize):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize)
    FigureCanvasAgg(fig)
    return fig


def _view(fn, trajectories: Iterable[Trajectory]):
    """The function's box, widened to show the runs, but not so far that the minimum becomes a dot."""
    x0, x1, y0, y1 = _attr(fn, "box", (-5, 5, -5, 5))
    pts = [tr.points for tr in trajectories]
    if pts:
        allp = np.concatenate(pts)
        # Points more than two box widths from its centre (a run flying off) are left outside.
        centre, width = np.array([x0 + x1, y0 + y1]) / 2, np.array([x1 - x0, y1 - y0])
        keep = allp[np.all(np.abs(allp - centre) < 2 * width, axis=1)]
        if len(keep):
            x0, x1 = min(x0, keep[:, 0].min()), max(x1, keep[:, 0].max())
            y0, y1 = min(y0, keep[:, 1].min()), max(y1, keep[:, 1].max())
    mx, my = 0.03 * (x1 - x0), 0.03 * (y1 - y0)
    return x0 - mx, x1 + mx, y0 - my, y1 + my


def _contours(ax, fn, view, n_grid=160, n_levels=18):
    """Contour lines at log-spaced heights above the lowest value on the grid; outside the domain,
    the grid is masked (grey), so nothing is computed from sqrt of a negative number."""
    x0, x1, y0, y1 = view
    X, Y = np.meshgrid(np.linspace(x0, x1, n_grid), np.linspace(y0, y1, n_grid))
    domain = _attr(fn, "domain")
    inside = np.ones_like(X, bool) if domain is None else np.asarray(domain(X, Y), bool)
    with np.errstate(all="ignore"):
        Z = np.where(inside, fn.value(np.where(inside, X, 1.0), Y), np.nan)
    Z = np.ma.masked_invalid(Z)
    base = Z.min()
    span = Z.max() - base
    levels = base + np.geomspace(max(span * 1e-5, 1e-6), span, n_levels)
    ax.contour(X, Y, Z, levels=levels, cmap="viridis", linewidths=0.7)
    if not inside.all():
        ax.contourf(X, Y, (~inside).astype(float), levels=[0.5, 1.5], colors="0.85")
    for m in _attr(fn, "minima", ()) or ():
        ax.plot(*m, marker="*", color="k", ms=10, ls="none", zorder=5)
    ax.set_xlim(x0, x1)
    ax.set_ylim(y0, y1)
    ax.set_xlabel("x")
    ax.set_ylabel("y")


def _param_text(params: dict) -> str:
    return " ".join(f"{k}={v:.3g}" for k, v in params.items() if k != "eps_inside")


def animate(tr: Trajectory, path, frames: int = 40, fps: int = 10, dpi: int = 70) -> Path:
    """A GIF of the trajectory growing over the contour lines (matplotlib's PillowWriter).

    At most `frames` frames, evenly spread over the steps; the last one shows the whole run.
    """
    from matplotlib.animation import PillowWriter

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fn = tr.function
    fig = _figure((4.6, 4.2))
    ax = fig.add_subplot()
    _contours(ax, fn, _view(fn, [tr]))
    color = COLORS.get(tr.optimizer, "tab:red")
    (line,) = ax.plot([], [], "-", color=color, lw=1.5, zorder=6)
    (dot,) = ax.plot([], [], "o", color=color, ms=5, zorder=7)
    title = f"{tr.optimizer} on {_name(fn)}  ({_param_text(tr.params)})"
    ax.set_title(title, fontsize=8)
    label = ax.text(0.02, 0.02, "", transform=ax.transAxes, fontsize=8, bbox={"fc": "white", "alpha": 0.8, "lw": 0})
    fig.tight_layout()
    last = tr.n_steps
    # Frames skip steps evenly (animation speed does not matter, file size and time do).
    shown = np.unique(np.linspace(0, last, min(frames, last + 1)).round().astype(int))
    writer = PillowWriter(fps=fps)
    with writer.saving(fig, str(path), dpi):
        for i in shown:
            line.set_data(tr.points[: i + 1, 0], tr.points[: i + 1, 1])
            dot.set_data(tr.points[i : i + 1, 0], tr.points[i : i + 1, 1])
            text = f"t={i}  f={tr.values[i]:.4g}"
            if i == last and tr.stopped:
                text += f"\n{tr.status} at step {last + 1}"
            label.set_text(text)
            writer.grab_frame()
        for _ in range(fps // 2):  # hold the last picture ~half a second before the loop restarts
            writer.grab_frame()
    return path


def plot_paths(trajectories: Sequence[Trajectory], path, dpi: int = 90) -> Path:
    """All trajectories on one function, overlaid on its contour lines (one PNG)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fn = trajectories[0].function
    fig = _figure((6, 5.2))
    ax = fig.add_subplot()
    _contours(ax, fn, _view(fn, trajectories))
    for tr in trajectories:
        note = f" ({tr.status} at step {tr.n_steps + 1})" if tr.stopped else ""
        ax.plot(
            tr.points[:, 0],
            tr.points[:, 1],
            ".-",
            ms=2.5,
            lw=1.2,
            color=COLORS.get(tr.optimizer),
            label=f"{tr.optimizer} {_param_text({'lr': tr.params['lr']})}{note}",
            zorder=6,
        )
    ax.plot(*tr.points[0], "ks", ms=5, zorder=7)
    ax.set_title(f"{_name(fn)} = {_attr(fn, 'formula', '')}", fontsize=9)
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    fig.savefig(path, dpi=dpi)
    return path


def plot_gaps(runs: Mapping[str, Sequence[Trajectory]], path, dpi: int = 90) -> Path:
    """|f(x_t) - f*| against t on a log scale, one panel per function (one PNG)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig = _figure((5 * len(runs), 4))
    for k, (name, trs) in enumerate(runs.items()):
        ax = fig.add_subplot(1, len(runs), k + 1)
        for tr in trs:
            # Clip at 1e-30 so reaching the minimum exactly does not vanish from a log axis.
            ax.semilogy(
                np.maximum(gap(tr), 1e-30),
                color=COLORS.get(tr.optimizer),
                lw=1.3,
                label=tr.optimizer + (f" ({tr.status})" if tr.stopped else ""),
            )
        ax.set_title(f"{name}: |f(x_t) - f*|", fontsize=9)
        ax.set_xlabel("iteration t")
        ax.grid(True, which="major", alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=dpi)
    return path


def animate_all(
    out,
    functions: Sequence = ("f1", "f2"),
    optimizers: Sequence[str] = ASSIGNMENT_OPTIMIZERS,
    n_iter: int = 100,
    lr_grid=None,
    tol: float = 1e-3,
    frames: int = 40,
    dpi: int = 70,
) -> list[Path]:
    """GIF per (function, optimizer), paths PNG per function, and one gaps PNG, written under `out`.

    With `lr_grid` (as in `compare`), each optimizer runs with its best lr from the grid.
    """
    out = Path(out)
    written, runs = [], {}
    for fn_name in functions:
        fn = get_function(fn_name)
        trs = []
        for name in optimizers:
            grid = lr_grid.get(name) if isinstance(lr_grid, Mapping) else lr_grid
            lr = {} if grid is None else {"lr": best_lr(name, fn, grid, n_iter, tol)["params"]["lr"]}
            tr = trajectory(name, fn, None, n_iter, **lr)
            trs.append(tr)
            written.append(animate(tr, out / f"{_name(fn)}-{name}.gif", frames=frames, dpi=dpi))
        written.append(plot_paths(trs, out / f"{_name(fn)}-paths.png"))
        runs[_name(fn)] = trs
    written.append(plot_gaps(runs, out / "gaps.png"))
    return written
