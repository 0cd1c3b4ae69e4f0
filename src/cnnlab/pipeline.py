"""The input pipeline: a dataset prepared once as uint8 tensors, an epoch's order and batches, and the train and
eval presets that turn a uint8 batch into the network's input.

`prepare` scans and splits a dataset for a new run, or reads back a run's own `split.csv` (resume and every
later command), then decodes through the cache. The presets are a pair, as in torchvision's classification
references: `EvalInput` normalises; `TrainInput` augments from the epoch's generator, then normalises the same
way and adds noise. Every random draw comes from a generator seeded by (seed, epoch), so a run resumed at an
epoch boundary continues exactly.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from cnnlab import data as data_mod
from cnnlab.augment import COPY_AUGMENT, Augmenter
from cnnlab.config import AugmentConfig, Config
from cnnlab.decode import Prep
from cnnlab.errors import UserError
from cnnlab.images import ImageSet, load_images

NORMALIZE_POLICIES = ("dataset", "image", "equalize")
IMBALANCE_MODES = ("none", "weights", "oversample", "undersample")  # weights: in the loss (optimization.py)


# ------------------------------------------------------------------------------------------ prepare


@dataclass
class Prepared:
    dataset: data_mod.Dataset  # train and val samples as split (both listed in split.csv)
    train: ImageSet
    val: ImageSet
    skipped: list[tuple[str, str]]
    mean: torch.Tensor  # per channel, for normalisation, from the training images
    std: torch.Tensor

    @property
    def classes(self) -> list[str]:
        return self.dataset.classes


def split_dataset(cfg: Config) -> data_mod.Dataset:
    """Scan the dataset and split train/validation (in memory; the manifest is saved with the run)."""
    d = cfg.data
    if not d.path:
        raise UserError("no dataset given: pass --data DIR (or set data.path)")
    ds = data_mod.scan(d.path, class_map=d.class_map, strict=d.strict)
    if "train" not in ds.splits:
        raise UserError(f"no training split in {ds.root}: expected a train/ or training/ folder")
    if d.train_manifest:
        data_mod.keep_listed(ds, Path(d.train_manifest))
    groups = None
    if d.dedupe:
        from cnnlab.audit import duplicate_groups

        groups = duplicate_groups(ds, split="train", cache_dir=d.cache_dir or None)
    if d.val_manifest:
        data_mod.split_by_manifest(ds, Path(d.val_manifest), groups)
    else:
        if d.split == "blocks":
            groups = data_mod.block_split_groups(ds, d.block_size, groups)
        elif d.split == "groups":
            groups = data_mod.group_split_groups(ds, Path(d.group_file), d.block_size, groups)
        data_mod.split_train_val(ds, d.val_fraction, d.split_seed, groups)
    if "val" not in ds.splits:
        raise UserError("no validation data: set val_fraction > 0 or provide a val/ folder")
    return ds


def dataset_from_split(cfg: Config, split_csv: Path, classes: list[str] | None = None) -> data_mod.Dataset:
    """A run's train and validation samples, read back from its split.csv: never split again."""
    root = data_mod.check_root(Path(cfg.data.path))
    data_mod.check_sizes(split_csv, root)
    classes = classes or data_mod.manifest_classes(split_csv)
    splits = {split: data_mod.read_manifest(split_csv, root, classes, split=split) for split in ("train", "val")}
    return data_mod.Dataset(root, list(classes), splits)


def prepare(cfg: Config, progress: bool = False, split_csv: Path | None = None,
            classes: list[str] | None = None) -> Prepared:
    """Split (or read `split_csv`), then decode train and validation through the cache."""
    d = cfg.data
    ds = dataset_from_split(cfg, split_csv, classes) if split_csv else split_dataset(cfg)
    sets, skipped = {}, list(ds.skipped)
    for split in ("train", "val"):
        sets[split], bad, _ = load_images(ds.splits[split], ds.root, Prep.of(d), d.cache_dir or None,
                                          progress=progress, strict=d.strict)
        skipped += bad
    if len(skipped) > len(ds.skipped):
        data_mod.report_skipped(skipped[len(ds.skipped):], strict=False)
    mean, std = channel_stats(sets["train"])
    return Prepared(ds, sets["train"], sets["val"], skipped, mean, std)


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


# --------------------------------------------------------------------------------------- batching


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


def steps_per_epoch(images: ImageSet, n_classes: int, imbalance: str, batch_size: int) -> int:
    order = epoch_indices(images.labels, n_classes, imbalance, torch.Generator().manual_seed(0))[0]
    return len(batches(images, order, batch_size))


def gather(images: ImageSet, idx: torch.Tensor) -> torch.Tensor:
    if isinstance(images.images, torch.Tensor):
        return images.images[idx.to(images.images.device)]  # indexing keeps channels_last strides
    return torch.stack([images.images[i] for i in idx.tolist()])


def place(images: ImageSet, device: torch.device, channels_last: bool) -> ImageSet:
    """Store a fixed-size set the way the model reads it: channels_last (batches then need no layout copy),
    and on the GPU when there is one (140 MB of uint8 for the whole MRI set at 128 px)."""
    if isinstance(images.images, torch.Tensor):
        x = images.images.to(device)
        images.images = x.contiguous(memory_format=torch.channels_last) if channels_last else x
    return images


# ----------------------------------------------------------------------------------------- presets


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


class EvalInput:
    """uint8 batch -> the network's input: normalised (`normalize` policy), on the device, in its layout."""

    def __init__(self, mean: torch.Tensor, std: torch.Tensor, normalize: str, device: torch.device,
                 channels_last: bool):
        self.normalize, self.device, self.channels_last = normalize, device, channels_last
        mean, std = mean.to(device), std.to(device)
        # (x / 255 - mean) / std as one fused multiply-add on the uint8 values.
        self.scale = (1 / (255 * std)).view(1, -1, 1, 1)
        self.shift = (-mean / std).view(1, -1, 1, 1)

    def __call__(self, x_uint8: torch.Tensor) -> torch.Tensor:
        return self.layout(self.normalise(self.floats(x_uint8), unit=False))

    def floats(self, x_uint8: torch.Tensor) -> torch.Tensor:
        return x_uint8.to(self.device, non_blocking=True).float()  # keeps channels_last strides

    def normalise(self, x: torch.Tensor, unit: bool) -> torch.Tensor:
        """`x` holds 0-255 values, or 0-1 with `unit` (after augmentation)."""
        if self.normalize == "equalize":
            x = equalize(x if unit else x.div_(255))
        else:
            x = torch.addcmul(self.shift, x, self.scale * 255 if unit else self.scale)
        if self.normalize != "dataset":
            mean = x.mean(dim=(1, 2, 3), keepdim=True)
            x = (x - mean) / x.std(dim=(1, 2, 3), keepdim=True).clamp_min(1e-3)
        return x

    def layout(self, x: torch.Tensor) -> torch.Tensor:
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x


class TrainInput(EvalInput):
    """The eval preset plus augmentation: the configured one, or else (with oversampling) a light one applied to
    the copies only, so that they are not identical repeats; then noise on the normalised input."""

    def __init__(self, mean: torch.Tensor, std: torch.Tensor, normalize: str, device: torch.device,
                 channels_last: bool, augment: AugmentConfig):
        super().__init__(mean, std, normalize, device, channels_last)
        self.augment, self.copy_augment = Augmenter(augment), Augmenter(COPY_AUGMENT)

    def __call__(self, x_uint8: torch.Tensor, g: torch.Generator, copies: torch.Tensor) -> torch.Tensor:
        x = self.floats(x_uint8)
        augment_copies = not self.augment.active and bool(copies.any())
        augmented = self.augment.active or augment_copies
        if augmented:
            x = x.div_(255)
            if self.augment.active:
                x = self.augment.pixels(x, g)
            else:
                x = torch.where(copies.view(-1, 1, 1, 1).to(x.device), self.copy_augment.pixels(x, g), x)
        x = self.augment.noise(self.normalise(x, unit=augmented), g)
        return self.layout(x)
