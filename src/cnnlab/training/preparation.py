"""A run's data (`prepare_run_data` -> `RunData`): a new run's split (`split_dataset`: scan, then a random, blocked,
grouped or manifest split, duplicate groups kept whole), or a run's own `split.csv` read back (resume and every
later command), then decoded through the cache, with the training images' channel statistics (and, for box
guidance, their box masks)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from cnnlab.config import Config
from cnnlab.data.cache import ImageSet, load_images
from cnnlab.data.decode import DecodeSettings
from cnnlab.data.folders import Dataset, check_root, report_skipped, scan
from cnnlab.data.manifest import check_sizes, manifest_classes, read_manifest
from cnnlab.data.splits import block_split_groups, group_split_groups, keep_listed, split_by_manifest, split_train_val
from cnnlab.errors import UserError
from cnnlab.training.guidance import BoxMasks, box_masks

# ------------------------------------------------------------------------------------------ prepare


@dataclass
class RunData:
    """A run's data, ready to train on: the split dataset (what split.csv lists), the decoded train and validation
    images, the files skipped (path, reason), and the training images' per-channel mean and std."""

    dataset: Dataset  # train and val samples as split (both listed in split.csv)
    train: ImageSet
    val: ImageSet
    skipped: list[tuple[str, str]]
    mean: torch.Tensor  # per channel, for normalisation, from the training images
    std: torch.Tensor
    boxes: BoxMasks | None = None  # with data.boxes: the training images' box masks

    @property
    def classes(self) -> list[str]:
        return self.dataset.classes


def split_dataset(cfg: Config) -> Dataset:
    """Scan the dataset and split train/validation (in memory; the manifest is saved with the run)."""
    d = cfg.data
    if not d.path:
        raise UserError("no dataset given: pass --data DIR or --data LABELS.csv (or set data.path)")
    ds = scan(d.path, class_map=d.class_map, strict=d.strict)
    if "train" not in ds.splits:
        if ds.source:
            raise UserError(f"no training images in {ds.source}: no usable row has split train (or a blank split)")
        raise UserError(f"no training split in {ds.root}: expected a train/ or training/ folder")
    if d.train_manifest:
        keep_listed(ds, Path(d.train_manifest))
    groups = None
    if d.dedupe:
        from cnnlab.data.duplicates import duplicate_groups

        groups = duplicate_groups(ds, split="train", cache_dir=d.cache_dir or None)
    if d.val_manifest:
        split_by_manifest(ds, Path(d.val_manifest), groups)
    else:
        if d.split == "blocks":
            groups = block_split_groups(ds, d.block_size, groups)
        elif d.split == "groups":
            groups = group_split_groups(ds, Path(d.group_file) if d.group_file else None, d.block_size, groups)
        split_train_val(ds, d.val_fraction, d.split_seed, groups)
    if "val" not in ds.splits:
        raise UserError("no validation data: set val_fraction > 0 or provide a val/ folder")
    return ds


def dataset_from_split(cfg: Config, split_csv: Path, classes: list[str] | None = None) -> Dataset:
    """A run's train and validation samples, read back from its split.csv: never split again."""
    root = check_root(Path(cfg.data.path))
    check_sizes(split_csv, root)
    classes = classes or manifest_classes(split_csv)
    splits = {split: read_manifest(split_csv, root, classes, split=split) for split in ("train", "val")}
    return Dataset(root, list(classes), splits)


def prepare_run_data(
    cfg: Config,
    progress: bool = False,
    split_csv: Path | None = None,
    classes: list[str] | None = None,
    copies: int = 1,
) -> RunData:
    """A run's `RunData`: a new split (or, with `split_csv`, the run's own split read back, with its `classes`),
    then train and validation decoded through the cache (`copies`: the processes of this machine that hold the
    images, when data.cache = auto chooses between memory and a map)."""
    d = cfg.data
    ds = dataset_from_split(cfg, split_csv, classes) if split_csv else split_dataset(cfg)
    sets, skipped = {}, list(ds.skipped)
    for split in ("train", "val"):
        sets[split], bad, _ = load_images(
            ds.splits[split],
            ds.root,
            DecodeSettings.of(d),
            d.cache_dir or None,
            progress=progress,
            strict=d.strict,
            mode=d.cache,
            copies=copies,
        )
        skipped += bad
    if len(skipped) > len(ds.skipped):
        report_skipped(skipped[len(ds.skipped) :], strict=False)
    mean, std = channel_stats(sets["train"])
    boxes = box_masks(d.boxes, ds.root, sets["train"], DecodeSettings.of(d)) if d.boxes else None
    return RunData(ds, sets["train"], sets["val"], skipped, mean, std, boxes)


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
