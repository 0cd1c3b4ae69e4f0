"""The learning-rate range test (Smith 2017, fastai's `lr_find`): `lr_find` trains a throw-away copy of the run
for a few hundred steps with the learning rate growing exponentially, and suggests the rate where the smoothed
loss falls fastest.

It runs on the run's own pipeline: its data (the training split a run of this config would train on), input
preset and augmentation, mixup and box guidance, model, loss, optimizer and precision, through the training loop's
own step (`loops.train_step`).
The scheduler, warm-up and weight EMA are left out (they would fight the growing rate). Nothing of it survives:
the model and optimizer are built for the test and dropped, and torch's random state is restored, so a later run
of the same config trains exactly as if the test had never run. torch-lr-finder does the same around a
DataLoader and its own step; cnnlab's batches are tensors already on the device, augmented on the batch, with
bf16 autocast and class weights, so the loop is written here on cnnlab's engine (about thirty lines).
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import numpy as np
import torch

from cnnlab.config import Config
from cnnlab.data.labels import protected_paths
from cnnlab.errors import UserError
from cnnlab.files import output_folder, write_text
from cnnlab.reporting.figures import lr_find_figure, save
from cnnlab.reporting.reporter import Reporter
from cnnlab.training.batching import batches
from cnnlab.training.checks import check_config, make_config
from cnnlab.training.loops import EpochOrder, train_step
from cnnlab.training.preparation import prepare_run_data
from cnnlab.training.trainer import Trainer, epoch_seed, use_threads

SMOOTHING = 0.9  # the running loss (a debiased exponential moving average) that tells when it diverges
DIVERGED = 4.0  # stop once the running loss exceeds this multiple of its minimum
SKIP_START, SKIP_END = 5, 3  # points left out of the suggestion at each end (the first are noise, the last diverge)


def lr_schedule(start_lr: float, end_lr: float, steps: int) -> np.ndarray:
    """The learning rate of each step: exponentially from `start_lr` to `end_lr`."""
    return start_lr * (end_lr / start_lr) ** (np.arange(steps) / max(1, steps - 1))


def running(losses: list[float], beta: float = SMOOTHING) -> list[float]:
    """The debiased exponential moving average of the losses (it lags them: used only to stop)."""
    out, avg = [], 0.0
    for i, loss in enumerate(losses, start=1):
        avg = beta * avg + (1 - beta) * loss
        out.append(avg / (1 - beta**i))
    return out


def smooth(losses: list[float]) -> list[float]:
    """The losses smoothed without lag (a Gaussian over about 5% of the steps, centred): the curve drawn, and the
    one the suggestion reads. A running average, as fastai draws, lags the loss by 1/(1 - beta) steps (50 at its
    0.98, half the test) and moves the suggestion to a higher rate."""
    from scipy.ndimage import gaussian_filter1d

    a = np.asarray(losses, dtype=np.float64)
    finite = int(np.argmin(np.isfinite(a))) if not np.isfinite(a).all() else len(a)  # up to the first NaN or inf
    return [float(v) for v in gaussian_filter1d(a[:finite], sigma=max(1.0, finite / 40), mode="nearest")]


def suggest(lrs: list[float], smoothed: list[float]) -> tuple[float, int]:
    """The learning rate where the smoothed loss falls fastest against log(lr), before its minimum -> (lr, index).
    UserError when too few steps ran to tell."""
    lo = min(SKIP_START, max(0, len(smoothed) // 10))
    hi = int(np.argmin(smoothed)) + 1
    hi = min(hi, len(smoothed) - SKIP_END) if len(smoothed) - SKIP_END > lo + 2 else hi
    if hi - lo < 3:
        raise UserError(
            f"the loss diverged after {len(smoothed)} steps, before it fell: lower start_lr (now {lrs[0]:g})"
        )
    slope = np.gradient(np.asarray(smoothed[lo:hi]), np.log10(np.asarray(lrs[lo:hi])))
    i = lo + int(np.argmin(slope))
    return float(lrs[i]), i


def _finder_config(cfg: Config) -> Config:
    """The run's config for the test: no scheduler, warm-up, EMA or early stopping (the rate is the test's)."""
    cfg = cfg.copy()
    cfg.update({"scheduler": "none", "warmup_epochs": 0, "ema": 0.0})
    return check_config(cfg)


def range_test(trainer: Trainer, lrs: np.ndarray, progress=None) -> tuple[list[float], bool]:
    """Train `trainer` one step a learning rate of `lrs` (passes over the training split as needed, each in a
    seeded order); -> (the loss of each step, whether it stopped because the loss diverged)."""
    eng, opt, cfg, images = trainer.eng, trainer.opt, trainer.cfg, trainer.train
    eng.model.train()
    losses: list[float] = []
    best, n_classes, epoch = math.inf, len(trainer.classes), 0
    while True:
        epoch += 1
        order = EpochOrder.draw(images.labels, n_classes, cfg.data.imbalance, epoch_seed(cfg.train.seed, epoch))
        for step, pos in enumerate(batches(images, order.order, cfg.train.batch_size)):
            for group in opt.optimizer.param_groups:
                group["lr"] = float(lrs[len(losses)])
            loss = train_step(eng, images, opt, cfg, order, pos, step, trainer.guide)[0]
            losses.append(float(loss.detach()))
            if progress is not None:
                progress.update(1)
            now = running(losses)[-1]
            best = min(best, now)
            if not math.isfinite(now) or now > DIVERGED * best:
                return losses, True
            if len(losses) == len(lrs):
                return losses, False


def find_lr(
    cfg: Config, out: Path, start_lr: float = 1e-7, end_lr: float = 10.0, steps: int = 200, reporter=None
) -> dict:
    """The range test for `cfg` (checked), written to `out/lr_find.json` and `out/lr_find.png`; -> the JSON."""
    reporter = reporter or Reporter()
    if not 0 < start_lr < end_lr:
        raise UserError(f"lr-find needs 0 < start_lr < end_lr, got {start_lr:g} and {end_lr:g}")
    if steps < 20:
        raise UserError(f"lr-find needs at least 20 steps to suggest a rate, got {steps}")
    cfg = _finder_config(cfg).absolute()
    out = output_folder(out, protected_paths(cfg.data.path), "lr-find folder")
    use_threads(cfg)  # as the run would train
    with torch.random.fork_rng(devices=[]):  # nothing of a later run depends on the test
        p = prepare_run_data(cfg, progress=reporter.progress)
        trainer = Trainer.build(cfg, p)
        reporter.note(
            f"lr-find on {trainer.eng.describe(cfg.train.precision)}: {steps} steps, {start_lr:g} to {end_lr:g}"
        )
        lrs = lr_schedule(start_lr, end_lr, steps)
        t0 = time.perf_counter()
        bar = reporter.bar(total=steps, desc="lr-find", unit="step")
        losses, diverged = range_test(trainer, lrs, bar)
        bar.close()
    losses = [v for v in losses if math.isfinite(v)] if not math.isfinite(losses[-1]) else losses
    lrs = [float(v) for v in lrs[: len(losses)]]
    smoothed = smooth(losses)
    lr, i = suggest(lrs, smoothed)
    result = {
        "suggested_lr": lr,
        "suggested_step": i,
        "min_loss_lr": lrs[int(np.argmin(smoothed))],
        "steps": len(losses),
        "diverged": diverged,
        "start_lr": start_lr,
        "end_lr": end_lr,
        "seconds": time.perf_counter() - t0,
        "model": cfg.model.model,
        "optimizer": cfg.optim.optimizer,
        "batch_size": cfg.train.batch_size,
        "train_images": len(p.train.labels),
        "lrs": lrs,
        "losses": losses,
        "smoothed": smoothed,
    }
    write_text(out / "lr_find.json", json.dumps(result, indent=1) + "\n")
    save(lr_find_figure(lrs, smoothed, losses, lr, f"{cfg.model.model}, {cfg.optim.optimizer}"), out / "lr_find.png")
    reporter.line(f"suggested lr {lr:.3g} (steepest fall of the smoothed loss); {out / 'lr_find.png'}")
    return result


def lr_find(
    data=None,
    *,
    out,
    config=None,
    start_lr: float = 1e-7,
    end_lr: float = 10.0,
    steps: int = 200,
    progress: bool = True,
    log=print,
    **overrides,
) -> dict:
    """The learning-rate range test of a run of `config` (a TOML file or recipe; else `cnnlab train`'s defaults)
    with `overrides` (config fields) on `data`: `steps` steps from `start_lr` to `end_lr`, stopped when the loss
    diverges. Writes `out/lr_find.json` (with `suggested_lr`) and `out/lr_find.png`; returns the JSON as a dict.
    `cnnlab lr-find` is this function."""
    with torch.random.fork_rng(devices=[]):  # checking the config builds the model once: that draws too
        cfg = make_config(config, {"data.path": None if data is None else str(data), **overrides})
        return find_lr(cfg, Path(out), start_lr, end_lr, steps, Reporter(log=log, progress=progress))
