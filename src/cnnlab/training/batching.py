"""An epoch's order (`epoch_indices`: shuffled, oversampled or undersampled by class when asked), its batches
(`batches`, bucketed by size for resize = keep; `gather`), and a decoded set stored as the model reads it (`place`).
Every draw comes from a generator seeded by (seed, epoch), so a run resumed at an epoch boundary continues exactly."""

from __future__ import annotations

import torch

from cnnlab.data.cache import ImageSet

IMBALANCE_MODES = ("none", "weights", "oversample", "undersample")  # weights: in the loss (optimization.py)


# --------------------------------------------------------------------------------------- batching


def epoch_indices(
    labels: torch.Tensor, n_classes: int, imbalance: str, g: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
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
    if not isinstance(images.images, list):  # one size (in memory or mapped)
        groups = [positions]
    else:
        buckets: dict[tuple, list[int]] = {}
        for pos, i in enumerate(order.tolist()):
            buckets.setdefault(tuple(images.images[i].shape), []).append(pos)
        groups = [torch.tensor(members) for members in buckets.values()]
    out = []
    for members in groups:
        parts = [part for part in members.split(batch_size) if len(part)]  # an empty set has no batch
        if len(parts) > 1 and len(parts[-1]) == 1:  # BatchNorm cannot train on a batch of one
            parts[-2:] = [torch.cat(parts[-2:])]
        out += parts
    return sorted(out, key=lambda b: int(b[0]))  # interleave buckets deterministically


def to_device(t: torch.Tensor, device: torch.device, dtype: torch.dtype | None = None) -> torch.Tensor:
    """`t` on `device` (in `dtype` if given). A CPU tensor bound for a GPU goes through pinned memory and does not
    wait: a copy from ordinary (pageable) memory first waits for the GPU to finish the work queued before it, so
    the small per-batch tensors (indices, labels, augmentation draws) would stall every step on the host."""
    if device.type == "cuda" and t.device.type == "cpu":
        t = t.pin_memory().to(device, non_blocking=True)
    return t.to(device=device, dtype=dtype)


def gather(images: ImageSet, idx: torch.Tensor) -> torch.Tensor:
    """The uint8 images at `idx`: indexed in memory (on the set's device), read from the store when mapped."""
    if images.mapped:
        return images.images.gather(idx)
    if isinstance(images.images, torch.Tensor):
        return images.images[to_device(idx, images.images.device)]  # indexing keeps channels_last strides
    return torch.stack([images.images[i] for i in idx.tolist()])


def place(images: ImageSet, device: torch.device, channels_last: bool) -> ImageSet:
    """Store a fixed-size set the way the model reads it: channels_last (batches then need no layout copy),
    and on the GPU when there is one (140 MB of uint8 for the whole MRI set at 128 px). A mapped set stays in
    the store; its batches come in the same layout, and go to the device with the input preset."""
    if images.mapped:
        images.images.channels_last = channels_last
    elif isinstance(images.images, torch.Tensor):
        x = images.images.to(device)
        images.images = x.contiguous(memory_format=torch.channels_last) if channels_last else x
    return images
