"""The loops, as plain functions: one training epoch, an evaluation, and logits for any decoded images.

Metrics accumulate on tensors (a confusion matrix), so no batch waits for the host.
"""

from __future__ import annotations

import time

import torch

from cnnlab.config import Config
from cnnlab.data.cache import ImageSet
from cnnlab.training.augment import mixup_draw
from cnnlab.training.batching import batches, epoch_indices, gather
from cnnlab.training.engine import Engine
from cnnlab.training.guidance import BoxGuidance
from cnnlab.training.metrics import confusion, recalls, scores
from cnnlab.training.optimization import Optimization


def train_step(
    eng: Engine,
    images: ImageSet,
    opt: Optimization,
    cfg: Config,
    g: torch.Generator,
    idx: torch.Tensor,
    copies: torch.Tensor,
    guide: BoxGuidance | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None, float]:
    """One optimizer step on the training images `idx` (augmented with `g`'s draws; `copies`: each one's copy
    number under oversampling), with mixup and box guidance as the config says. -> (the batch's loss, its
    logits, its labels, box guidance's inside-share statistic or None, seconds spent preparing the input)."""
    t0 = time.perf_counter()
    if guide is None:
        x = eng.train_input(gather(images, idx), g, copies)
    else:
        masks, has_box = guide.masks.gather(idx, eng.device)
        x, masks = eng.train_input.with_masks(gather(images, idx), masks, g, copies)
    y = images.labels.index_select(0, idx).to(eng.device, non_blocking=True)
    wait = time.perf_counter() - t0
    lam, partner = mixup_draw(cfg.augment.mixup, len(idx), g)
    if partner is not None:
        x = lam * x + (1 - lam) * x.index_select(0, partner.to(x.device))
    with eng.autocast():
        out = eng.model(x)
        logits = out.float()
        loss = opt.criterion(logits, y)
        if partner is not None:
            loss = lam * loss + (1 - lam) * opt.criterion(logits, y.index_select(0, partner.to(y.device)))
    term, stat = guide.loss(y, masks, has_box) if guide is not None else (0.0, None)
    opt.step(loss + term)
    return loss, out, y, stat, wait


def train_one_epoch(
    eng: Engine,
    images: ImageSet,
    opt: Optimization,
    n_classes: int,
    cfg: Config,
    g: torch.Generator,
    progress=None,
    guide: BoxGuidance | None = None,
) -> dict:
    """One pass over the epoch's order (from `g`); returns loss, macro-F1, accuracy, images seen, data wait, and
    with box guidance (`guide`) the mean share of the true class's map inside the box (train_box_inside)."""
    eng.model.train()
    order, copies = epoch_indices(images.labels, n_classes, cfg.data.imbalance, g)
    loss_sum = torch.zeros((), dtype=torch.float64, device=eng.device)
    cm = torch.zeros(n_classes, n_classes, dtype=torch.long, device=eng.device)
    seen, wait = 0, 0.0
    inside = torch.zeros(2, device=eng.device)  # summed share inside the box, images counted
    for step, pos in enumerate(batches(images, order, cfg.train.batch_size)):
        idx = order[pos]
        loss, out, y, stat, waited = train_step(eng, images, opt, cfg, g, idx, copies[pos], guide)
        wait += waited
        if stat is not None:
            inside += stat
        loss_sum += loss.detach().to(torch.float64) * len(idx)
        cm += confusion(y, out.detach().argmax(1), n_classes)
        seen += len(idx)
        if progress is not None:
            progress.update(1)
            if step % 10 == 0:
                progress.set_postfix(loss=f"{float(loss.detach()):.3f}", refresh=False)
    s = scores(cm.cpu())
    out = {
        "train_loss": float(loss_sum) / max(seen, 1),
        "train_f1": s["f1"],
        "train_acc": s["acc"],
        "seen": seen,
        "data_wait_s": wait,
    }
    if guide is not None:
        out["train_box_inside"] = float(inside[0] / inside[1].clamp_min(1))
    return out


@torch.inference_mode()
def predict_logits(eng: Engine, images: ImageSet, batch_size: int) -> torch.Tensor:
    """Logits for every image, in the order of `images`."""
    eng.model.eval()
    n = len(images)
    out = torch.empty(n, 0)
    parts, where = [], []
    for idx in batches(images, torch.arange(n), batch_size):  # positions == indices here
        parts.append(eng.logits(eng.eval_input(gather(images, idx))).float().cpu())
        where.append(idx)
    if parts:
        out = torch.empty(n, parts[0].shape[1])
        out[torch.cat(where)] = torch.cat(parts)
    return out


def validate_epoch(eng: Engine, images: ImageSet, criterion, n_classes: int, batch_size: int) -> dict:
    """Score `images` (the validation set) with `criterion`: -> {val_loss, val_f1 (macro), val_acc, val_recall (one
    recall a class)}; val_loss is NaN for an empty set."""
    logits = predict_logits(eng, images, batch_size)
    loss = float(criterion(logits, images.labels)) if len(images) else float("nan")
    pred = logits.argmax(1) if len(images) else images.labels.new_zeros(0)
    cm = confusion(images.labels, pred, n_classes)
    s = scores(cm)
    return {"val_loss": loss, "val_f1": s["f1"], "val_acc": s["acc"], "val_recall": recalls(cm)}
