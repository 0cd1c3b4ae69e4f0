"""Unit tests of cnnlab.training.augment: the Augmenter on float batches and mixup's draws."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from cnnlab.config import AugmentConfig, Config
from cnnlab.training.augment import COPY_AUGMENT, Augmenter, mixup_draw

ALL_ON = dict(
    hflip=True,
    vflip=True,
    rotate=15.0,
    translate=0.1,
    scale_min=0.8,
    scale_max=1.1,
    brightness=0.2,
    contrast=0.2,
    gamma=0.3,
    blur=0.5,
    sharpness=0.5,
    jpeg=0.5,
    erase=0.5,
)


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def aug(**kw) -> Augmenter:
    return Augmenter(Config().update(kw).augment)


def close(a: torch.Tensor, b: torch.Tensor, atol: float = 1e-5) -> None:
    """|a - b| <= atol everywhere (torch.testing.assert_close costs a second on first use)."""
    assert a.shape == b.shape, (a.shape, b.shape)
    err = float((a.detach().float() - b.detach().float()).abs().max()) if a.numel() else 0.0
    assert err <= atol, f"max |a - b| = {err} > {atol}"


def batch(n: int = 8, c: int = 3, h: int = 12, w: int = 10, seed: int = 0) -> torch.Tensor:
    """Random float images in [0, 1] that are neither left-right nor up-down symmetric."""
    return torch.rand(n, c, h, w, generator=gen(100 + seed))


def test_all_off_is_the_identity_and_draws_nothing():
    x = batch()
    a = Augmenter(AugmentConfig())
    assert not a.active and not a.geometric
    g = gen(1)
    state = g.get_state()
    assert torch.equal(a.pixels(x.clone(), g), x)
    assert a.noise(x, g) is x
    assert torch.equal(g.get_state(), state)  # the epoch's stream is left as it was


def test_every_field_switches_the_augmenter_on():
    off = AugmentConfig()
    for name, value in ALL_ON.items():
        assert Augmenter(dataclasses.replace(off, **{name: value})).active, name
    assert Augmenter(dataclasses.replace(off, noise=0.1)).active
    assert not Augmenter(dataclasses.replace(off, mixup=0.4)).active  # mixup is the loop's, not the augmenter's
    assert [Augmenter(dataclasses.replace(off, **{k: v})).geometric for k, v in ALL_ON.items()] == [
        False,
        False,
        True,
        True,
        True,
        True,
        False,
        False,
        False,
        False,
        False,
        False,
        False,
    ]


def test_same_seed_same_output_other_seed_differs():
    a, x = aug(**ALL_ON), batch(16)
    first = a.pixels(x.clone(), gen(7))
    assert torch.equal(first, a.pixels(x.clone(), gen(7)))
    assert not torch.allclose(first, a.pixels(x.clone(), gen(8)))


@pytest.mark.parametrize("channels", [1, 3])
def test_output_keeps_dtype_shape_and_range(channels):
    x = batch(12, c=channels)
    out = aug(**ALL_ON).pixels(x.clone(), gen(3))
    assert out.dtype == torch.float32 and out.shape == x.shape
    assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0
    assert not torch.allclose(out, x)


def test_input_batch_is_not_modified():
    x = batch()
    before = x.clone()
    aug(**ALL_ON).pixels(x, gen(0))
    assert torch.equal(x, before)


@pytest.mark.parametrize(("field", "dim"), [("hflip", -1), ("vflip", -2)])
def test_flips_flip_about_half_the_images(field, dim):
    x = batch(64)
    out = aug(**{field: True}).pixels(x.clone(), gen(4))
    flipped = [bool(torch.equal(o, i.flip(dim))) for o, i in zip(out, x, strict=True)]
    kept = [bool(torch.equal(o, i)) for o, i in zip(out, x, strict=True)]
    assert all(f != k for f, k in zip(flipped, kept, strict=True))  # each image exactly one of the two
    assert 16 <= sum(flipped) <= 48


def test_flip_inside_the_affine_warp():
    """With a geometric transform the flip is folded into the warp; a negligible rotation keeps it a pure flip."""
    x = batch(32)
    out = aug(hflip=True, rotate=1e-6).pixels(x.clone(), gen(5))
    flipped = 0
    for o, i in zip(out, x, strict=True):
        if torch.allclose(o, i.flip(-1), atol=1e-4):
            flipped += 1
        else:
            close(o, i, atol=1e-4)
    assert 6 <= flipped <= 26


def test_brightness_scales_each_image_within_its_range():
    x = torch.full((40, 1, 4, 4), 0.5)
    out = aug(brightness=0.2).pixels(x, gen(0))
    per_image = out.flatten(1)
    assert torch.equal(per_image.min(1).values, per_image.max(1).values)  # one factor per image
    v = per_image[:, 0]
    assert float(v.min()) >= 0.4 - 1e-6 and float(v.max()) <= 0.6 + 1e-6
    assert float(v.max() - v.min()) > 0.1


def test_contrast_keeps_each_image_mean():
    x = 0.4 + 0.2 * batch(10, c=1)
    out = aug(contrast=0.5).pixels(x.clone(), gen(2))
    close(out.mean(dim=(1, 2, 3)), x.mean(dim=(1, 2, 3)))
    ratio = (out - out.mean(dim=(1, 2, 3), keepdim=True)).std(dim=(1, 2, 3)) / x.std(dim=(1, 2, 3))
    assert float(ratio.min()) >= 0.5 - 1e-4 and float(ratio.max()) <= 1.5 + 1e-4
    assert float(ratio.max() - ratio.min()) > 0.2


def test_gamma_is_a_power_within_its_range():
    x = torch.full((40, 1, 3, 3), 0.25)
    out = aug(gamma=1.0).pixels(x, gen(0))[:, 0, 0, 0]  # exponents in [1/2, 2]: 0.25 -> [0.0625, 0.5]
    assert float(out.min()) >= 0.0625 - 1e-6 and float(out.max()) <= 0.5 + 1e-6
    assert float(out.min()) < 0.2 and float(out.max()) > 0.3


def test_blur_is_a_binomial_3x3_kernel():
    x = torch.zeros(2, 1, 5, 5)
    x[:, 0, 2, 2] = 1.0
    out = aug(blur=1.0).pixels(x, gen(0))
    kernel = torch.tensor([[1.0, 2, 1], [2, 4, 2], [1, 2, 1]]) / 16
    expected = torch.zeros(5, 5)
    expected[1:4, 1:4] = kernel
    for o in out:
        close(o[0], expected, atol=1e-6)
    flat = torch.full((1, 1, 4, 4), 0.3)
    close(aug(blur=1.0).pixels(flat, gen(0)), flat, atol=1e-6)  # replicated edges: no dark border


def test_sharpness_factor_zero_is_the_blur_and_one_is_unchanged():
    x = batch(4, c=1)
    blurred = aug(blur=1.0).pixels(x.clone(), gen(0))
    # sharpness s draws a factor in [1 - s, 1 + s]: with s tiny the factor is ~1
    close(aug(sharpness=1e-7).pixels(x.clone(), gen(0)), x)
    out = aug(sharpness=1.0).pixels(x.clone(), gen(0))
    # each image is smooth + f (x - smooth), f in [0, 2], clamped to [0, 1]
    for o, i, b in zip(out, x, blurred, strict=True):
        diff = (i - b).flatten()
        f = float(((o - b).flatten() @ diff) / (diff @ diff))
        assert -0.05 <= f <= 2.05


def test_erase_blacks_out_one_rectangle():
    x = torch.ones(16, 1, 20, 20)
    out = aug(erase=1.0).pixels(x, gen(3))
    for o in out[:, 0]:
        zero = o == 0
        rows, cols = zero.any(1).nonzero().flatten(), zero.any(0).nonzero().flatten()
        assert len(rows) and len(cols)
        box = zero[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1]
        assert bool(box.all()) and int(zero.sum()) == box.numel()  # one solid rectangle
        assert 2 <= int(zero.sum()) <= 0.2 * 400 + 2 * 20 + 1  # 2-20% of the area (+- edge pixels)
        assert bool((o[~zero] == 1).all())
    some = aug(erase=0.5).pixels(torch.ones(40, 1, 20, 20), gen(3))
    erased = int(((some == 0).flatten(1).any(1)).sum())
    assert 8 <= erased <= 32


@pytest.mark.parametrize("channels", [1, 3])
def test_jpeg_reencodes_picked_images(channels):
    x = torch.rand(6, channels, 16, 16, generator=gen(1)) * 0.5 + 0.25
    x = (x * 255).round() / 255
    out = aug(jpeg=1.0).pixels(x.clone(), gen(2))
    assert out.shape == x.shape and out.dtype == x.dtype
    assert not torch.equal(out, x)
    assert float((out - x).abs().mean()) < 0.15  # close to the image, not noise
    close(out * 255, (out * 255).round(), atol=1e-3)  # 8-bit levels
    assert torch.equal(aug(jpeg=1e-9).pixels(x.clone(), gen(2)), x)  # probability ~0: nothing re-encoded


def test_translate_moves_by_at_most_its_fraction():
    x = torch.zeros(20, 1, 16, 16)
    x[:, :, 6:10, 6:10] = 1.0
    out = aug(translate=0.25).pixels(x, gen(0))
    grid = torch.arange(16.0)

    def centre(im):
        m = im[0]
        return float((m.sum(1) * grid).sum() / m.sum()), float((m.sum(0) * grid).sum() / m.sum())

    shifts = [max(abs(a - 7.5), abs(b - 7.5)) for a, b in map(centre, out)]
    assert max(shifts) <= 0.25 * 16 + 0.05
    assert max(shifts) > 1.0
    close(out.sum(dim=(1, 2, 3)), x.sum(dim=(1, 2, 3)), atol=0.3)


def test_scale_zooms_in_up_to_one_over_scale_min():
    x = torch.zeros(20, 1, 16, 16)
    x[:, :, 6:10, 6:10] = 1.0
    out = aug(scale_min=0.5).pixels(x, gen(0))  # zoom factor 1 to 2: area 1 to 4 times
    ratio = out.sum(dim=(1, 2, 3)) / 16
    assert float(ratio.min()) >= 0.95 and float(ratio.max()) <= 4.1
    assert float(ratio.max()) > 2.0


def test_noise_has_the_configured_std():
    x = torch.zeros(4, 3, 32, 32)
    a = aug(noise=0.1)
    out = a.noise(x, gen(0))
    assert abs(float(out.std()) - 0.1) < 0.005 and abs(float(out.mean())) < 0.005
    assert torch.equal(out, a.noise(x, gen(0)))
    assert torch.equal(a.pixels(x.clone(), gen(0)), x)  # noise is added after normalisation, not here


def test_copy_augment_is_light():
    assert Augmenter(COPY_AUGMENT).active and Augmenter(COPY_AUGMENT).geometric
    assert COPY_AUGMENT.noise == 0 and COPY_AUGMENT.mixup == 0 and COPY_AUGMENT.jpeg == 0


# -------------------------------------------------------------------------------------------- mixup


def test_mixup_off_or_too_small_draws_nothing():
    g = gen(0)
    state = g.get_state()
    assert mixup_draw(0.0, 8, g) == (1.0, None)
    assert mixup_draw(0.4, 1, g) == (1.0, None)
    assert torch.equal(g.get_state(), state)


def test_mixup_weight_and_partners():
    lams = []
    for seed in range(200):
        lam, partner = mixup_draw(0.4, 10, gen(seed))
        assert 0.0 <= lam <= 1.0
        assert sorted(partner.tolist()) == list(range(10))
        lams.append(lam)
    lams = torch.tensor(lams)
    # Beta(0.4, 0.4): symmetric about 1/2, mass near the ends (P(lam < 0.1) ~ 0.27 per side)
    assert abs(float(lams.mean()) - 0.5) < 0.07
    assert float((lams < 0.1).float().mean()) > 0.15 and float((lams > 0.9).float().mean()) > 0.15
    a, b = mixup_draw(0.4, 10, gen(3)), mixup_draw(0.4, 10, gen(3))
    assert a[0] == b[0] and torch.equal(a[1], b[1])
    assert mixup_draw(0.4, 10, gen(4))[0] != a[0]
    wide = torch.tensor([mixup_draw(50.0, 4, gen(s))[0] for s in range(100)])  # Beta(50, 50): near 1/2
    assert float((wide - 0.5).abs().max()) < 0.2
