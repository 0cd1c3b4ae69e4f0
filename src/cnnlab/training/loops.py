"""The loops, as plain functions: one training epoch, an evaluation, and logits for any decoded images.

Metrics accumulate on tensors (a confusion matrix), so no batch waits for the host.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch

from cnnlab.config import Config
from cnnlab.data.cache import ImageSet
from cnnlab.training.augment import Draws, mixup_draw
from cnnlab.training.batching import batches, epoch_indices, gather, to_device
from cnnlab.training.engine import Engine
from cnnlab.training.guidance import BoxGuidance
from cnnlab.training.metrics import confusion, recalls, scores
from cnnlab.training.optimization import Optimization


@dataclass
class EpochOrder:
    """An epoch's order (the image at each position), which positions are oversampling copies, and the seed of the
    epoch's draws: each image's augmentation from (seed, its position), each batch's mixup from (seed, its number)."""

    order: torch.Tensor
    copies: torch.Tensor
    seed: int

    @classmethod
    def draw(cls, labels: torch.Tensor, n_classes: int, imbalance: str, seed: int) -> EpochOrder:
        """The order from a generator seeded by seed + 1: the same on every rank."""
        g = torch.Generator().manual_seed(seed + 1)
        return cls(*epoch_indices(labels, n_classes, imbalance, g), seed)

    def batch_generator(self, step: int) -> torch.Generator:
        """Batch `step`'s own generator (mixup's weight and partners), the same on every rank."""
        return torch.Generator().manual_seed(int(np.random.SeedSequence([self.seed, 1, step]).generate_state(1)[0]))


def _inputs(eng: Engine, images: ImageSet, epoch: EpochOrder, pos: torch.Tensor, guide: BoxGuidance | None):
    """The network's input for the images at positions `pos` of the epoch, each augmented with its own draws,
    and (with box guidance) their moved box masks and which have a box -> (x, masks, has_box)."""
    idx, draws = epoch.order[pos], Draws.per_image(epoch.seed, pos)
    if guide is None:
        return eng.train_input(gather(images, idx), draws, epoch.copies[pos]), None, None
    masks, has_box = guide.masks.gather(idx, eng.device)
    x, masks = eng.train_input.with_masks(gather(images, idx), masks, draws, epoch.copies[pos])
    return x, masks, has_box


def _mean_loss(criterion, logits: torch.Tensor, y: torch.Tensor, ranks, batch: int) -> torch.Tensor:
    """The criterion's mean over this rank's images, scaled so that DDP's average over ranks is the mean over
    the whole batch of `batch` images (class weights included: their sum over ranks); unscaled in one process."""
    loss = criterion(logits, y)
    if ranks.world == 1:
        return loss
    den = criterion.denominator(y)
    total = ranks.sum(den.detach().clone()) if criterion.weight is not None else float(batch)
    return loss * (den * ranks.world / total) if len(y) else logits.sum() * 0


def train_step(
    eng: Engine,
    images: ImageSet,
    opt: Optimization,
    cfg: Config,
    epoch: EpochOrder,
    pos: torch.Tensor,
    step: int,
    guide: BoxGuidance | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None, float]:
    """One optimizer step on the batch at positions `pos` of the epoch (batch number `step`), of which this rank
    takes its share, with mixup and box guidance as the config says. -> (this rank's part of the batch's mean loss,
    its logits, its labels, box guidance's inside-share statistic or None, seconds spent preparing the input)."""
    t0, ranks = time.perf_counter(), eng.ranks
    mine = pos[ranks.share(len(pos))]
    x, masks, has_box = _inputs(eng, images, epoch, mine, guide)
    y = to_device(images.labels.index_select(0, epoch.order[mine]), eng.device)
    wait = time.perf_counter() - t0
    lam, partner = mixup_draw(cfg.augment.mixup, len(pos), epoch.batch_generator(step))
    if partner is not None:  # partners are drawn over the whole batch: another rank's images are made here too
        partner = partner[ranks.share(len(pos))]
        if ranks.world == 1:
            partner = to_device(partner, x.device)
            x_mix, y_mix = x.index_select(0, partner), y.index_select(0, partner)
        else:
            x_mix = _inputs(eng, images, epoch, pos[partner], None)[0]
            y_mix = to_device(images.labels.index_select(0, epoch.order[pos[partner]]), eng.device)
        x = lam * x + (1 - lam) * x_mix
    with eng.autocast():
        out = eng.trained(x)
        logits = out.float()
        loss = _mean_loss(opt.criterion, logits, y, ranks, len(pos))
        if partner is not None:
            loss = lam * loss + (1 - lam) * _mean_loss(opt.criterion, logits, y_mix, ranks, len(pos))
    term, stat = guide.loss(y, masks, has_box) if guide is not None else (0.0, None)
    opt.step(loss + term)
    return loss / ranks.world, out, y, stat, wait


def train_one_epoch(
    eng: Engine,
    images: ImageSet,
    opt: Optimization,
    n_classes: int,
    cfg: Config,
    seed: int,
    progress=None,
    guide: BoxGuidance | None = None,
) -> dict:
    """One pass over the epoch's order (`EpochOrder.draw` from `seed`); returns loss, macro-F1, accuracy, images
    seen, data wait, and with box guidance (`guide`) the mean share of the true class's map inside the box
    (train_box_inside). Over several ranks each takes its share of every batch, and the figures are summed."""
    eng.model.train()
    epoch = EpochOrder.draw(images.labels, n_classes, cfg.data.imbalance, seed)
    loss_sum = torch.zeros((), dtype=torch.float64, device=eng.device)
    cm = torch.zeros(n_classes, n_classes, dtype=torch.long, device=eng.device)
    seen = torch.zeros((), dtype=torch.long, device=eng.device)
    wait = 0.0
    inside = torch.zeros(2, device=eng.device)  # summed share inside the box, images counted
    for step, pos in enumerate(batches(images, epoch.order, cfg.train.batch_size)):
        loss, out, y, stat, waited = train_step(eng, images, opt, cfg, epoch, pos, step, guide)
        wait += waited
        if stat is not None:
            inside += stat
        loss_sum += loss.detach().to(torch.float64) * len(pos)
        cm += confusion(y, out.detach().argmax(1), n_classes)
        seen += len(y)
        if progress is not None:
            progress.update(1)
            if step % 10 == 0:
                progress.set_postfix(loss=f"{float(loss.detach()) * eng.ranks.world:.3f}", refresh=False)
    for t in (loss_sum, cm, seen, inside):
        eng.ranks.sum(t)
    s = scores(cm.cpu())
    out = {
        "train_loss": float(loss_sum) / max(int(seen), 1),
        "train_f1": s["f1"],
        "train_acc": s["acc"],
        "seen": int(seen),
        "data_wait_s": wait,
    }
    if guide is not None:
        out["train_box_inside"] = float(inside[0] / inside[1].clamp_min(1))
    return out


@torch.inference_mode()
def predict_logits(eng: Engine, images: ImageSet, batch_size: int, n_classes: int = 0) -> torch.Tensor:
    """Logits for every image, in the order of `images`. Over several ranks each predicts its share, and every
    rank gets all the rows (`n_classes` gives the shape of a rank's empty share)."""
    eng.model.eval()
    n = len(images)
    rows = torch.arange(n)[eng.ranks.share(n)]
    out = torch.empty(len(rows), n_classes)
    parts, where = [], []
    for pos in batches(images, rows, batch_size):
        parts.append(eng.logits(eng.eval_input(gather(images, rows[pos]))).float().cpu())
        where.append(pos)
    if parts:
        out = torch.empty(len(rows), parts[0].shape[1])
        out[torch.cat(where)] = torch.cat(parts)
    return eng.ranks.gather(out, n)


def validate_epoch(eng: Engine, images: ImageSet, criterion, n_classes: int, batch_size: int) -> dict:
    """Score `images` (the validation set) with `criterion`: -> {val_loss, val_f1 (macro), val_acc, val_recall (one
    recall a class)}; val_loss is NaN for an empty set."""
    logits = predict_logits(eng, images, batch_size, n_classes)
    loss = float(criterion(logits, images.labels)) if len(images) else float("nan")
    pred = logits.argmax(1) if len(images) else images.labels.new_zeros(0)
    cm = confusion(images.labels, pred, n_classes)
    s = scores(cm)
    return {"val_loss": loss, "val_f1": s["f1"], "val_acc": s["acc"], "val_recall": recalls(cm)}
