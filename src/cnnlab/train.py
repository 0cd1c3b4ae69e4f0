"""Training: data prepared once as tensors, `train_one_epoch` and `evaluate` as plain functions, exact resume.

A run folder explains itself: config.toml, split.csv (the manifest), skipped.csv, history.csv (one row an
epoch), curves.png, last.pt and best.pt. Every epoch reseeds its own RNGs from (seed, epoch), so a run
resumed from any epoch boundary continues exactly as if it had never stopped.
"""

from __future__ import annotations

import csv
import dataclasses
import math
import os
import signal
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from cnnlab import data as data_mod
from cnnlab.augment import COPY_AUGMENT, Augmenter
from cnnlab.config import Config
from cnnlab.errors import UserError, nearest
from cnnlab.images import ImageSet, Prep, load_images
from cnnlab.metrics import confusion, scores
from cnnlab.models import FIXED_SIZE, build

HISTORY_COLUMNS = ["epoch", "train_loss", "train_f1", "train_acc", "val_loss", "val_f1", "val_acc", "lr",
                   "epoch_s", "images_per_s", "data_wait_s"]
TIMING_COLUMNS = {"epoch_s", "images_per_s", "data_wait_s"}


# ----------------------------------------------------------------------------------------- data


@dataclass
class Prepared:
    dataset: data_mod.Dataset
    prep: Prep
    train: ImageSet
    val: ImageSet
    skipped: list[tuple[str, str]]
    mean: torch.Tensor  # per channel, for normalisation, from the training images
    std: torch.Tensor


def prep_of(cfg: Config) -> Prep:
    d = cfg.data
    return Prep(d.image_size, d.resize, d.channels, d.crop)


def prepare(cfg: Config, progress: bool = False) -> Prepared:
    """Scan, split (in memory; the manifest is saved with the run) and decode through the cache."""
    d = cfg.data
    if not d.path:
        raise UserError("no dataset given: pass --data DIR (or set data.path)")
    ds = data_mod.scan(d.path, class_map=d.class_map, strict=d.strict)
    if "train" not in ds.splits:
        raise UserError(f"no training split in {ds.root}: expected a train/ or training/ folder")
    groups = None
    if d.dedupe:
        from cnnlab.audit import duplicate_groups

        groups = duplicate_groups(ds, split="train", cache_dir=d.cache_dir or None)
    if d.val_manifest:
        data_mod.split_by_manifest(ds, Path(d.val_manifest), groups)
    else:
        if d.split == "blocks":
            groups = data_mod.block_split_groups(ds, d.block_size, groups)
        data_mod.split_train_val(ds, d.val_fraction, d.split_seed, groups)
    if "val" not in ds.splits:
        raise UserError("no validation data: set val_fraction > 0 or provide a val/ folder")
    prep = prep_of(cfg)
    sets, skipped = {}, list(ds.skipped)
    for split in ("train", "val"):
        sets[split], bad, _ = load_images(ds.splits[split], ds.root, prep, d.cache_dir or None,
                                          progress=progress, strict=d.strict)
        skipped += bad
    if len(skipped) > len(ds.skipped):
        data_mod.report_skipped(skipped[len(ds.skipped):], strict=False)
    mean, std = channel_stats(sets["train"])
    return Prepared(ds, prep, sets["train"], sets["val"], skipped, mean, std)


def channel_stats(images: ImageSet) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and std of the training images in [0, 1], in chunks (no float copy of the set)."""
    items = images.images if isinstance(images.images, list) else images.images.split(256)
    total = sq = count = 0
    for x in items:
        x = x.to(torch.float64).div_(255)
        dims = (0, 2, 3) if x.dim() == 4 else (1, 2)
        total = total + x.sum(dims)
        sq = sq + x.square().sum(dims)
        count += x.numel() // x.shape[-3]
    mean = total / count
    std = (sq / count - mean.square()).clamp_min(0).sqrt()
    return mean.float(), std.float().clamp_min(1e-3)


def epoch_indices(labels: torch.Tensor, n_classes: int, imbalance: str,
                  g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """The sample indices of one epoch, shuffled, and a mask of which are oversampling copies."""
    if imbalance in ("oversample", "undersample"):
        counts = torch.bincount(labels, minlength=n_classes)
        target = int(counts.max() if imbalance == "oversample" else counts[counts > 0].min())
        idx, copy = [], []
        for c in range(n_classes):
            members = (labels == c).nonzero().flatten()
            if len(members) == 0:
                continue
            perm = members[torch.randperm(len(members), generator=g)]
            if imbalance == "undersample":
                idx.append(perm[:target])
                copy.append(torch.zeros(target, dtype=torch.bool))
            else:
                extra = members[torch.randint(len(members), (target - len(members),), generator=g)]
                idx += [members, extra]
                copy += [torch.zeros(len(members), dtype=torch.bool), torch.ones(len(extra), dtype=torch.bool)]
        idx_t, copy_t = torch.cat(idx), torch.cat(copy)
    else:
        idx_t, copy_t = torch.arange(len(labels)), torch.zeros(len(labels), dtype=torch.bool)
    order = torch.randperm(len(idx_t), generator=g)
    return idx_t[order], copy_t[order]


def batches(images: ImageSet, order: torch.Tensor, batch_size: int) -> list[torch.Tensor]:
    """Positions into `order`, one tensor a batch. Variable-size images are grouped by size (buckets)."""
    positions = torch.arange(len(order))
    if isinstance(images.images, torch.Tensor):
        groups = [positions]
    else:
        buckets: dict[tuple, list[int]] = {}
        for pos, i in enumerate(order.tolist()):
            buckets.setdefault(tuple(images.images[i].shape), []).append(pos)
        groups = [torch.tensor(members) for members in buckets.values()]
    out = []
    for members in groups:
        parts = list(members.split(batch_size))
        if len(parts) > 1 and len(parts[-1]) == 1:  # BatchNorm cannot train on a batch of one
            parts[-2:] = [torch.cat(parts[-2:])]
        out += parts
    return sorted(out, key=lambda b: int(b[0]))  # interleave buckets deterministically


def gather(images: ImageSet, idx: torch.Tensor) -> torch.Tensor:
    if isinstance(images.images, torch.Tensor):
        return images.images[idx.to(images.images.device)]  # indexing keeps channels_last strides
    return torch.stack([images.images[i] for i in idx.tolist()])


def place(images: ImageSet, eng: Engine) -> ImageSet:
    """Store a fixed-size set the way the model reads it: channels_last (batches then need no layout copy),
    and on the GPU when there is one (140 MB of uint8 for the whole MRI set at 128 px)."""
    if isinstance(images.images, torch.Tensor):
        x = images.images.to(eng.device)
        images.images = x.contiguous(memory_format=torch.channels_last) if eng.channels_last else x
    return images


# --------------------------------------------------------------------------------------- engine


@dataclass
class Engine:
    """Everything the loops need: model, device, precision, normalisation, augmentation."""

    model: nn.Module
    device: torch.device
    mean: torch.Tensor
    std: torch.Tensor
    augment: Augmenter
    copy_augment: Augmenter
    autocast_dtype: torch.dtype | None
    channels_last: bool
    tta: bool = False
    normalize: str = "dataset"  # dataset | image | equalize (config.DataConfig.normalize)

    def autocast(self):
        if self.autocast_dtype is None:
            return nullcontext()
        return torch.autocast(self.device.type, dtype=self.autocast_dtype)

    def __post_init__(self):
        # (x / 255 - mean) / std as one fused multiply-add on the uint8 values.
        self.scale = (1 / (255 * self.std)).view(1, -1, 1, 1)
        self.shift = (-self.mean / self.std).view(1, -1, 1, 1)

    def to_input(self, x_uint8: torch.Tensor, g: torch.Generator | None = None,
                 copies: torch.Tensor | None = None) -> torch.Tensor:
        x = x_uint8.to(self.device, non_blocking=True).float()  # keeps channels_last strides
        augment_copies = copies is not None and not self.augment.active and bool(copies.any())
        augmented = g is not None and (self.augment.active or augment_copies)
        if augmented:
            x = x.div_(255)
            if self.augment.active:
                x = self.augment.pixels(x, g)
            else:
                x = torch.where(copies.view(-1, 1, 1, 1).to(x.device), self.copy_augment.pixels(x, g), x)
        if self.normalize == "equalize":
            x = equalize(x if augmented else x.div_(255))
        else:
            x = torch.addcmul(self.shift, x, self.scale * 255 if augmented else self.scale)
        if self.normalize != "dataset":
            mean = x.mean(dim=(1, 2, 3), keepdim=True)
            x = (x - mean) / x.std(dim=(1, 2, 3), keepdim=True).clamp_min(1e-3)
        if g is not None:
            x = self.augment.noise(x, g)
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        with self.autocast():
            out = self.model(x).float()
            if self.tta:
                out = (out.softmax(1) + self.model(x.flip(-1)).float().softmax(1)).div(2).log()
        return out


def equalize(x: torch.Tensor, levels: int = 256) -> torch.Tensor:
    """Histogram equalisation of each image of a B x C x H x W batch in [0, 1], channels together.

    Each nonzero pixel becomes the fraction of the image's nonzero pixels at or below its level, so any
    monotone intensity mapping (brightness, contrast, gamma, a scanner's window) gives the same output.
    Zeros (padding, empty background) stay 0.
    """
    b = x.shape[0]
    q = (x.reshape(b, -1).clamp(0, 1) * (levels - 1)).round().long()
    hist = torch.zeros(b, levels, device=x.device).scatter_add_(1, q, torch.ones_like(q, dtype=torch.float32))
    hist[:, 0] = 0
    cdf = hist.cumsum(1) / hist.sum(1, keepdim=True).clamp_min(1)
    return cdf.gather(1, q).view_as(x).to(x.dtype)


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except RuntimeError as e:
        raise UserError(f"unknown device '{name}' (use auto, cpu, cuda or cuda:N)") from e
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UserError("device cuda requested but no CUDA GPU is available (use --device cpu)")
    return dev


def cpu_has_bf16() -> bool:
    """Native bfloat16 matrix units (AVX-512 BF16 or AMX), where oneDNN runs bf16 about 2x faster than fp32."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def pick_precision(name: str, device: torch.device) -> torch.dtype | None:
    """auto: bf16 autocast on a GPU, and on a CPU with native bf16 (docs/results/speed.md shows the
    validation score unchanged); fp32 elsewhere."""
    if name == "fp32" or (name == "auto" and device.type == "cpu" and not cpu_has_bf16()):
        return None
    if name in ("bf16", "auto"):
        if device.type == "cuda" and not torch.cuda.is_bf16_supported():
            return torch.float16
        return torch.bfloat16
    if name == "fp16":
        return torch.float16
    raise UserError(f"unknown precision '{name}' (choose from: auto, fp32, bf16, fp16)")


def make_engine(cfg: Config, model: nn.Module, mean, std) -> Engine:
    device = pick_device(cfg.train.device)
    if cfg.train.channels_last:
        model = model.to(memory_format=torch.channels_last)
    model.to(device)
    return Engine(model, device, mean.to(device), std.to(device), Augmenter(cfg.augment),
                  Augmenter(COPY_AUGMENT), pick_precision(cfg.train.precision, device), cfg.train.channels_last,
                  cfg.train.tta, cfg.data.normalize)


def mixup_draw(alpha: float, n: int, g: torch.Generator) -> tuple[float, torch.Tensor | None]:
    """Mixup's weight (from Beta(alpha, alpha), drawn through the epoch's generator) and partner indices."""
    if alpha <= 0 or n < 2:
        return 1.0, None
    seed = int(torch.randint(2**31 - 1, (1,), generator=g))
    return float(np.random.default_rng(seed).beta(alpha, alpha)), torch.randperm(n, generator=g)


def train_one_epoch(eng: Engine, images: ImageSet, opt, criterion, cfg: Config, g: torch.Generator,
                    scaler=None, step_scheduler=None, progress=None, ema=None) -> dict:
    eng.model.train()
    n_classes = int(criterion.n_classes)
    order, copies = epoch_indices(images.labels, n_classes, cfg.data.imbalance, g)
    loss_sum = torch.zeros((), dtype=torch.float64, device=eng.device)
    cm = torch.zeros(n_classes, n_classes, dtype=torch.long, device=eng.device)
    seen, wait = 0, 0.0
    for step, pos in enumerate(batches(images, order, cfg.train.batch_size)):
        t0 = time.perf_counter()
        idx = order[pos]
        x = eng.to_input(gather(images, idx), g, copies[pos])
        y = images.labels.index_select(0, idx).to(eng.device, non_blocking=True)
        wait += time.perf_counter() - t0
        lam, partner = mixup_draw(cfg.augment.mixup, len(idx), g)
        if partner is not None:
            x = lam * x + (1 - lam) * x.index_select(0, partner.to(x.device))
        with eng.autocast():
            out = eng.model(x)
            logits = out.float()
            loss = criterion(logits, y)
            if partner is not None:
                loss = lam * loss + (1 - lam) * criterion(logits, y.index_select(0, partner.to(y.device)))
        opt.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
        else:
            loss.backward()
            opt.step()
        if step_scheduler is not None:
            step_scheduler.step()
        if ema is not None:  # the average follows every optimizer step, so a decay like 0.999 means ~1000 steps
            ema.update_parameters(eng.model)
        loss_sum += loss.detach().to(torch.float64) * len(idx)
        cm += confusion(y, out.detach().argmax(1), n_classes)
        seen += len(idx)
        if progress is not None:
            progress.update(1)
            if step % 10 == 0:
                progress.set_postfix(loss=f"{float(loss.detach()):.3f}", refresh=False)
    s = scores(cm.cpu())
    return {"train_loss": float(loss_sum) / max(seen, 1), "train_f1": s["f1"], "train_acc": s["acc"],
            "seen": seen, "data_wait_s": wait}


@torch.inference_mode()
def predict_logits(eng: Engine, images: ImageSet, batch_size: int) -> torch.Tensor:
    """Logits for every image, in the order of `images`."""
    eng.model.eval()
    n = len(images)
    out = torch.empty(n, 0)
    parts, where = [], []
    for idx in batches(images, torch.arange(n), batch_size):  # positions == indices here
        parts.append(eng.logits(eng.to_input(gather(images, idx))).float().cpu())
        where.append(idx)
    if parts:
        out = torch.empty(n, parts[0].shape[1])
        out[torch.cat(where)] = torch.cat(parts)
    return out


def evaluate(eng: Engine, images: ImageSet, criterion, batch_size: int) -> dict:
    logits = predict_logits(eng, images, batch_size)
    loss = float(criterion(logits, images.labels)) if len(images) else float("nan")
    s = scores(confusion(images.labels, logits.argmax(1), int(criterion.n_classes)))
    return {"val_loss": loss, "val_f1": s["f1"], "val_acc": s["acc"]}


# ---------------------------------------------------------------------------------- optimisation

OPTIMIZERS = {
    "sgd": lambda p, o: torch.optim.SGD(p, lr=o.lr, momentum=o.momentum, nesterov=o.nesterov,
                                        weight_decay=o.weight_decay),
    "adam": lambda p, o: torch.optim.Adam(p, lr=o.lr, betas=(o.beta1, o.beta2), eps=o.eps,
                                          weight_decay=o.weight_decay),
    "adamw": lambda p, o: torch.optim.AdamW(p, lr=o.lr, betas=(o.beta1, o.beta2), eps=o.eps,
                                            weight_decay=o.weight_decay),
    "rmsprop": lambda p, o: torch.optim.RMSprop(p, lr=o.lr, alpha=o.alpha, eps=o.eps, momentum=0.0,
                                                weight_decay=o.weight_decay),
    "adagrad": lambda p, o: torch.optim.Adagrad(p, lr=o.lr, eps=1e-10, weight_decay=o.weight_decay),
}
SCHEDULERS = ("none", "plateau", "step", "cosine", "onecycle")


def make_optimizer(model: nn.Module, cfg: Config) -> torch.optim.Optimizer:
    o = cfg.optim
    if o.optimizer not in OPTIMIZERS:
        raise nearest(o.optimizer, OPTIMIZERS, "optimizer")
    if o.nesterov and (o.optimizer != "sgd" or o.momentum <= 0):
        raise UserError("nesterov needs optimizer sgd with momentum > 0")
    return OPTIMIZERS[o.optimizer](model.parameters(), o)


def make_scheduler(opt, cfg: Config, steps_per_epoch: int):
    """-> (scheduler, when) with when in {'epoch', 'step', 'metric', None}."""
    s, epochs = cfg.schedule, cfg.train.epochs
    if s.scheduler not in SCHEDULERS:
        raise nearest(s.scheduler, SCHEDULERS, "scheduler")
    if s.warmup_epochs and s.scheduler in ("plateau", "onecycle"):
        raise UserError(f"warmup_epochs does not combine with scheduler {s.scheduler} "
                        "(onecycle has its own warm-up; use none, step or cosine)")
    lrs = torch.optim.lr_scheduler
    if s.scheduler == "plateau":
        mode = "min" if cfg.train.monitor == "val_loss" else "max"
        return lrs.ReduceLROnPlateau(opt, mode=mode, factor=s.plateau_factor, patience=s.plateau_patience,
                                     min_lr=s.min_lr), "metric"
    if s.scheduler == "onecycle":
        return lrs.OneCycleLR(opt, max_lr=cfg.optim.lr, total_steps=epochs * steps_per_epoch), "step"
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

    def __init__(self, n_classes: int, weight: torch.Tensor | None, label_smoothing: float):
        super().__init__()
        self.n_classes = n_classes
        self.register_buffer("weight", weight if weight is not None else None)
        self.label_smoothing = label_smoothing

    def forward(self, logits, target):
        w = self.weight.to(logits.device) if self.weight is not None else None
        return F.cross_entropy(logits, target, weight=w, label_smoothing=self.label_smoothing)


def class_weights(labels: torch.Tensor, n_classes: int) -> torch.Tensor:
    counts = torch.bincount(labels, minlength=n_classes).to(torch.float32)
    return counts.sum() / counts.clamp_min(1)


# --------------------------------------------------------------------------------------- the run


def epoch_seed(seed: int, epoch: int) -> int:
    return (seed * 1_000_003 + epoch * 7919) % (2**63 - 1)


def atomic_save(obj, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    torch.save(obj, tmp)
    os.replace(tmp, path)


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


def _better(value: float, best: float | None, monitor: str) -> bool:
    if best is None or math.isnan(best):
        return not math.isnan(value)
    return value < best if monitor == "val_loss" else value > best


class _Sigterm:
    """SIGTERM behaves like Ctrl-C: the last finished epoch's checkpoint is kept, the run resumes."""

    def __enter__(self):
        self.old = None
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


def fit(cfg: Config, out: Path, resume: bool = False, progress: bool = True, log=print) -> dict:
    """Train one run into `out`. With resume=True, continue from out/last.pt (or start if there is none)."""
    out = Path(out)
    ckpt = None
    if resume:
        if not (out / "config.toml").is_file():
            raise UserError(f"{out} is not a cnnlab run folder (no config.toml)")
        cfg = Config.load(out / "config.toml")
        if (out / "last.pt").is_file():
            ckpt = torch.load(out / "last.pt", weights_only=True, map_location="cpu")
            if ckpt.get("finished"):
                log(f"run {out} is already finished ({ckpt['epoch']} epochs)")
                return ckpt["summary"]
    cfg.validate()
    torch.set_num_threads(cfg.train.threads or os.cpu_count() or 1)
    if cfg.model.model in FIXED_SIZE and cfg.data.resize == "keep":
        raise UserError(f"model {cfg.model.model} needs a fixed input size: use resize squash or pad, "
                        "or a size-agnostic model (adaptive, resnet)")
    p = prepare(cfg, progress=progress)
    n_classes = len(p.dataset.classes)
    torch.manual_seed(cfg.train.seed)
    model = build(cfg.model, cfg.data.channels, n_classes, cfg.data.image_size)
    eng = make_engine(cfg, model, p.mean, p.std)
    place(p.train, eng)
    place(p.val, eng)
    weight = class_weights(p.train.labels, n_classes) if cfg.data.imbalance == "weights" else None
    criterion = Criterion(n_classes, weight, cfg.loss.label_smoothing)
    opt = make_optimizer(eng.model, cfg)
    steps = len(batches(p.train, epoch_indices(p.train.labels, n_classes, cfg.data.imbalance,
                                               torch.Generator().manual_seed(0))[0], cfg.train.batch_size))
    sched, when = make_scheduler(opt, cfg, steps)
    scaler = torch.amp.GradScaler("cuda") if eng.autocast_dtype == torch.float16 else None
    ema = torch.optim.swa_utils.AveragedModel(eng.model, multi_avg_fn=ema_avg_fn(cfg.train.ema)) \
        if cfg.train.ema else None

    out.mkdir(parents=True, exist_ok=True)
    cfg.save(out / "config.toml")
    data_mod.write_manifest(p.dataset, out / "split.csv", splits=("train", "val"))
    with open(out / "skipped.csv", "w", newline="") as f:
        csv.writer(f).writerows([("path", "reason"), *p.skipped])

    history: list[dict] = []
    best_value, best_epoch, bad_epochs, start = None, 0, 0, 1
    if ckpt is not None:
        eng.model.load_state_dict(ckpt["model"])
        opt.load_state_dict(ckpt["optimizer"])
        sched.load_state_dict(ckpt["scheduler"])
        if ema is not None:
            ema.load_state_dict(ckpt["ema"])
        if scaler is not None and ckpt.get("scaler"):
            scaler.load_state_dict(ckpt["scaler"])
        history = ckpt["history"]
        best_value, best_epoch, bad_epochs = ckpt["best_value"], ckpt["best_epoch"], ckpt["bad_epochs"]
        start = ckpt["epoch"] + 1
        torch.set_rng_state(ckpt["rng_cpu"])
        log(f"resuming {out} at epoch {start}")

    meta = {"classes": p.dataset.classes, "prep": asdict(p.prep), "mean": p.mean, "std": p.std,
            "config": cfg.to_dict(), "model_name": cfg.model.model}
    eval_model = ema.module if ema is not None else eng.model
    eval_eng = dataclasses.replace(eng, model=eval_model)
    finished, epoch, diverged = start > cfg.train.epochs, start - 1, False
    from tqdm import tqdm

    with _Sigterm():
        for epoch in range(start, cfg.train.epochs + 1):
            torch.manual_seed(epoch_seed(cfg.train.seed, epoch))  # dropout
            g = torch.Generator().manual_seed(epoch_seed(cfg.train.seed, epoch) + 1)  # order, augmentation
            t0 = time.perf_counter()
            bar = tqdm(total=steps, desc=f"epoch {epoch}/{cfg.train.epochs}", disable=None if progress else True,
                       leave=False, unit="step")
            tr = train_one_epoch(eng, p.train, opt, criterion, cfg, g, scaler,
                                 sched if when == "step" else None, bar, ema)
            bar.close()
            if ema is not None:
                _ema_bn(ema, eng.model)
            ev = evaluate(eval_eng, p.val, criterion, cfg.train.eval_batch_size)
            lr = opt.param_groups[0]["lr"]
            if when == "epoch":
                sched.step()
            elif when == "metric":
                sched.step(ev[cfg.train.monitor])
            dt = time.perf_counter() - t0
            row = {"epoch": epoch, **{k: tr[k] for k in ("train_loss", "train_f1", "train_acc")}, **ev, "lr": lr,
                   "epoch_s": dt, "images_per_s": tr["seen"] / dt, "data_wait_s": tr["data_wait_s"]}
            history.append(row)
            value = ev[cfg.train.monitor]
            improved = _better(value, best_value, cfg.train.monitor)
            if improved:
                best_value, best_epoch, bad_epochs = value, epoch, 0
            else:
                bad_epochs += 1
            stop = (cfg.train.patience and bad_epochs >= cfg.train.patience) or epoch == cfg.train.epochs
            diverged = not math.isfinite(tr["train_loss"])
            finished = bool(stop or diverged)
            state = {"model": eng.model.state_dict(), "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
                     "ema": ema.state_dict() if ema is not None else None,
                     "scaler": scaler.state_dict() if scaler is not None else None,
                     "epoch": epoch, "history": history, "best_value": best_value, "best_epoch": best_epoch,
                     "bad_epochs": bad_epochs, "rng_cpu": torch.get_rng_state(), "finished": finished, **meta}
            if finished:
                state["summary"] = summarize(history, best_epoch)
            if improved:
                atomic_save({**meta, "model": eval_model.state_dict(), "epoch": epoch, "best_value": best_value},
                            out / "best.pt")
            if cfg.train.save_every and epoch % cfg.train.save_every == 0:
                atomic_save({**meta, "model": eval_model.state_dict(), "epoch": epoch}, out / f"epoch-{epoch:03d}.pt")
            atomic_save(state, out / "last.pt")
            write_history(history, out / "history.csv")
            _draw(history, out)
            if progress:
                log(f"epoch {epoch:3d}  train loss {tr['train_loss']:.4f} f1 {tr['train_f1']:.3f}  "
                    f"val loss {ev['val_loss']:.4f} f1 {ev['val_f1']:.3f} acc {ev['val_acc']:.3f}  "
                    f"{dt:.1f}s {row['images_per_s']:.0f} img/s{'  *' if improved else ''}")
            if diverged:
                log(f"training diverged at epoch {epoch} (loss {tr['train_loss']}); stopping")
            if finished:
                break
    summary = summarize(history, best_epoch)  # wall_s: the epochs' own times, the same after a resume
    if finished and epoch < cfg.train.epochs and not diverged:
        log(f"early stop at epoch {epoch}: no {cfg.train.monitor} improvement for {cfg.train.patience} epochs")
    return summary


def ema_decay(decay: float, n_averaged: int) -> float:
    """The decay after `n_averaged` updates, warmed up as (1 + n) / (10 + n): without it a decay of 0.999 keeps
    e^-1 of the random initial weights after 1000 steps, more than a short run takes."""
    return min(decay, (1 + n_averaged) / (10 + n_averaged))


def ema_avg_fn(decay: float):
    def update(averaged: list, current: list, n_averaged) -> None:
        d = ema_decay(decay, int(n_averaged))
        torch._foreach_lerp_(averaged, current, 1 - d)

    return update


def _ema_bn(ema, model: nn.Module) -> None:
    # BatchNorm running statistics are buffers: the EMA copy takes the live model's.
    for b_ema, b in zip(ema.module.buffers(), model.buffers(), strict=True):
        b_ema.copy_(b)


def summarize(history: list[dict], best_epoch: int) -> dict:
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


def _draw(history: list[dict], out: Path) -> None:
    from cnnlab.plots import curves

    curves(history, out / "curves.png")
