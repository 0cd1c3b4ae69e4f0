"""Training a run: `fit` starts one, `resume` continues one from its folder, `Trainer` is the run in memory.

A `Trainer` is built from a config and prepared data (`Trainer.build`), runs one epoch at a time
(`run_epoch`, or its halves `train_epoch` and `validate`), and saves and restores its whole state
(`state_dict`, `load_state_dict`); a `RunWriter` (training/run_folder.py) writes what each epoch leaves, in the
background.
Every epoch reseeds its own RNGs from (seed, epoch), so a run resumed from any epoch boundary continues exactly
as if it had never stopped.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from cnnlab.config import Config
from cnnlab.data.cache import ImageSet, cache_note
from cnnlab.data.labels import protected_paths
from cnnlab.errors import UserError
from cnnlab.files import LOCK, FolderLock, output_folder
from cnnlab.reporting.reporter import Reporter
from cnnlab.training import run_folder
from cnnlab.training.batching import batches, place
from cnnlab.training.checks import check_config
from cnnlab.training.distributed import SOLO, Ranks, join
from cnnlab.training.engine import Engine, make_engine
from cnnlab.training.guidance import BoxGuidance
from cnnlab.training.loops import EpochOrder, train_one_epoch, validate_epoch
from cnnlab.training.models import build
from cnnlab.training.optimization import Optimization, class_weights
from cnnlab.training.preparation import RunData, prepare_run_data
from cnnlab.training.run_folder import RunWriter, TensorBoard


def epoch_seed(seed: int, epoch: int) -> int:
    return (seed * 1_000_003 + epoch * 7919) % (2**63 - 1)


def epoch_steps(train: ImageSet, n_classes: int, cfg: Config) -> list[int]:
    """The optimizer steps of epochs 1 to cfg.train.epochs, from the orders those epochs draw: one count for
    fixed-size images, or a set used whole; with resize = keep and over- or undersampling, the size buckets, so
    the number of batches, follow the images each epoch draws."""

    def steps(epoch: int) -> int:
        order = EpochOrder.draw(train.labels, n_classes, cfg.data.imbalance, epoch_seed(cfg.train.seed, epoch))
        return len(batches(train, order.order, cfg.train.batch_size))

    if isinstance(train.images, list) and cfg.data.imbalance in ("oversample", "undersample"):
        return [steps(e) for e in range(1, cfg.train.epochs + 1)]
    return [steps(1)] * cfg.train.epochs


@dataclass
class Best:
    """Early stopping's bookkeeping: the best monitored value, its epoch, and epochs since it."""

    monitor: str
    value: float | None = None
    epoch: int = 0
    bad_epochs: int = 0

    def update(self, value: float, epoch: int) -> bool:
        if self.value is None or math.isnan(self.value):
            improved = not math.isnan(value)
        else:
            improved = value < self.value if self.monitor == "val_loss" else value > self.value
        if improved:
            self.value, self.epoch, self.bad_epochs = value, epoch, 0
        else:
            self.bad_epochs += 1
        return improved


@dataclass
class Trainer:
    """A run in memory: its config, classes, engine, optimization and decoded data, and where it stands (history, best
    epoch, last finished epoch, finished, diverged). Made by `Trainer.build`; `run_epoch` advances it one epoch."""

    cfg: Config
    classes: list[str]
    eng: Engine
    opt: Optimization
    train: ImageSet
    val: ImageSet
    mean: torch.Tensor
    std: torch.Tensor
    steps: list[int]  # optimizer steps of each epoch (epoch_steps)
    guide: BoxGuidance | None = None  # box-guided training's localisation term
    history: list[dict] = field(default_factory=list)
    best: Best = None
    epoch: int = 0  # the last finished epoch
    finished: bool = False
    diverged: bool = False

    @classmethod
    def build(cls, cfg: Config, p: RunData, ranks: Ranks = SOLO) -> Trainer:
        """The model (initialised from the config's seed), its engine, and its optimization, on `p`'s data; over
        several `ranks`, this rank's part of the data-parallel run."""
        n_classes = len(p.classes)
        torch.manual_seed(cfg.train.seed)
        model = build(cfg.model, cfg.data.channels, n_classes, cfg.data.image_size)
        eng = make_engine(cfg, model, p.mean, p.std, ranks)
        for images in (p.train, p.val):
            place(images, eng.device, cfg.train.channels_last)
        weight = class_weights(p.train.labels, n_classes) if cfg.data.imbalance == "weights" else None
        steps = epoch_steps(p.train, n_classes, cfg)
        opt = Optimization.build(eng.model, cfg, sum(steps), weight, eng.autocast_dtype == torch.float16)
        guide = BoxGuidance(eng.model, cfg.loss.box_weight, p.boxes) if p.boxes is not None else None
        return cls(
            cfg,
            list(p.classes),
            eng,
            opt,
            p.train,
            p.val,
            p.mean,
            p.std,
            steps,
            guide,
            best=Best(cfg.train.monitor),
        )

    # ------------------------------------------------------------------------------------ one epoch

    def train_epoch(self, epoch: int, progress=None) -> dict:
        """The training half of `epoch`, seeded from (seed, epoch): dropout through torch's global RNG (one stream a
        rank), the order and every image's augmentation through seeds of their own (the same on every rank)."""
        seed = epoch_seed(self.cfg.train.seed, epoch)
        torch.manual_seed(seed + self.eng.ranks.rank)
        return train_one_epoch(self.eng, self.train, self.opt, len(self.classes), self.cfg, seed, progress, self.guide)

    def validate(self) -> dict:
        eng = dataclasses.replace(self.eng, model=self.opt.eval_model)
        return validate_epoch(eng, self.val, self.opt.criterion, len(self.classes), self.cfg.train.eval_batch_size)

    def run_epoch(self, reporter: Reporter | None = None) -> tuple[dict, bool]:
        """Train and validate the next epoch (with `reporter`'s progress bar); -> (its history row, whether the
        monitored score improved)."""
        epoch, t = self.epoch + 1, self.cfg.train
        t0 = time.perf_counter()
        bar = (reporter or Reporter.quiet()).bar(
            total=self.steps[epoch - 1], desc=f"epoch {epoch}/{t.epochs}", unit="step"
        )
        tr = self.train_epoch(epoch, bar)
        bar.close()
        self.opt.sync_ema_buffers()
        ev = self.validate()
        recall = ev.pop("val_recall")
        lr = self.opt.lr
        self.opt.step_scheduler(ev[t.monitor])
        dt = time.perf_counter() - t0
        row = {
            "epoch": epoch,
            **{k: tr[k] for k in ("train_loss", "train_f1", "train_acc", run_folder.BOX_COLUMN) if k in tr},
            **ev,
            "lr": lr,
            "epoch_s": dt,
            "images_per_s": tr["seen"] / dt,
            "data_wait_s": tr["data_wait_s"],
            **{run_folder.recall_column(c): r for c, r in zip(self.classes, recall, strict=True)},
        }
        self.history.append(row)
        self.diverged = not math.isfinite(tr["train_loss"])
        improved = not self.diverged and self.best.update(ev[t.monitor], epoch)  # never a diverged best.pt
        self.epoch = epoch
        stop = (t.patience and self.best.bad_epochs >= t.patience) or epoch == t.epochs
        self.finished = bool(stop or self.diverged)
        return row, improved

    # ---------------------------------------------------------------------------------------- state

    def meta(self) -> dict:
        """What every checkpoint holds beside its weights: enough to score it with nothing else."""
        return {
            "format": run_folder.CHECKPOINT_FORMAT,
            "config": self.cfg.to_dict(),
            "classes": self.classes,
            "mean": self.mean,
            "std": self.std,
        }

    def summary(self) -> dict:
        return run_folder.summarize_history(self.history, self.best.epoch)

    def state_dict(self) -> dict:
        state = {
            **self.meta(),
            "model": self.eng.model.state_dict(),
            **self.opt.state_dict(),
            "epoch": self.epoch,
            "history": self.history,
            "best_value": self.best.value,
            "best_epoch": self.best.epoch,
            "bad_epochs": self.best.bad_epochs,
            "rng_cpu": torch.get_rng_state(),
            "finished": self.finished,
        }
        if self.finished:
            state["summary"] = self.summary()
        return state

    def load_state_dict(self, state: dict) -> None:
        self.eng.model.load_state_dict(state["model"])
        self.opt.load_state_dict(state)
        self.history = state["history"]
        self.best.value, self.best.epoch, self.best.bad_epochs = (
            state["best_value"],
            state["best_epoch"],
            state["bad_epochs"],
        )
        self.epoch = state["epoch"]
        torch.set_rng_state(state["rng_cpu"])


# ------------------------------------------------------------------------------------------ the run


def fit(cfg: Config, out: Path, reporter: Reporter | None = None, force: bool = False) -> dict:
    """Train a new run into `out`: check the config and the folder, prepare the data, write the run folder, train.

    `out` must be new or empty (or, with `force`, any folder that does not hold a run); while the run trains,
    no other process can write into it. Interrupted before its config is written, it leaves nothing behind.
    reporter: where the progress bars and epoch lines go (default: printed)."""
    reporter = reporter or Reporter()
    cfg = check_config(cfg).absolute()
    ranks = _join(cfg)
    if not ranks.main:
        return _follow(Path(out), ranks)
    with _Lead(ranks) as lead:
        return _fit(cfg, Path(out), reporter, force, lead)


def _fit(cfg: Config, out: Path, reporter: Reporter, force: bool, lead: _Lead) -> dict:
    protected = protected_paths(cfg.data.path)
    out = output_folder(out, protected, "run folder", create=False)
    created = not out.exists()
    output_folder(out, protected, "run folder")
    try:
        with FolderLock(out):
            if run_folder.is_run(out):
                raise UserError(f"{out} already holds a run: continue it with --resume {out}, or choose another --out")
            others = sorted(p.name for p in out.iterdir() if p.name != LOCK)
            if others and not force:
                raise UserError(
                    f"{out} is not empty ({', '.join(others[:3])}{' ...' if len(others) > 3 else ''}) "
                    "and holds no cnnlab run: choose a new --out, or pass --force to write into it"
                )
            return _start(cfg, out, reporter, lead)
    except BaseException:
        if created and not run_folder.is_run(out):  # nothing of the run was written: leave no empty folder
            (out / LOCK).unlink(missing_ok=True)
            with contextlib.suppress(OSError):
                out.rmdir()
        raise


def resume(out: Path, reporter: Reporter | None = None) -> dict:
    """Continue the run in `out` from its last.pt, on the images its split.csv lists (checked unchanged); a
    finished run's summary is returned as it is. A run interrupted before its first epoch starts again."""
    reporter = reporter or Reporter()
    out = Path(out)
    cfg = check_config(run_folder.read_config(out))
    ranks = _join(cfg)
    if not ranks.main:
        return _follow(out, ranks)
    with _Lead(ranks) as lead, FolderLock(out):
        last = out / run_folder.LAST
        state = (
            run_folder.load_checkpoint(
                last, hint=f"; best.pt or an epoch-NNN.pt of {out} can still be tested, but resuming needs last.pt"
            )
            if last.is_file()
            else None
        )
        if state is not None and state.get("finished"):
            reporter.line(f"run {out} is already finished ({state['epoch']} epochs)")
            return state["summary"]
        if not (out / run_folder.SPLIT).is_file():
            return _start(cfg, out, reporter, lead)
        trainer = _rebuild(cfg, out, state, ranks, reporter.progress)
        if state is not None:
            reporter.line(f"resuming {out} at epoch {trainer.epoch + 1}")
        return _train(trainer, out, reporter, lead)


def _rebuild(cfg: Config, out: Path, state: dict | None, ranks: Ranks, progress: bool) -> Trainer:
    """The Trainer of the run in `out` on the images its split.csv lists, at `state` (its last.pt) if any."""
    use_threads(cfg, ranks)
    classes = state and state["classes"]
    p = prepare_run_data(cfg, progress, out / run_folder.SPLIT, classes, copies=ranks.local_world)
    if p.boxes is not None:
        run_folder.check_boxes(p.boxes.record, out)
    trainer = Trainer.build(cfg, p, ranks)
    if state is not None:
        trainer.load_state_dict(state)
    return trainer


def _join(cfg: Config) -> Ranks:
    """This process's ranks when torchrun started several (SOLO otherwise); refuses what they cannot share."""
    ranks = join(cfg.train.device)
    if ranks.world > 1 and cfg.data.boxes:
        raise UserError("box-guided training runs in one process: drop data.boxes or train without --procs/torchrun")
    return ranks


class _Lead:
    """Rank 0's word to the other ranks of a data-parallel run: "go" once the run folder holds what they train
    from (config, split, last.pt), else, on leaving, "done" (nothing to train) or "stop" (it failed)."""

    def __init__(self, ranks: Ranks):
        self.ranks, self.said = ranks, False

    def go(self) -> None:
        if not self.said:
            self.said = True
            self.ranks.broadcast("go")

    def __enter__(self) -> _Lead:
        return self

    def __exit__(self, exc_type, *exc) -> None:
        if not self.said:
            self.said = True
            self.ranks.broadcast("stop" if exc_type else "done")


def _follow(out: Path, ranks: Ranks) -> dict:
    """A rank other than 0: wait for rank 0's word, then train its share of the run in `out` as rank 0 does,
    from the same folder, writing and printing nothing. A rank-0 failure ends it with code 2, quietly (rank 0
    printed why)."""
    word = ranks.broadcast(None)
    if word == "stop":
        raise SystemExit(2)
    if word == "done":
        return {}
    cfg = check_config(run_folder.read_config(out))
    last = out / run_folder.LAST
    state = run_folder.load_checkpoint(last) if last.is_file() else None
    return _train(_rebuild(cfg, out, state, ranks, False), out, Reporter.quiet())


def _start(cfg: Config, out: Path, reporter: Reporter, lead: _Lead | None = None) -> dict:
    use_threads(cfg, lead.ranks if lead else SOLO)
    p = prepare_run_data(cfg, progress=reporter.progress, copies=lead.ranks.local_world if lead else 1)
    trainer = Trainer.build(cfg, p, lead.ranks if lead else SOLO)
    cfg.save(out / run_folder.CONFIG)
    run_folder.write_split(p.dataset, out)
    run_folder.write_skipped(p.skipped, out)
    if p.boxes is not None:
        run_folder.write_boxes(p.boxes.record, out)
        r = p.boxes.record
        reporter.note(
            f"box guidance: {r['train_images_with_box']} of {r['train_images']} training images have a box "
            f"(weight {cfg.loss.box_weight:g}, {r['path']})"
        )
    return _train(trainer, out, reporter, lead)


def use_threads(cfg: Config, ranks: Ranks = SOLO) -> None:
    """The run's threads (`train.threads`, or the cores shared among this machine's ranks) for torch here."""
    torch.set_num_threads(cfg.train.threads or max(1, (os.cpu_count() or 1) // ranks.local_world))


def _train(trainer: Trainer, out: Path, reporter: Reporter, lead: _Lead | None = None) -> dict:
    """Epochs until the last, early stopping or divergence; after each, the run's files are written in the
    background (`RunWriter`, training/run_folder.py) while the next epoch trains: by rank 0 alone in a
    data-parallel run (whose other ranks are told to start with `lead`)."""
    t, main = trainer.cfg.train, trainer.eng.ranks.main
    if lead is not None:
        lead.go()
    writer = RunWriter(out, t.save_every) if main else None
    board = TensorBoard(out) if t.tensorboard and main else None
    reporter.note(cache_note(trainer.train, trainer.val))
    reporter.note(f"training on {trainer.eng.describe(t.precision)}")
    try:
        with _Sigterm():
            while not trainer.finished and trainer.epoch < t.epochs:
                row, improved = trainer.run_epoch(reporter)
                if writer is None:
                    continue
                writer.epoch_done(
                    trainer.epoch,
                    trainer.meta(),
                    trainer.opt.eval_model.state_dict(),
                    trainer.state_dict(),
                    trainer.best.value,
                    improved,
                    trainer.history,
                )
                if board is not None:
                    board.epoch(row)
                reporter.epoch(row, improved)
                if trainer.diverged:
                    reporter.line(f"training diverged at epoch {trainer.epoch} (loss {row['train_loss']}); stopping")
    finally:
        try:
            if writer is not None:
                writer.close()  # Ctrl-C included: the last finished epoch reaches the disk
        finally:
            if board is not None:
                board.close()
    if trainer.finished and trainer.epoch < t.epochs and not trainer.diverged:
        reporter.line(f"early stop at epoch {trainer.epoch}: no {t.monitor} improvement for {t.patience} epochs")
    return trainer.summary()


class _Sigterm:
    """SIGTERM behaves like Ctrl-C: the last finished epoch's checkpoint is kept, the run resumes."""

    def __enter__(self):
        self.old = None
        if getattr(signal.getsignal(signal.SIGTERM), "raises_interrupt", False):
            return self  # a command's handler (a study's, --jobs 1) already raises, and says it was SIGTERM
        try:
            self.old = signal.signal(signal.SIGTERM, self._raise)
        except ValueError:  # not the main thread (e.g. inside a study worker thread)
            pass
        return self

    @staticmethod
    def _raise(signum, frame):
        raise KeyboardInterrupt

    def __exit__(self, *exc):
        if self.old is not None:
            signal.signal(signal.SIGTERM, self.old)
