"""What turns a loss into better weights: optimizers and schedulers by name, the loss, mixed precision, weight EMA.

(The from-scratch numpy optimizers that `cnnlab optim` animates are in the teach package; these are
torch.optim's.)
`Optimization` bundles one run's optimizer, scheduler, loss, gradient scaler and EMA, so a training step is
one call (`step`) and the whole of it saves and restores as one state.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from cnnlab.config import Config

OPTIMIZERS = {
    "sgd": lambda p, o: torch.optim.SGD(
        p, lr=o.lr, momentum=o.momentum, nesterov=o.nesterov, weight_decay=o.weight_decay
    ),
    "adam": lambda p, o: torch.optim.Adam(p, lr=o.lr, betas=(o.beta1, o.beta2), eps=o.eps, weight_decay=o.weight_decay),
    "adamw": lambda p, o: torch.optim.AdamW(
        p, lr=o.lr, betas=(o.beta1, o.beta2), eps=o.eps, weight_decay=o.weight_decay
    ),
    "rmsprop": lambda p, o: torch.optim.RMSprop(
        p, lr=o.lr, alpha=o.alpha, eps=o.eps, momentum=0.0, weight_decay=o.weight_decay
    ),
    "adagrad": lambda p, o: torch.optim.Adagrad(p, lr=o.lr, eps=1e-10, weight_decay=o.weight_decay),
}
SCHEDULERS = ("none", "plateau", "step", "cosine", "onecycle")
NO_WARMUP = ("plateau", "onecycle")  # schedulers that do not combine with warmup_epochs
MONITORS = ("val_f1", "val_loss", "val_acc")  # what early stopping, best.pt and the plateau scheduler follow


def make_scheduler(opt: torch.optim.Optimizer, cfg: Config, total_steps: int):
    """-> (scheduler, when) with when in {'epoch', 'step', 'metric'}; `total_steps`, the optimizer steps of the
    whole run, sets OneCycle's length."""
    s, epochs = cfg.schedule, cfg.train.epochs
    lrs = torch.optim.lr_scheduler
    if s.scheduler == "plateau":
        mode = "min" if cfg.train.monitor == "val_loss" else "max"
        return lrs.ReduceLROnPlateau(
            opt, mode=mode, factor=s.plateau_factor, patience=s.plateau_patience, min_lr=s.min_lr
        ), "metric"
    if s.scheduler == "onecycle":
        return lrs.OneCycleLR(opt, max_lr=cfg.optim.lr, total_steps=total_steps), "step"
    main = {
        "none": lambda: lrs.LambdaLR(opt, lambda e: 1.0),
        "step": lambda: lrs.StepLR(opt, s.step_size, s.step_gamma),
        "cosine": lambda: lrs.CosineAnnealingLR(opt, max(1, epochs - s.warmup_epochs), s.min_lr),
    }[s.scheduler]()
    if s.warmup_epochs:
        warm = lrs.LinearLR(opt, start_factor=0.1, total_iters=s.warmup_epochs)
        return lrs.SequentialLR(opt, [warm, main], milestones=[s.warmup_epochs]), "epoch"
    return main, "epoch"


class Criterion(nn.Module):
    """Cross-entropy with optional class weights (total / count, as the assignment) and label smoothing."""

    def __init__(self, weight: torch.Tensor | None, label_smoothing: float):
        super().__init__()
        self.register_buffer("weight", weight if weight is not None else None)
        self.label_smoothing = label_smoothing

    def forward(self, logits, target):
        w = self.weight.to(logits.device) if self.weight is not None else None
        return F.cross_entropy(logits, target, weight=w, label_smoothing=self.label_smoothing)

    def denominator(self, target: torch.Tensor) -> torch.Tensor:
        """What the mean loss of `target`'s images divides by: their summed class weights, or their count."""
        if self.weight is None:
            return torch.tensor(float(len(target)), device=target.device)
        return self.weight.to(target.device).index_select(0, target).sum()


def class_weights(labels: torch.Tensor, n_classes: int) -> torch.Tensor:
    """Loss weights for imbalance = weights: each class's weight is N / its count (an empty class counts 1)."""
    counts = torch.bincount(labels, minlength=n_classes).to(torch.float32)
    return counts.sum() / counts.clamp_min(1)


def ema_decay(decay: float, n_averaged: int) -> float:
    """The decay after `n_averaged` updates, warmed up as (1 + n) / (10 + n): without it a decay of 0.999 keeps
    e^-1 of the random initial weights after 1000 steps, more than a short run takes."""
    return min(decay, (1 + n_averaged) / (10 + n_averaged))


def ema_avg_fn(decay: float):
    def update(averaged: list, current: list, n_averaged) -> None:
        d = ema_decay(decay, int(n_averaged))
        torch._foreach_lerp_(averaged, current, 1 - d)

    return update


@dataclass
class Optimization:
    """One run's optimizer, scheduler (stepped per batch, per epoch or on the monitored metric), loss, fp16
    gradient scaler and weight EMA."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: object
    when: str  # epoch | step | metric
    criterion: Criterion
    scaler: torch.amp.GradScaler | None = None
    ema: torch.optim.swa_utils.AveragedModel | None = None

    @classmethod
    def build(
        cls, model: nn.Module, cfg: Config, total_steps: int, weight: torch.Tensor | None, fp16: bool
    ) -> Optimization:
        opt = OPTIMIZERS[cfg.optim.optimizer](model.parameters(), cfg.optim)
        sched, when = make_scheduler(opt, cfg, total_steps)
        ema = (
            torch.optim.swa_utils.AveragedModel(model, multi_avg_fn=ema_avg_fn(cfg.train.ema))
            if cfg.train.ema
            else None
        )
        return cls(
            model,
            opt,
            sched,
            when,
            Criterion(weight, cfg.loss.label_smoothing),
            torch.amp.GradScaler("cuda") if fp16 else None,
            ema,
        )

    @property
    def lr(self) -> float:
        return self.optimizer.param_groups[0]["lr"]

    @property
    def eval_model(self) -> nn.Module:
        """The weights to evaluate and keep: the EMA's when there is one."""
        return self.ema.module if self.ema is not None else self.model

    def step(self, loss: torch.Tensor) -> None:
        """Backward, optimizer step, a per-batch scheduler step, then the EMA follows the new weights."""
        self.optimizer.zero_grad(set_to_none=True)
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            loss.backward()
            self.optimizer.step()
        if self.when == "step":
            self.scheduler.step()
        if self.ema is not None:  # the average follows every optimizer step, so a decay like 0.999 means ~1000 steps
            self.ema.update_parameters(self.model)

    def sync_ema_buffers(self) -> None:
        if self.ema is not None:
            # BatchNorm running statistics are buffers: the EMA copy takes the live model's.
            for b_ema, b in zip(self.ema.module.buffers(), self.model.buffers(), strict=True):
                b_ema.copy_(b)

    def step_scheduler(self, metric: float) -> None:
        if self.when == "epoch":
            self.scheduler.step()
        elif self.when == "metric":
            self.scheduler.step(metric)

    def state_dict(self) -> dict:
        return {
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "ema": self.ema.state_dict() if self.ema is not None else None,
            "scaler": self.scaler.state_dict() if self.scaler is not None else None,
        }

    def load_state_dict(self, state: dict) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if self.ema is not None:
            self.ema.load_state_dict(state["ema"])
        if self.scaler is not None and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
