"""Box-guided training (`data.boxes`): the training images' boxes as masks in the decoded arrays (`BoxMasks`, made
by `box_masks`), moved through the same geometric augmentation as their images, and the localisation term
(`BoxGuidance`): the share of the true class's activation map (CAM) that lies outside the box, weighted by
`loss.box_weight`, so that the class evidence lies in the lesion ("right for the right reasons", as GAIN's
attention mining). Only the training images' boxes are read; validation, test and predict read none.
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
            masks = self.images[idx.to(self.images.device)]
        else:
            masks = torch.stack([self.images[i] for i in idx.tolist()])
        return masks.to(device).float(), self.has_box[idx].to(device)


def box_masks(boxes_csv: str, root: Path, train: ImageSet, prep: DecodeSettings) -> BoxMasks:
    """The masks of the training images `train` from the boxes file (rows of other images are never used)."""
    table = read_boxes(boxes_csv)
    rels = [Path(s.path).resolve().relative_to(Path(root).resolve()).as_posix() for s in train.samples]
    boxes = decoded_boxes(root, rels, table, prep)
    shapes = [tuple(x.shape[-2:]) for x in train.images]
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
    stacked = torch.stack(masks) if isinstance(train.images, torch.Tensor) else masks
    return BoxMasks(stacked, has_box, record)


class BoxGuidance:
    """The localisation term of a `gap_head` model: a forward hook keeps the last feature map; `loss` weighs it with
    the head's row of each image's true class (its CAM), upsamples it to the input as a heatmap is, and returns
    `weight` x the mean share of the map's positive part outside the box, over the images with a box (of `masks`,
    the training set's)."""

    def __init__(self, model: nn.Module, weight: float, masks: BoxMasks):
        self.layer, self.head = guidance_parts(model)
        self.weight, self.masks = weight, masks
        self.features: torch.Tensor | None = None
        self.handle = self.layer.register_forward_hook(self._keep)

    def _keep(self, module, inputs, output) -> None:
        self.features = output if module.training else None

    def inside(self, y: torch.Tensor, masks: torch.Tensor, has_box: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(each image's share of CAM energy inside its box, which images count: a box left after augmentation)."""
        with torch.autocast(masks.device.type, enabled=False):
            cam = torch.einsum("bchw,bc->bhw", self.features.float(), self.head.weight.float()[y]).relu()
            cam = F.interpolate(cam[:, None], size=masks.shape[-2:], mode="bilinear", align_corners=False)
            total = cam.sum((1, 2, 3))
            share = (cam * masks).sum((1, 2, 3)) / total.clamp_min(1e-12)
        valid = has_box & (masks.sum((1, 2, 3)) > 0) & (total > 0)
        return share, valid

    def loss(self, y: torch.Tensor, masks: torch.Tensor, has_box: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(weight x mean outside share, the summed inside share and the count, detached, for the epoch's figure)."""
        share, valid = self.inside(y, masks, has_box)
        n = valid.sum()
        term = ((1 - share) * valid).sum() / n.clamp_min(1)
        return self.weight * term, torch.stack([(share * valid).sum().detach(), n.detach().to(share.dtype)])

    def close(self) -> None:
        self.handle.remove()
