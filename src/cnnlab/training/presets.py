"""The input presets that turn a uint8 batch into the network's input, a pair as in torchvision's classification
references: `EvalInput` normalises (dataset statistics, per image, or histogram equalisation); `TrainInput`
augments with each image's own draws (augment.Draws), then normalises the same way and adds noise."""

from __future__ import annotations

import torch

from cnnlab.config import AugmentConfig
from cnnlab.training.augment import COPY_AUGMENT, Augmenter, Draws, as_draws
from cnnlab.training.batching import to_device

NORMALIZE_POLICIES = ("dataset", "image", "equalize")


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

    def __init__(
        self, mean: torch.Tensor, std: torch.Tensor, normalize: str, device: torch.device, channels_last: bool
    ):
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

    def __init__(
        self,
        mean: torch.Tensor,
        std: torch.Tensor,
        normalize: str,
        device: torch.device,
        channels_last: bool,
        augment: AugmentConfig,
    ):
        super().__init__(mean, std, normalize, device, channels_last)
        self.augment, self.copy_augment = Augmenter(augment), Augmenter(COPY_AUGMENT)

    def __call__(self, x_uint8: torch.Tensor, draws: Draws | torch.Generator, copies: torch.Tensor) -> torch.Tensor:
        return self.with_masks(x_uint8, None, draws, copies)[0]

    def with_masks(
        self, x_uint8: torch.Tensor, masks: torch.Tensor | None, draws: Draws | torch.Generator, copies: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The network's input, and the box masks (B x 1 x H x W float) moved as their images were; `draws`: the
        images' own (training) or one generator's for the batch."""
        g = as_draws(draws, x_uint8.shape[0])
        x = self.floats(x_uint8)
        augment_copies = not self.augment.active and bool(copies.any())
        augmented = self.augment.active or augment_copies
        if augmented:
            x = x.div_(255)
            if self.augment.active:
                x, masks = self.augment.pixels_and_masks(x, masks, g)
            else:
                pick = to_device(copies.view(-1, 1, 1, 1), x.device)
                moved, moved_masks = self.copy_augment.pixels_and_masks(x, masks, g)
                x = torch.where(pick, moved, x)
                masks = None if masks is None else torch.where(pick, moved_masks, masks)
        x = self.augment.noise(self.normalise(x, unit=augmented), g)
        return self.layout(x), masks
