"""The run folder, the single record of a run: what it is, what it saw, how it went.

    config.toml   the resolved config: everything the run's result depends on
    split.csv     the train/validation manifest (path,class,split,group), read back on resume and later
    skipped.csv   files that could not be used, and why
    boxes.json    box-guided runs (data.boxes): the boxes file's path, size and SHA-256, training images boxed
    history.csv   one row an epoch (HISTORY_COLUMNS, then each class's validation recall)
    curves.png    loss and macro-F1 per epoch, train and validation (drawn when the run ends, and every minute)
    last.pt       the full training state after the last finished epoch (resume continues from it)
    best.pt       the evaluated weights of the best epoch (test and predict use them)
    epoch-NNN.pt  the evaluated weights every N epochs, with save_every = N
    tb/           TensorBoard event files, with tensorboard = true

Every checkpoint holds the config, the class names and the normalisation statistics beside its weights, so a
checkpoint alone can be scored; nothing else is stored twice. Every file is replaced atomically.
"""

from __future__ import annotations

import csv
import json
import time
from pathlib import Path

import torch

from cnnlab.config import Config
from cnnlab.data.folders import Dataset, printable
from cnnlab.data.manifest import write_manifest
from cnnlab.errors import UserError
from cnnlab.files import atomic_write, torch_save, write_text

CONFIG, SPLIT, SKIPPED, HISTORY, CURVES = "config.toml", "split.csv", "skipped.csv", "history.csv", "curves.png"
LAST, BEST = "last.pt", "best.pt"
CHECKPOINT_FORMAT = 2  # 1: before the run-folder redesign (also stored `prep` and `model_name`; still loads)

HISTORY_COLUMNS = [
    "epoch",
    "train_loss",
    "train_f1",
    "train_acc",
    "val_loss",
    "val_f1",
    "val_acc",
    "lr",
    "epoch_s",
    "images_per_s",
    "data_wait_s",
]
TIMING_COLUMNS = {"epoch_s", "images_per_s", "data_wait_s"}
BOX_COLUMN = "train_box_inside"  # box-guided runs: the mean share of the true class's map inside the box
BOXES = "boxes.json"  # box-guided runs: the boxes file's path, size and SHA-256, and how many training images it boxed
RECALL_PREFIX = "val_recall_"  # then one column a class, after HISTORY_COLUMNS: its validation recall
# A finished run's figures (summarize_history), in the order a study's summary.csv lists them.
SUMMARY_KEYS = [
    "best_val_f1",
    "best_val_acc",
    "best_epoch",
    "best_train_f1",
    "final_train_loss",
    "final_val_loss",
    "final_train_f1",
    "final_val_f1",
    "val_f1_tail_std",
    "epochs",
    "wall_s",
    "images_per_s",
]


# ------------------------------------------------------------------------------------ config and split


def is_run(folder: Path) -> bool:
    """Whether `folder` is a cnnlab run folder: it holds a config.toml."""
    return (Path(folder) / CONFIG).is_file()


def read_config(run: Path) -> Config:
    """The resolved `Config` a run folder was trained with (its config.toml); a UserError for a folder that is
    not a run."""
    if not is_run(run):
        raise UserError(f"{run} is not a cnnlab run folder (no {CONFIG})")
    return Config.load(Path(run) / CONFIG)


def write_split(ds: Dataset, run: Path) -> None:
    with atomic_write(Path(run) / SPLIT) as tmp:
        write_manifest(ds, tmp, splits=("train", "val"), sizes=True)


def write_boxes(record: dict, run: Path) -> None:
    write_text(run / BOXES, json.dumps(record, indent=2) + "\n")


def check_boxes(record: dict, run: Path) -> None:
    """A resumed box-guided run trains on the boxes it started with: UserError if the file changed since."""
    path = run / BOXES
    if path.is_file():
        kept = json.loads(path.read_text(encoding="utf-8"))
        if kept.get("sha256") != record["sha256"]:
            raise UserError(
                f"the boxes file {record['path']} changed since {run} started (its SHA-256 differs from {BOXES}): "
                "restore it, or train a new run"
            )


def write_skipped(skipped: list[tuple[str, str]], run: Path) -> None:
    with atomic_write(Path(run) / SKIPPED) as tmp, open(tmp, "w", newline="", encoding="utf-8") as f:
        csv.writer(f).writerows([("path", "reason"), *((printable(p), why) for p, why in skipped)])


# --------------------------------------------------------------------------------------------- history


def recall_column(class_name: str) -> str:
    return RECALL_PREFIX + class_name


def write_history(history: list[dict], path: Path) -> None:
    first = history[0] if history else {}
    recall = [k for k in first if k.startswith(RECALL_PREFIX)]
    guided = [BOX_COLUMN] if BOX_COLUMN in first else []
    with atomic_write(path) as tmp, open(tmp, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, HISTORY_COLUMNS + guided + recall, extrasaction="ignore")
        w.writeheader()
        for row in history:
            w.writerow({k: (repr(v) if isinstance(v, float) else v) for k, v in row.items()})


def read_history(path: Path) -> list[dict]:
    """A history.csv as a list of rows, one an epoch: `epoch` an int, every other column a float."""
    with open(path, newline="", encoding="utf-8") as f:
        return [{k: (int(v) if k == "epoch" else float(v)) for k, v in row.items()} for row in csv.DictReader(f)]


def summarize_history(history: list[dict], best_epoch: int) -> dict:
    """SUMMARY_KEYS of a run's history. wall_s is the epochs' own times: the same after a resume."""
    if not history:
        return {}
    # best.pt may be an epoch ahead of history.csv (a run stopped between the two writes): then the last row
    best = next((r for r in history if r["epoch"] == best_epoch), history[-1])
    last = history[-1]
    tail = [r["val_f1"] for r in history[-10:]]
    mean = sum(tail) / len(tail)
    return {
        "best_val_f1": best["val_f1"],
        "best_val_acc": best["val_acc"],
        "best_val_loss": best["val_loss"],
        "best_epoch": best["epoch"],
        "best_train_f1": best["train_f1"],
        "final_train_loss": last["train_loss"],
        "final_val_loss": last["val_loss"],
        "final_train_f1": last["train_f1"],
        "final_val_f1": last["val_f1"],
        "epochs": last["epoch"],
        "val_f1_tail_std": (sum((v - mean) ** 2 for v in tail) / len(tail)) ** 0.5,
        "wall_s": sum(r["epoch_s"] for r in history),
        "images_per_s": sum(r["images_per_s"] for r in history) / len(history),
    }


def draw_curves(history: list[dict], run: Path) -> None:
    from cnnlab.reporting.figures import curves

    curves(history, Path(run) / CURVES)


# ----------------------------------------------------------------------------------------- checkpoints


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

    def save(
        self, epoch: int, meta: dict, weights: dict, state: dict, best_value: float | None, improved: bool
    ) -> None:
        if improved:
            torch_save({**meta, "model": weights, "epoch": epoch, "best_value": best_value}, self.run / BEST)
        if self.save_every and epoch % self.save_every == 0:
            torch_save({**meta, "model": weights, "epoch": epoch}, self.run / f"epoch-{epoch:03d}.pt")
        torch_save(state, self.run / LAST)


def snapshot(obj):
    """A copy of a (nested) state whose tensors no later training step can change: what a writer thread saves."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().clone()
    if isinstance(obj, dict):
        return {k: snapshot(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(snapshot(v) for v in obj)
    return obj


class RunWriter:
    """Writes a run's files after each epoch on one background thread, so the next epoch trains meanwhile.

    The main thread hands over a snapshot (`epoch_done`); the thread writes, in order, the checkpoints
    (`CheckpointSaver`), then history.csv, so a history row is on disk only once its last.pt is. At most one
    epoch is in flight, so memory stays bounded and a failed write (a full disk) stops the run at the next
    epoch. curves.png is drawn when the run ends (`close`), and during it at most every `curves_every`
    seconds, on the same thread."""

    def __init__(self, run: Path, save_every: int = 0, curves_every: float = 60.0):
        from concurrent.futures import ThreadPoolExecutor

        self.run, self.saver, self.curves_every = Path(run), CheckpointSaver(run, save_every), curves_every
        self.pool = ThreadPoolExecutor(1, thread_name_prefix="cnnlab-writer")
        self.pending, self.history, self.drawn = None, [], time.monotonic()

    def epoch_done(
        self,
        epoch: int,
        meta: dict,
        weights: dict,
        state: dict,
        best_value: float | None,
        improved: bool,
        history: list[dict],
    ) -> None:
        weights, state, self.history = snapshot(weights), snapshot(state), [dict(r) for r in history]
        self.wait()
        draw = time.monotonic() - self.drawn >= self.curves_every
        if draw:
            self.drawn = time.monotonic()
        self.pending = self.pool.submit(
            self._write, epoch, meta, weights, state, best_value, improved, self.history, draw
        )

    def _write(self, epoch, meta, weights, state, best_value, improved, history, draw) -> None:
        self.saver.save(epoch, meta, weights, state, best_value, improved)
        write_history(history, self.run / HISTORY)
        if draw:
            draw_curves(history, self.run)

    def wait(self) -> None:
        """Until the last epoch handed over is on disk; its write's error, if any, is raised here."""
        pending, self.pending = self.pending, None
        if pending is not None:
            pending.result()

    def close(self) -> None:
        """Finish every write, then draw the curves of the whole run."""
        try:
            self.wait()
            if self.history:
                draw_curves(self.history, self.run)
        finally:
            self.pool.shutdown(wait=True)


class TensorBoard:
    """Every epoch's figures as TensorBoard scalars in RUN/tb/ (torch.utils.tensorboard), so that
    `tensorboard --logdir STUDY` compares a study's runs side by side."""

    SCALARS = {
        "train_loss": "loss/train",
        "val_loss": "loss/val",
        "train_f1": "macro_f1/train",
        "val_f1": "macro_f1/val",
        "train_acc": "accuracy/train",
        "val_acc": "accuracy/val",
        "lr": "lr",
        "images_per_s": "speed/images_per_s",
    }

    def __init__(self, run: Path):
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(str(Path(run) / "tb"))

    def epoch(self, row: dict) -> None:
        step = row["epoch"]
        for key, tag in self.SCALARS.items():
            self.writer.add_scalar(tag, row[key], step)
        for key, value in row.items():
            if key.startswith(RECALL_PREFIX):
                self.writer.add_scalar(f"recall_val/{key.removeprefix(RECALL_PREFIX)}", value, step)

    def close(self) -> None:
        self.writer.close()
