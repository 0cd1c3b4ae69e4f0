"""Figures: learning curves, study overlays, confusion matrices, contact sheets, the audit's distance histogram
and duplicate galleries. Figures are plain matplotlib `Figure` objects, never pyplot's: no global backend is set
(a notebook keeps its inline one) and a background thread can draw safely. Nothing here reads images, and of
cnnlab only `files` (to write atomically) is imported."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from matplotlib import colormaps
from matplotlib.figure import Figure

from cnnlab.files import atomic_write


def _subplots(*grid, figsize, **kw):
    fig = Figure(figsize=figsize)
    return fig, fig.subplots(*grid, **kw)


def save(fig, path: Path, dpi: int = 100) -> None:
    """Write `fig` to `path`."""
    path = Path(path)
    with atomic_write(path) as tmp:  # a viewer never sees a half-written image
        fig.savefig(tmp, dpi=dpi, bbox_inches="tight", format=path.suffix.lstrip(".") or "png")


def curves(history: list[dict], path: Path, title: str = "") -> None:
    """Draw one run's loss and macro-F1 against epoch, train and validation, and write it to `path`."""
    overlay({title or "run": history}, path, title=title)


def overlay(runs: dict[str, list[dict]], path: Path, title: str = "") -> None:
    """Draw several runs' curves (`runs`: name -> history rows) on one figure and write it to `path`: one colour
    per run; train solid, validation faded (as the assignment draws them)."""
    save(overlay_figure(runs, title), path)


def overlay_figure(runs: dict[str, list[dict]], title: str = "") -> Figure:
    """The figure `overlay` writes (a notebook shows it inline)."""
    fig, axes = _subplots(1, 2, figsize=(12, 4.5))
    colors = colormaps["tab10" if len(runs) <= 10 else "tab20"]
    for i, (name, hist) in enumerate(runs.items()):
        ep = [r["epoch"] for r in hist]
        c = colors(i % colors.N)
        for ax, key in zip(axes, ("loss", "f1"), strict=True):
            ax.plot(ep, [r[f"train_{key}"] for r in hist], color=c, lw=1.8, label=f"{name} train")
            ax.plot(ep, [r[f"val_{key}"] for r in hist], color=c, lw=1.8, alpha=0.4, ls="--", label=f"{name} val")
    for ax, ylabel in zip(axes, ("loss", "macro-F1"), strict=True):
        ax.set_xlabel("epoch")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
    axes[1].legend(fontsize=7, ncol=2 if len(runs) > 3 else 1, loc="lower right")
    if title:
        fig.suptitle(title)
    return fig


def confusion_matrix(cm, classes: list[str], path: Path, title: str = "") -> None:
    """Draw a confusion matrix of counts (rows true, columns predicted, each cell labelled) and write it to `path`."""
    cm = np.asarray(cm)
    n = len(classes)
    fig, ax = _subplots(figsize=(1.2 * n + 2.5, 1.1 * n + 2))
    ax.imshow(cm, cmap="Blues")
    ax.set_xticks(range(n), [c[:18] for c in classes], rotation=45, ha="right")
    ax.set_yticks(range(n), [c[:18] for c in classes])
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    hi = cm.max() if cm.size else 0
    for i in range(n):
        for j in range(n):
            ax.text(
                j,
                i,
                str(cm[i, j]),
                ha="center",
                va="center",
                color="white" if cm[i, j] > hi / 2 else "black",
                fontsize=9,
            )
    if title:
        ax.set_title(title)
    save(fig, path)


def contact_sheet(rows: dict[str, list[np.ndarray]], path: Path, title: str = "", thumb: int = 96) -> None:
    """One row per class: label on the left, sample images (H x W x C uint8, any size) beside it."""
    cols = max((len(v) for v in rows.values()), default=1)
    fig, axes = _subplots(len(rows), cols, figsize=(cols * thumb / 60, len(rows) * thumb / 60 + 0.4), squeeze=False)
    for r, (name, images) in enumerate(rows.items()):
        for c in range(cols):
            ax = axes[r][c]
            ax.set_xticks([])
            ax.set_yticks([])
            for side in ax.spines.values():
                side.set_visible(False)
            if c < len(images):
                im = images[c]
                ax.imshow(im.squeeze(), cmap="gray" if im.ndim == 2 or im.shape[-1] == 1 else None, vmin=0, vmax=255)
            if c == 0:
                ax.set_ylabel(name[:22], rotation=0, ha="right", va="center", fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    save(fig, path)


def distance_histogram(report: dict, path: Path) -> None:
    """The audit's nearest-train distances, per split, with the threshold: the gap should be visible."""
    h = report["distance_histogram"]
    edges = np.array(h["edges"])
    parts = [k for k in ("test", "train") if k in h]
    fig, axes = _subplots(1, len(parts), figsize=(4.6 * len(parts), 3.0), squeeze=False)
    width = edges[1] - edges[0]
    for ax, split in zip(axes[0], parts, strict=True):
        counts = h[split]["counts"] + [h[split]["above_cap"]]
        x = np.append(edges[:-1], edges[-1] + width / 2)
        ax.bar(x, counts, width=width * 0.9, align="edge", color=["C0"] * (len(counts) - 1) + ["0.6"])
        ax.axvline(
            report["threshold_gray"], color="C3", ls="--", lw=1.2, label=f"threshold {report['threshold_gray']:g}"
        )
        ax.set_yscale("symlog", linthresh=1)
        ax.set_xlabel("distance to nearest train image (gray levels, 64 px)")
        ax.set_ylabel("images")
        ax.set_title(f"{split} images (grey bar: > {edges[-1]:g})", fontsize=9)
        ax.legend(fontsize=8)
    save(fig, path, dpi=80)


def group_gallery(rows: list[tuple[str, list[tuple[np.ndarray, str]]]], path: Path, title: str) -> None:
    """One row per group: (row label, [(gray uint8 image, caption), ...]), the images side by side."""
    cols = max(len(cells) for _, cells in rows)
    fig, axes = _subplots(len(rows), cols, figsize=(cols * 1.5, len(rows) * 1.75 + 0.4), squeeze=False)
    for r, (label, cells) in enumerate(rows):
        for c in range(cols):
            ax = axes[r][c]
            ax.set_xticks([])
            ax.set_yticks([])
            if c >= len(cells):
                ax.axis("off")
                continue
            im, caption = cells[c]
            ax.imshow(im, cmap="gray", vmin=0, vmax=255)
            ax.set_title(caption, fontsize=6)
            if c == 0:
                ax.set_ylabel(label, fontsize=7)
    fig.suptitle(title, fontsize=10)
    save(fig, path, dpi=80)


def confusion_panels(cm, classes: list[str], path: Path, title: str = "") -> None:
    """Two panels: the counts, and each row normalised to 100% (recall on the diagonal)."""
    cm = np.asarray(cm)
    n = len(classes)
    rows = cm.sum(1, keepdims=True)
    share = np.divide(cm, rows, out=np.zeros(cm.shape, dtype=float), where=rows > 0)
    fig, axes = _subplots(1, 2, figsize=(2 * (1.2 * n + 2.5), 1.1 * n + 2), gridspec_kw={"wspace": 0.6})
    for ax, values, text, name in (
        (axes[0], cm, lambda v: str(v), "counts"),
        (axes[1], share, lambda v: f"{100 * v:.0f}%", "share of each true class"),
    ):
        ax.imshow(values, cmap="Blues", vmin=0)
        ax.set_xticks(range(n), [c[:18] for c in classes], rotation=45, ha="right")
        ax.set_yticks(range(n), [c[:18] for c in classes])
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
        ax.set_title(name, fontsize=9)
        hi = values.max() if values.size else 0
        for i in range(n):
            for j in range(n):
                ax.text(
                    j,
                    i,
                    text(values[i, j]),
                    ha="center",
                    va="center",
                    fontsize=9,
                    color="white" if values[i, j] > hi / 2 else "black",
                )
    if title:
        fig.suptitle(title)
    save(fig, path)


def heatmap_grid(
    cells: list[dict], path: Path, title: str = "", cols: int = 6, side: float = 2.2, alpha: float = 0.45
) -> None:
    """Images with their heatmaps blended in (jet), a caption each. A cell: image (H x W x C uint8, C 1 or 3),
    heatmap (H x W in [0, 1], or None: the image alone), caption, and optionally boxes ([(x0, y0, x1, y1)] in
    continuous pixels, pixel i covering [i, i + 1): drawn green) and point ((column, row): a white cross)."""
    from matplotlib.patches import Rectangle

    cols = max(1, min(cols, len(cells)))
    nrows = max(1, -(-len(cells) // cols))
    fig, axes = _subplots(nrows, cols, figsize=(cols * side, nrows * (side + 0.35) + 0.4), squeeze=False)
    for k, ax in enumerate(axes.ravel()):
        ax.axis("off")
        if k >= len(cells):
            continue
        cell = cells[k]
        im = cell["image"]
        ax.imshow(im.squeeze(), cmap="gray" if im.ndim == 2 or im.shape[-1] == 1 else None, vmin=0, vmax=255)
        if cell.get("heatmap") is not None:
            ax.imshow(cell["heatmap"], cmap="jet", alpha=alpha, vmin=0, vmax=1)
        for x0, y0, x1, y1 in cell.get("boxes") or []:
            ax.add_patch(Rectangle((x0 - 0.5, y0 - 0.5), x1 - x0, y1 - y0, fill=False, ec="lime", lw=1.5))
        if cell.get("point") is not None:
            ax.plot(cell["point"][0], cell["point"][1], "x", color="white", ms=8, mew=2)
        ax.set_title(cell.get("caption", ""), fontsize=7 if side < 3 else 10)
    if title:
        fig.suptitle(title, fontsize=10)
    save(fig, path, dpi=90)


def lr_find_figure(lrs: list[float], smoothed: list[float], losses: list[float], suggested: float, title: str = ""):
    """The learning-rate range test: the loss of each step (faint) and its smoothed curve against the learning rate
    (log scale), the suggestion marked."""
    fig, ax = _subplots(1, 1, figsize=(7, 4.2))
    ax.plot(lrs, losses, color="tab:blue", alpha=0.25, lw=1, label="loss of the step")
    ax.plot(lrs, smoothed, color="tab:blue", lw=2, label="smoothed")
    at = int(np.argmin(np.abs(np.log(np.asarray(lrs)) - np.log(suggested))))
    ax.plot([suggested], [smoothed[at]], "o", color="tab:red", ms=8, label=f"suggested {suggested:.2g}")
    ax.axvline(suggested, color="tab:red", lw=1, ls="--")
    top = max(smoothed[: max(1, at + 1)] + [smoothed[0]])
    ax.set_ylim(min(smoothed) * 0.95, top * 1.6 if math.isfinite(top) else None)
    ax.set_xscale("log")
    ax.set_xlabel("learning rate")
    ax.set_ylabel("training loss")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    if title:
        ax.set_title(title, fontsize=10)
    return fig


def tune_history_figure(trials: list[dict]):
    """A search's trials in order: each finished trial's best validation macro-F1 (a dot), each pruned trial's last
    one (a cross), and the best so far (a step line)."""
    fig, ax = _subplots(1, 1, figsize=(7, 4.2))
    done = [t for t in trials if t["state"] == "complete"]
    cut = [t for t in trials if t["state"] == "pruned" and t["curve"]]
    ax.plot([t["trial"] for t in done], [t["value"] for t in done], "o", color="tab:blue", label="finished")
    ax.plot([t["trial"] for t in cut], [max(t["curve"]) for t in cut], "x", color="tab:gray", label="pruned")
    best, xs, ys = -np.inf, [], []
    for t in done:
        best = max(best, t["value"])
        xs.append(t["trial"])
        ys.append(best)
    if xs:
        ax.step(xs, ys, where="post", color="tab:red", label="best so far")
    ax.set_xlabel("trial")
    ax.set_ylabel("best validation macro-F1")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    return fig


def tune_curves_figure(trials: list[dict]):
    """Every trial's validation macro-F1 per epoch: finished trials solid, pruned ones dashed."""
    fig, ax = _subplots(1, 1, figsize=(7, 4.2))
    colors = colormaps["viridis"]
    for t in trials:
        c = colors(t["trial"] / max(1, len(trials) - 1))
        ls = "--" if t["state"] == "pruned" else "-"
        ax.plot(range(1, len(t["curve"]) + 1), t["curve"], ls, color=c, lw=1.5, label=f"trial {t['trial']}")
    ax.set_xlabel("epoch")
    ax.set_ylabel("validation macro-F1")
    ax.grid(alpha=0.3)
    if len(trials) <= 12:
        ax.legend(fontsize=7, ncol=2, loc="lower right")
    return fig


def importance_figure(importances: dict[str, float]):
    """The searched fields' importances (Optuna's default evaluator), largest on top."""
    names = list(importances)[::-1]
    fig, ax = _subplots(1, 1, figsize=(6, 0.5 * len(names) + 1.2))
    ax.barh(names, [importances[n] for n in names], color="tab:blue")
    ax.set_xlabel("importance (Optuna)")
    ax.grid(alpha=0.3, axis="x")
    return fig
