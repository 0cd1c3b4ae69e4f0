"""Per-sample augmentation on batched tensors (no decoding; only JPEG re-encoding goes through Pillow, per image),
its random draws (`Draws`), and mixup's draws.

In training every image's draws come from its own generator, seeded by (the epoch's seed, the image's position
in the epoch's order) (`Draws.per_image`): an image is augmented the same whatever batch or process it lands in,
so one process with batch B and N data-parallel ranks with B/N each see the same inputs, and a run is
reproducible and resumable. Tests and one-off calls may draw a batch's values from one `torch.Generator`.
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
from cnnlab.training.batching import to_device

JPEG_QUALITY = (30, 95)  # re-encoding quality range, inclusive
ERASE_AREA = (0.02, 0.2)  # random erasing: fraction of the image blacked out

# Copies made by random oversampling get at least this, so that they are not identical repeats.
COPY_AUGMENT = AugmentConfig(hflip=True, rotate=10.0, translate=0.05, scale_min=0.9, brightness=0.1)


def _per_image(values: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """One value an image (B), shaped to multiply the batch `x` (B x 1 x 1 x 1), on its device and in its dtype."""
    return to_device(values.view(-1, 1, 1, 1), x.device, x.dtype)


def _smooth(x: torch.Tensor) -> torch.Tensor:
    """3x3 binomial blur of each channel, edges replicated."""
    k = torch.tensor([1.0, 2.0, 1.0], device=x.device, dtype=x.dtype)
    k = (k[:, None] * k[None, :] / 16).expand(x.shape[1], 1, 3, 3)
    return F.conv2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), k, groups=x.shape[1])


# One uniform in [0, 1) per image for each of these, whatever the config turns on: switching one transform on
# or off leaves the others' draws as they were.
SLOTS = (
    "hflip", "vflip", "angle", "scale", "tx", "ty", "brightness", "contrast", "gamma", "blur", "sharpness",
    "jpeg", "jpeg_quality", "erase", "erase_area", "erase_aspect", "erase_top", "erase_left",
)  # fmt: skip
_SLOT = {name: i for i, name in enumerate(SLOTS)}


class Draws:
    """A batch's random draws: one row of uniforms a image (a column per `SLOTS` name) and Gaussian noise.

    `per_image(seed, positions)`: each image's own numpy generator, seeded by (seed, its position): the training
    loop's. `from_generator(g, n)`: the whole batch from one torch generator, drawn on first use."""

    def __init__(self, n: int, uniforms, normal):
        self.n, self._uniforms, self._normal, self._u = n, uniforms, normal, None

    @classmethod
    def per_image(cls, seed: int, positions: torch.Tensor) -> Draws:
        """Each image's own numpy generator, seeded by (seed, its position), made when a draw is first asked for:
        the uniforms first, then (only if asked) the noise, so a generator's stream is always in that order."""
        positions, rngs = positions.tolist(), []

        def streams() -> list[np.random.Generator]:
            if not rngs:
                rngs.extend(np.random.default_rng([seed, 0, p]) for p in positions)
            return rngs

        def uniforms() -> torch.Tensor:
            return torch.from_numpy(np.stack([r.random(len(SLOTS), dtype=np.float32) for r in streams()]))

        def normal(shape) -> torch.Tensor:
            return torch.from_numpy(np.stack([r.standard_normal(shape, dtype=np.float32) for r in streams()]))

        return cls(len(positions), uniforms, normal)

    @classmethod
    def from_generator(cls, g: torch.Generator, n: int) -> Draws:
        return cls(n, lambda: torch.rand(n, len(SLOTS), generator=g), lambda shape: torch.randn(n, *shape, generator=g))

    def u(self, name: str) -> torch.Tensor:
        """The batch's uniforms in [0, 1) for slot `name` (n,)."""
        if self._u is None:
            self._u = self._uniforms().reshape(self.n, len(SLOTS))
        return self._u[:, _SLOT[name]]

    def uniform(self, name: str, lo: float, hi: float) -> torch.Tensor:
        return lo + (hi - lo) * self.u(name)

    def coin(self, name: str, p: float) -> torch.Tensor:
        return self.u(name) < p

    def normal(self, shape) -> torch.Tensor:
        """Standard normal noise, n x `shape` (drawn after the uniforms)."""
        self.u(SLOTS[0])
        return self._normal(tuple(shape))


def as_draws(draws: Draws | torch.Generator, n: int) -> Draws:
    return draws if isinstance(draws, Draws) else Draws.from_generator(draws, n)


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

    def pixels(self, x: torch.Tensor, draws: Draws | torch.Generator) -> torch.Tensor:
        """x: float B x C x H x W in [0, 1]. Returns the augmented batch, still in [0, 1]."""
        return self.pixels_and_masks(x, None, draws)[0]

    def pixels_and_masks(
        self, x: torch.Tensor, masks: torch.Tensor | None, draws: Draws | torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """`pixels`, with box masks (B x 1 x H x W float) moved by the same geometric transform (flips, rotation,
        shift, zoom) and untouched by the photometric ones; the random draws are the same with or without masks."""
        c, d = self.cfg, as_draws(draws, x.shape[0])
        if self.geometric:
            x, masks = self._affine(x, masks, d)
        else:
            for flip, dim in ((c.hflip, -1), (c.vflip, -2)):
                if flip:
                    pick = to_device(d.coin("hflip" if dim == -1 else "vflip", 0.5).view(-1, 1, 1, 1), x.device)
                    x = torch.where(pick, x.flip(dim), x)
                    masks = None if masks is None else torch.where(pick, masks.flip(dim), masks)
        if c.brightness:
            x = x * _per_image(d.uniform("brightness", 1 - c.brightness, 1 + c.brightness), x)
        if c.contrast:
            mean = x.mean(dim=(1, 2, 3), keepdim=True)
            x = (x - mean) * _per_image(d.uniform("contrast", 1 - c.contrast, 1 + c.contrast), x) + mean
        if c.brightness or c.contrast:
            x = x.clamp(0, 1)
        if c.gamma:
            log_g = math.log1p(c.gamma)
            x = x.clamp_min(1e-6) ** _per_image(torch.exp(d.uniform("gamma", -log_g, log_g)), x)
        if c.blur:
            pick = to_device(d.coin("blur", c.blur).view(-1, 1, 1, 1), x.device)
            x = torch.where(pick, _smooth(x), x)
        if c.sharpness:
            # factor 0 = smoothed, 1 = unchanged, 2 = sharpened: sources differ in sharpness and noise, and
            # a model should not read the class from how crisp a scan is
            smooth = _smooth(x)
            factor = _per_image(d.uniform("sharpness", 1 - c.sharpness, 1 + c.sharpness), x)
            x = (smooth + factor * (x - smooth)).clamp(0, 1)
        if c.jpeg:
            x = self._jpeg(x, d)
        if c.erase:
            x = self._erase(x, d)
        return x, masks

    def _erase(self, x: torch.Tensor, d: Draws) -> torch.Tensor:
        """Random erasing: black out one rectangle (2-20% of the area, aspect 1:3 to 3:1) in a random subset,
        so that no single region of the image can carry the decision alone."""
        h, w = x.shape[-2:]
        pick = d.coin("erase", self.cfg.erase)
        area = d.uniform("erase_area", *ERASE_AREA)
        aspect = torch.exp(d.uniform("erase_aspect", -math.log(3), math.log(3)))
        eh, ew = (area * aspect).sqrt().clamp(max=1), (area / aspect).sqrt().clamp(max=1)
        top, left = d.u("erase_top") * (1 - eh), d.u("erase_left") * (1 - ew)
        ys, xs = (torch.arange(h) + 0.5) / h, (torch.arange(w) + 0.5) / w
        rows = (ys >= top[:, None]) & (ys < (top + eh)[:, None])
        cols = (xs >= left[:, None]) & (xs < (left + ew)[:, None])
        mask = to_device((rows[:, :, None] & cols[:, None, :] & pick[:, None, None]).unsqueeze(1), x.device)
        return x.masked_fill(mask, 0.0)

    def _jpeg(self, x: torch.Tensor, d: Draws) -> torch.Tensor:
        """Re-encode a random subset as JPEG (blocking, ringing, lost detail: what re-saved scans look like)."""
        pick = d.coin("jpeg", self.cfg.jpeg)
        levels = JPEG_QUALITY[1] - JPEG_QUALITY[0] + 1
        quality = JPEG_QUALITY[0] + (d.u("jpeg_quality") * levels).long().clamp(max=levels - 1)
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

    def noise(self, x: torch.Tensor, draws: Draws | torch.Generator) -> torch.Tensor:
        """Gaussian noise, added after normalisation so its scale is independent of the data."""
        if not self.cfg.noise:
            return x
        return x + self.cfg.noise * to_device(as_draws(draws, x.shape[0]).normal(x.shape[1:]), x.device, x.dtype)

    def _affine(
        self, x: torch.Tensor, masks: torch.Tensor | None, d: Draws
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        c, n = self.cfg, x.shape[0]
        angle = d.uniform("angle", -c.rotate, c.rotate) * (math.pi / 180)
        # The sampling grid is scaled by s: s < 1 samples a smaller region, i.e. zooms in.
        scale = d.uniform("scale", c.scale_min, c.scale_max)
        tx, ty = (d.uniform(k, -2 * c.translate, 2 * c.translate) for k in ("tx", "ty"))
        fx = torch.where(d.coin("hflip", 0.5), -1.0, 1.0) if c.hflip else torch.ones(n)
        fy = torch.where(d.coin("vflip", 0.5), -1.0, 1.0) if c.vflip else torch.ones(n)
        cos, sin = torch.cos(angle) * scale, torch.sin(angle) * scale
        theta = torch.stack([torch.stack([cos * fx, -sin * fy, tx], 1), torch.stack([sin * fx, cos * fy, ty], 1)], 1)
        theta = to_device(theta, x.device, x.dtype)
        grid = F.affine_grid(theta, list(x.shape), align_corners=False)
        warp = lambda t: F.grid_sample(t, grid, mode="bilinear", padding_mode="zeros", align_corners=False)  # noqa: E731
        return warp(x), None if masks is None else warp(masks.to(x.dtype))


def mixup_draw(alpha: float, n: int, g: torch.Generator) -> tuple[float, torch.Tensor | None]:
    """Mixup's weight (from Beta(alpha, alpha), drawn through the epoch's generator) and partner indices."""
    if alpha <= 0 or n < 2:
        return 1.0, None
    seed = int(torch.randint(2**31 - 1, (1,), generator=g))
    return float(np.random.default_rng(seed).beta(alpha, alpha)), torch.randperm(n, generator=g)
