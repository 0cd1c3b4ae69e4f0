"""Per-sample augmentation on batched tensors (no decoding; only JPEG re-encoding goes through Pillow, per image),
and mixup's draws.

Every random draw comes from the epoch's `torch.Generator`, so a run is reproducible and resumable.
Geometric transforms (flips, rotation, shift, zoom) are folded into one affine warp per sample.
"""

from __future__ import annotations

import io
import math

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from cnnlab.config import AugmentConfig

JPEG_QUALITY = (30, 95)  # re-encoding quality range, inclusive
ERASE_AREA = (0.02, 0.2)  # random erasing: fraction of the image blacked out

# Copies made by random oversampling get at least this, so that they are not identical repeats.
COPY_AUGMENT = AugmentConfig(hflip=True, rotate=10.0, translate=0.05, scale_min=0.9, brightness=0.1)


def _smooth(x: torch.Tensor) -> torch.Tensor:
    """3x3 binomial blur of each channel, edges replicated."""
    k = torch.tensor([1.0, 2.0, 1.0], device=x.device, dtype=x.dtype)
    k = (k[:, None] * k[None, :] / 16).expand(x.shape[1], 1, 3, 3)
    return F.conv2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), k, groups=x.shape[1])


def _uniform(n: int, lo: float, hi: float, g: torch.Generator) -> torch.Tensor:
    return lo + (hi - lo) * torch.rand(n, generator=g)


class Augmenter:
    """The augmentation an `AugmentConfig` asks for, on batched float tensors: `active` says whether it does anything,
    `pixels` applies the per-sample transforms, `noise` adds noise to the normalised input."""

    def __init__(self, cfg: AugmentConfig):
        self.cfg = cfg

    @property
    def geometric(self) -> bool:
        c = self.cfg
        return bool(c.rotate or c.translate or c.scale_min != 1 or c.scale_max != 1)

    @property
    def active(self) -> bool:
        c = self.cfg
        return bool(
            self.geometric
            or c.hflip
            or c.vflip
            or c.brightness
            or c.contrast
            or c.gamma
            or c.blur
            or c.sharpness
            or c.noise
            or c.jpeg
            or c.erase
        )

    def pixels(self, x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        """x: float B x C x H x W in [0, 1]. Returns the augmented batch, still in [0, 1]."""
        return self.pixels_and_masks(x, None, g)[0]

    def pixels_and_masks(
        self, x: torch.Tensor, masks: torch.Tensor | None, g: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """`pixels`, with box masks (B x 1 x H x W float) moved by the same geometric transform (flips, rotation,
        shift, zoom) and untouched by the photometric ones; the random draws are the same with or without masks."""
        c, n = self.cfg, x.shape[0]
        if self.geometric:
            x, masks = self._affine(x, masks, g)
        else:
            for flip, dim in ((c.hflip, -1), (c.vflip, -2)):
                if flip:
                    pick = (torch.rand(n, generator=g) < 0.5).view(-1, 1, 1, 1).to(x.device)
                    x = torch.where(pick, x.flip(dim), x)
                    masks = None if masks is None else torch.where(pick, masks.flip(dim), masks)
        if c.brightness:
            x = x * _uniform(n, 1 - c.brightness, 1 + c.brightness, g).view(-1, 1, 1, 1).to(x)
        if c.contrast:
            mean = x.mean(dim=(1, 2, 3), keepdim=True)
            x = (x - mean) * _uniform(n, 1 - c.contrast, 1 + c.contrast, g).view(-1, 1, 1, 1).to(x) + mean
        if c.brightness or c.contrast:
            x = x.clamp(0, 1)
        if c.gamma:
            log_g = math.log1p(c.gamma)
            x = x.clamp_min(1e-6) ** torch.exp(_uniform(n, -log_g, log_g, g)).view(-1, 1, 1, 1).to(x)
        if c.blur:
            pick = (torch.rand(n, generator=g) < c.blur).view(-1, 1, 1, 1).to(x.device)
            x = torch.where(pick, _smooth(x), x)
        if c.sharpness:
            # factor 0 = smoothed, 1 = unchanged, 2 = sharpened: sources differ in sharpness and noise, and
            # a model should not read the class from how crisp a scan is
            smooth = _smooth(x)
            factor = _uniform(n, 1 - c.sharpness, 1 + c.sharpness, g).view(-1, 1, 1, 1).to(x)
            x = (smooth + factor * (x - smooth)).clamp(0, 1)
        if c.jpeg:
            x = self._jpeg(x, g)
        if c.erase:
            x = self._erase(x, g)
        return x, masks

    def _erase(self, x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        """Random erasing: black out one rectangle (2-20% of the area, aspect 1:3 to 3:1) in a random subset,
        so that no single region of the image can carry the decision alone."""
        n, (h, w) = x.shape[0], x.shape[-2:]
        pick = torch.rand(n, generator=g) < self.cfg.erase
        area = _uniform(n, *ERASE_AREA, g)
        aspect = torch.exp(_uniform(n, -math.log(3), math.log(3), g))
        eh, ew = (area * aspect).sqrt().clamp(max=1), (area / aspect).sqrt().clamp(max=1)
        top, left = torch.rand(n, generator=g) * (1 - eh), torch.rand(n, generator=g) * (1 - ew)
        ys, xs = (torch.arange(h) + 0.5) / h, (torch.arange(w) + 0.5) / w
        rows = (ys >= top[:, None]) & (ys < (top + eh)[:, None])
        cols = (xs >= left[:, None]) & (xs < (left + ew)[:, None])
        mask = (rows[:, :, None] & cols[:, None, :] & pick[:, None, None]).unsqueeze(1).to(x.device)
        return x.masked_fill(mask, 0.0)

    def _jpeg(self, x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        """Re-encode a random subset as JPEG (blocking, ringing, lost detail: what re-saved scans look like)."""
        n = x.shape[0]
        pick = torch.rand(n, generator=g) < self.cfg.jpeg
        quality = torch.randint(JPEG_QUALITY[0], JPEG_QUALITY[1] + 1, (n,), generator=g)
        idx = pick.nonzero().flatten().tolist()
        if not idx:
            return x
        hwc = (x[idx].detach().float().cpu() * 255).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()
        out = x.clone()
        for arr, i in zip(hwc, idx, strict=True):
            buf = io.BytesIO()
            Image.fromarray(arr[..., 0] if arr.shape[-1] == 1 else arr).save(buf, "JPEG", quality=int(quality[i]))
            back = np.array(Image.open(buf)).reshape(arr.shape)
            out[i] = (torch.from_numpy(back).permute(2, 0, 1).float() / 255).to(x)
        return out

    def noise(self, x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        """Gaussian noise, added after normalisation so its scale is independent of the data."""
        if not self.cfg.noise:
            return x
        return x + self.cfg.noise * torch.randn(x.shape, generator=g).to(x)

    def _affine(
        self, x: torch.Tensor, masks: torch.Tensor | None, g: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        c, n = self.cfg, x.shape[0]
        angle = _uniform(n, -c.rotate, c.rotate, g) * (math.pi / 180)
        # The sampling grid is scaled by s: s < 1 samples a smaller region, i.e. zooms in.
        scale = _uniform(n, c.scale_min, c.scale_max, g)
        tx, ty = (_uniform(n, -2 * c.translate, 2 * c.translate, g) for _ in range(2))
        fx = torch.where(torch.rand(n, generator=g) < 0.5, -1.0, 1.0) if c.hflip else torch.ones(n)
        fy = torch.where(torch.rand(n, generator=g) < 0.5, -1.0, 1.0) if c.vflip else torch.ones(n)
        cos, sin = torch.cos(angle) * scale, torch.sin(angle) * scale
        theta = torch.stack(
            [torch.stack([cos * fx, -sin * fy, tx], 1), torch.stack([sin * fx, cos * fy, ty], 1)], 1
        ).to(x)
        grid = F.affine_grid(theta, list(x.shape), align_corners=False)
        warp = lambda t: F.grid_sample(t, grid, mode="bilinear", padding_mode="zeros", align_corners=False)  # noqa: E731
        return warp(x), None if masks is None else warp(masks.to(x.dtype))


def mixup_draw(alpha: float, n: int, g: torch.Generator) -> tuple[float, torch.Tensor | None]:
    """Mixup's weight (from Beta(alpha, alpha), drawn through the epoch's generator) and partner indices."""
    if alpha <= 0 or n < 2:
        return 1.0, None
    seed = int(torch.randint(2**31 - 1, (1,), generator=g))
    return float(np.random.default_rng(seed).beta(alpha, alpha)), torch.randperm(n, generator=g)
