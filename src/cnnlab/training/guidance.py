"""Box-guided training (`data.boxes`): the training images' boxes as masks in the decoded arrays (`BoxMasks`, made
by `box_masks`), moved through the same geometric augmentation as their images, and the localisation term
(`BoxGuidance`): -log of the share of the true class's activation map (CAM, as a spatial softmax) that lies inside
the box, weighted by `loss.box_weight`, so that the class evidence lies in the lesion ("right for the right
reasons", as GAIN's attention mining). Only the training images' boxes are read; validation, test and predict read none.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from cnnlab.data.boxes import box_mask, decoded_boxes, file_record, read_boxes
from cnnlab.data.cache import ImageSet
from cnnlab.data.decode import DecodeSettings
from cnnlab.errors import UserError
from cnnlab.training.batching import to_device
from cnnlab.training.models import guidance_parts


@dataclass
class BoxMasks:
    """One mask an image of a training set (N x 1 x H x W uint8, 1 inside a box; a list for resize=keep), which
    images have a box at all, and the record of the boxes file (path, bytes, sha256, counts) the run keeps."""

    images: torch.Tensor | list[torch.Tensor]
    has_box: torch.Tensor  # N bool
    record: dict

    def gather(self, idx: torch.Tensor, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """The masks (float, B x 1 x H x W) and has-box flags of the images `idx`, on `device`."""
        if isinstance(self.images, torch.Tensor):
            masks = self.images[to_device(idx, self.images.device)]
        else:
            masks = torch.stack([self.images[i] for i in idx.tolist()])
        return to_device(masks, device).float(), to_device(self.has_box[idx], device)


def box_masks(boxes_csv: str, root: Path, train: ImageSet, prep: DecodeSettings) -> BoxMasks:
    """The masks of the training images `train` from the boxes file (rows of other images are never used)."""
    table = read_boxes(boxes_csv)
    rels = [Path(s.path).resolve().relative_to(Path(root).resolve()).as_posix() for s in train.samples]
    boxes = decoded_boxes(root, rels, table, prep)
    fixed = not isinstance(train.images, list)
    shapes = [tuple(train.images.shape[-2:])] * len(train) if fixed else [tuple(x.shape[-2:]) for x in train.images]
    masks = [
        torch.from_numpy(box_mask(shape, boxes.get(rel, []))).to(torch.uint8)[None]
        for rel, shape in zip(rels, shapes, strict=True)
    ]
    has_box = torch.tensor([rel in boxes for rel in rels], dtype=torch.bool)
    if rels and not has_box.any():
        raise UserError(
            f"none of the {len(rels)} training images has a box in {boxes_csv} (its paths are relative to the data "
            f"folder {root}, e.g. {rels[0]})"
        )
    record = file_record(boxes_csv) | {"train_images": len(rels), "train_images_with_box": int(has_box.sum())}
    stacked = torch.stack(masks) if fixed else masks
    return BoxMasks(stacked, has_box, record)


class BoxGuidance:
    """The localisation term of a `gap_head` model. A forward hook keeps the last feature map; `loss` weighs it with
    the head's row of each image's true class (its CAM), upsamples it to the input as a heatmap is, spreads it over
    the image as a spatial softmax, and returns `weight` x the mean of -log(the share inside the box), over the
    images with a box (of `masks`, the training set's). The softmax is defined for every map (a share of the map's
    positive part is not: a map that is negative everywhere would escape the term) and its peak is the heatmap's."""

    def __init__(self, model: nn.Module, weight: float, masks: BoxMasks):
        self.layer, self.head = guidance_parts(model)
        self.weight, self.masks = weight, masks
        self.features: torch.Tensor | None = None
        self.handle = self.layer.register_forward_hook(self._keep)

    def _keep(self, module, inputs, output) -> None:
        self.features = output if module.training else None

    def log_inside(
        self, y: torch.Tensor, masks: torch.Tensor, has_box: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(each image's log share of its CAM's spatial softmax inside its box, which images count: those with a box
        left after augmentation)."""
        with torch.autocast(masks.device.type, enabled=False):
            cam = torch.einsum("bchw,bc->bhw", self.features.float(), self.head.weight.float()[y])
            cam = F.interpolate(cam[:, None], size=masks.shape[-2:], mode="bilinear", align_corners=False).flatten(1)
            weights = masks.flatten(1).clamp(0, 1)
            log_share = torch.logsumexp(cam + weights.clamp_min(1e-12).log(), 1) - torch.logsumexp(cam, 1)
        valid = has_box & (weights.sum(1) > 0)
        return torch.where(valid, log_share, torch.zeros_like(log_share)), valid

    def loss(self, y: torch.Tensor, masks: torch.Tensor, has_box: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(weight x mean -log share inside, the summed share inside and the count, detached, for the epoch's
        figure)."""
        log_share, valid = self.log_inside(y, masks, has_box)
        n = valid.sum()
        term = -(log_share * valid).sum() / n.clamp_min(1)
        share = (log_share.detach().exp() * valid).sum()
        return self.weight * term, torch.stack([share, n.detach().to(share.dtype)])

    def close(self) -> None:
        self.handle.remove()
