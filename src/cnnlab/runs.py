"""The run folder, the single record of a run: what it is, what it saw, how it went.

    config.toml   the resolved config: everything the run's result depends on
    split.csv     the train/validation manifest (path,class,split,group), read back on resume and later
    skipped.csv   files that could not be used, and why
    history.csv   one row an epoch (HISTORY_COLUMNS)
    curves.png    loss and macro-F1 per epoch, train and validation
    last.pt       the full training state after the last finished epoch (resume continues from it)
    best.pt       the evaluated weights of the best epoch (test and predict use them)
    epoch-NNN.pt  the evaluated weights every N epochs, with save_every = N

Every checkpoint holds the config, the class names and the normalisation statistics beside its weights, so a
checkpoint alone can be scored; nothing else is stored twice. Every file is replaced atomically.
"""

from __future__ import annotations

import csv
import os
from pathlib import Path

import torch

from cnnlab.config import Config
from cnnlab.data import Dataset, write_manifest
from cnnlab.errors import UserError

CONFIG, SPLIT, SKIPPED, HISTORY, CURVES = "config.toml", "split.csv", "skipped.csv", "history.csv", "curves.png"
LAST, BEST = "last.pt", "best.pt"
CHECKPOINT_FORMAT = 2  # 1: before the run-folder redesign (also stored `prep` and `model_name`; still loads)

HISTORY_COLUMNS = ["epoch", "train_loss", "train_f1", "train_acc", "val_loss", "val_f1", "val_acc", "lr",
                   "epoch_s", "images_per_s", "data_wait_s"]
TIMING_COLUMNS = {"epoch_s", "images_per_s", "data_wait_s"}
# A finished run's figures (summarize), in the order a study's summary.csv lists them.
SUMMARY_KEYS = ["best_val_f1", "best_val_acc", "best_epoch", "best_train_f1", "final_train_loss", "final_val_loss",
                "final_train_f1", "final_val_f1", "val_f1_tail_std", "epochs", "wall_s", "images_per_s"]


# ------------------------------------------------------------------------------------ config and split


def is_run(folder: Path) -> bool:
    return (Path(folder) / CONFIG).is_file()


def read_config(run: Path) -> Config:
    if not is_run(run):
        raise UserError(f"{run} is not a cnnlab run folder (no {CONFIG})")
    return Config.load(Path(run) / CONFIG)


def write_split(ds: Dataset, run: Path) -> None:
    tmp = Path(run) / f".{SPLIT}.tmp"
    write_manifest(ds, tmp, splits=("train", "val"))
    os.replace(tmp, Path(run) / SPLIT)


def write_skipped(skipped: list[tuple[str, str]], run: Path) -> None:
    _write_rows(Path(run) / SKIPPED, ["path", "reason"], skipped)


def _write_rows(path: Path, header: list[str], rows) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", newline="") as f:
        csv.writer(f).writerows([header, *rows])
    os.replace(tmp, path)


# --------------------------------------------------------------------------------------------- history


def write_history(history: list[dict], path: Path) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, HISTORY_COLUMNS, extrasaction="ignore")
        w.writeheader()
        for row in history:
            w.writerow({k: (repr(v) if isinstance(v, float) else v) for k, v in row.items()})
    os.replace(tmp, path)


def read_history(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return [{k: (int(v) if k == "epoch" else float(v)) for k, v in row.items()} for row in csv.DictReader(f)]


def summarize(history: list[dict], best_epoch: int) -> dict:
    """SUMMARY_KEYS of a run's history. wall_s is the epochs' own times: the same after a resume."""
    if not history:
        return {}
    best = next(r for r in history if r["epoch"] == best_epoch) if best_epoch else history[-1]
    last = history[-1]
    tail = [r["val_f1"] for r in history[-10:]]
    mean = sum(tail) / len(tail)
    return {
        "best_val_f1": best["val_f1"], "best_val_acc": best["val_acc"], "best_val_loss": best["val_loss"],
        "best_epoch": best["epoch"], "best_train_f1": best["train_f1"],
        "final_train_loss": last["train_loss"], "final_val_loss": last["val_loss"],
        "final_train_f1": last["train_f1"], "final_val_f1": last["val_f1"],
        "epochs": last["epoch"], "val_f1_tail_std": (sum((v - mean) ** 2 for v in tail) / len(tail)) ** 0.5,
        "wall_s": sum(r["epoch_s"] for r in history),
        "images_per_s": sum(r["images_per_s"] for r in history) / len(history),
    }


def draw_curves(history: list[dict], run: Path) -> None:
    from cnnlab.plots import curves

    curves(history, Path(run) / CURVES)


# ----------------------------------------------------------------------------------------- checkpoints


def atomic_save(obj, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def load_checkpoint(path: Path, hint: str = "") -> dict:
    """A checkpoint's contents, or one clear error: missing, damaged, foreign, or from a newer cnnlab."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path} not found{hint}")
    try:
        ckpt = torch.load(path, weights_only=True, map_location="cpu")
    except Exception as e:  # a truncated zip, a pickle that weights_only refuses, not a torch file at all
        why = str(e).strip().splitlines()[0][:120] if str(e).strip() else type(e).__name__
        raise UserError(f"{path} is damaged or not a cnnlab checkpoint ({why}){hint}") from None
    if not isinstance(ckpt, dict) or not {"model", "config", "classes", "mean", "std"} <= set(ckpt):
        raise UserError(f"{path} is not a cnnlab checkpoint (no model, config and classes in it){hint}")
    fmt = ckpt.get("format", 1)
    if fmt > CHECKPOINT_FORMAT:
        raise UserError(f"{path} was written by a newer cnnlab (checkpoint format {fmt}): upgrade cnnlab to read it")
    for legacy in ("prep", "model_name"):  # format 1 stored these twice; the config decides
        ckpt.pop(legacy, None)
    return ckpt


class CheckpointSaver:
    """Which checkpoints a run keeps after each epoch: best.pt (the evaluated weights) when the monitored score
    improved, epoch-NNN.pt every `save_every` epochs, and last.pt, the full state that a resume continues from."""

    def __init__(self, run: Path, save_every: int = 0):
        self.run, self.save_every = Path(run), save_every

    def save(self, epoch: int, meta: dict, weights: dict, state: dict, best_value: float | None,
             improved: bool) -> None:
        if improved:
            atomic_save({**meta, "model": weights, "epoch": epoch, "best_value": best_value}, self.run / BEST)
        if self.save_every and epoch % self.save_every == 0:
            atomic_save({**meta, "model": weights, "epoch": epoch}, self.run / f"epoch-{epoch:03d}.pt")
        atomic_save(state, self.run / LAST)
