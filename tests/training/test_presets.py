"""Unit tests of cnnlab.training.presets: the eval and train input presets and histogram equalisation."""

from __future__ import annotations

import pytest
import torch

from cnnlab.config import AugmentConfig, Config
from cnnlab.training.presets import EvalInput, TrainInput, equalize

CPU = torch.device("cpu")
MEAN, STD = torch.tensor([0.5, 0.4, 0.3]), torch.tensor([0.25, 0.2, 0.1])


def close(a: torch.Tensor, b: torch.Tensor, atol: float = 1e-5) -> None:
    assert a.shape == b.shape, (a.shape, b.shape)
    err = float((a.detach().float() - b.detach().float()).abs().max()) if a.numel() else 0.0
    assert err <= atol, f"max |a - b| = {err} > {atol}"


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def uint8_batch(n: int = 4, c: int = 3, h: int = 6, w: int = 5, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 256, (n, c, h, w), generator=gen(seed), dtype=torch.uint8)


def augment(**kw) -> AugmentConfig:
    return Config().update(kw).augment


# ------------------------------------------------------------------------------------------ equalize


def test_equalize_of_a_ramp_is_its_rank():
    ramp = (torch.arange(256.0) / 255).view(1, 1, 16, 16)
    out = equalize(ramp)
    expected = torch.arange(256.0) / 255  # level k: k of the 255 nonzero pixels are at or below it
    close(out.flatten(), expected, atol=1e-6)
    assert float(out.flatten()[0]) == 0.0  # zeros stay 0


def test_equalize_flattens_a_skewed_histogram():
    x = torch.rand(1, 1, 64, 64, generator=gen(1)) ** 4  # most pixels dark
    out = equalize(x).flatten()
    nonzero = out[(x.flatten() * 255).round() > 0]
    # the output's distribution over the nonzero pixels is ~uniform on (0, 1]
    for t in (0.1, 0.25, 0.5, 0.75, 0.9):
        assert abs(float((nonzero <= t).float().mean()) - t) < 0.05, t
    assert float(out.max()) == pytest.approx(1.0)
    assert abs(float((x.flatten() <= 0.5).float().mean()) - 0.5) > 0.2  # the input was far from flat


def test_equalize_ignores_monotone_intensity_maps_and_works_per_image():
    levels = torch.tensor([0, 10, 20, 40, 80, 120, 160, 200])
    idx = torch.randint(0, len(levels), (2, 3, 8, 8), generator=gen(2))
    x = levels[idx].float() / 255
    mapped = torch.tensor([0, 3, 90, 100, 101, 180, 250, 255])[idx].float() / 255  # same order, other levels
    close(equalize(x), equalize(mapped), atol=1e-6)
    both = torch.cat([x[:1], x[1:] * 0.5])  # image 2 darker: its own histogram, same result
    close(equalize(both)[1], equalize(x)[1], atol=1e-6)


# ----------------------------------------------------------------------------------------- EvalInput


def test_eval_input_normalises_with_the_dataset_mean_and_std():
    x = torch.tensor([0, 51, 255], dtype=torch.uint8).view(1, 1, 1, 3).expand(1, 3, 1, 3).contiguous()
    out = EvalInput(MEAN, STD, "dataset", CPU, channels_last=False)(x)
    expected = torch.tensor(
        [
            [-2.0, -1.2, 2.0],  # (v/255 - 0.5) / 0.25
            [-2.0, -1.0, 3.0],  # (v/255 - 0.4) / 0.2
            [-3.0, -1.0, 7.0],
        ]
    )  # (v/255 - 0.3) / 0.1
    assert out.dtype == torch.float32 and out.shape == (1, 3, 1, 3)
    close(out[0, :, 0, :], expected)


def test_eval_input_layout():
    x = uint8_batch()
    nchw = EvalInput(MEAN, STD, "dataset", CPU, channels_last=False)(x)
    nhwc = EvalInput(MEAN, STD, "dataset", CPU, channels_last=True)(x)
    assert nchw.is_contiguous() and not nchw.is_contiguous(memory_format=torch.channels_last)
    assert nhwc.is_contiguous(memory_format=torch.channels_last) and not nhwc.is_contiguous()
    assert torch.equal(nchw, nhwc)
    assert torch.equal(x, uint8_batch())  # the uint8 batch is left alone


@pytest.mark.parametrize("policy", ["image", "equalize"])
def test_per_image_policies_give_mean_zero_std_one(policy):
    x = uint8_batch(5)
    x[1] //= 4  # a dark image
    out = EvalInput(MEAN, STD, policy, CPU, channels_last=False)(x)
    close(out.mean(dim=(1, 2, 3)), torch.zeros(5), atol=1e-5)
    close(out.std(dim=(1, 2, 3)), torch.ones(5), atol=1e-4)


def test_image_policy_is_blind_to_brightness_and_equalize_to_gamma():
    x = torch.randint(20, 120, (3, 3, 6, 6), generator=gen(4), dtype=torch.uint8)
    image = EvalInput(MEAN, STD, "image", CPU, channels_last=False)
    eq = EvalInput(MEAN, STD, "equalize", CPU, channels_last=False)
    gray = EvalInput(MEAN[:1], STD[:1], "image", CPU, channels_last=False)
    close(gray(x[:, :1]), gray(x[:, :1] * 2), atol=1e-4)
    levels = torch.arange(256.0)
    # a gamma-like curve, strictly increasing on 20..119 (steps of > 1 level, so no two levels merge)
    gamma = (((levels - 19).clamp(0, 100) / 100) ** 0.5 * 255).round().to(torch.uint8)
    assert len(set(gamma[20:120].tolist())) == 100
    close(eq(x), eq(gamma[x.long()]), atol=1e-5)
    assert float((image(x) - image(gamma[x.long()])).abs().max()) > 0.05  # image policy is not gamma-blind


# ---------------------------------------------------------------------------------------- TrainInput


def train_input(normalize: str = "dataset", channels_last: bool = False, **aug) -> TrainInput:
    return TrainInput(MEAN, STD, normalize, CPU, channels_last, augment(**aug))


def test_train_input_without_augmentation_is_the_eval_input():
    x = uint8_batch(6)
    none = torch.zeros(6, dtype=torch.bool)
    for policy in ("dataset", "image", "equalize"):
        ev = EvalInput(MEAN, STD, policy, CPU, channels_last=True)
        g = gen(0)
        state = g.get_state()
        out = train_input(policy, channels_last=True)(x, g, none)
        assert torch.equal(out, ev(x)), policy
        assert out.is_contiguous(memory_format=torch.channels_last)
        assert torch.equal(g.get_state(), state)  # nothing drawn


def test_train_input_augments_from_the_generator():
    x = uint8_batch(32)
    none = torch.zeros(32, dtype=torch.bool)
    ti = train_input(hflip=True)
    ev = EvalInput(MEAN, STD, "dataset", CPU, channels_last=False)(x)
    ev_flipped = EvalInput(MEAN, STD, "dataset", CPU, channels_last=False)(x.flip(-1))
    out = ti(x, gen(1), none)
    assert torch.equal(out, ti(x, gen(1), none))
    assert not torch.equal(out, ti(x, gen(2), none))
    flipped = 0
    for o, e, f in zip(out, ev, ev_flipped, strict=True):
        is_flipped = bool((o - f).abs().max() < 1e-4)
        assert is_flipped != bool((o - e).abs().max() < 1e-4)  # each image the original or its mirror
        flipped += is_flipped
    assert 6 <= flipped <= 26


def test_train_input_augments_only_the_oversampling_copies():
    x = uint8_batch(8, seed=5)
    copies = torch.tensor([False, True] * 4)
    out = train_input()(x, gen(3), copies)
    ev = EvalInput(MEAN, STD, "dataset", CPU, channels_last=False)(x)
    close(out[~copies], ev[~copies], atol=1e-4)  # originals: only normalised
    for o, e in zip(out[copies], ev[copies], strict=True):
        assert float((o - e).abs().max()) > 0.1  # copies: the light augmentation
    # with a configured augmentation, copies get nothing extra: all images draw from the same config
    full = train_input(brightness=0.3)(x, gen(3), copies)
    assert all(float((o - e).abs().max()) > 1e-3 for o, e in zip(full, ev, strict=True))


def test_train_input_adds_noise_after_normalisation():
    x = torch.full((4, 3, 16, 16), 128, dtype=torch.uint8)
    none = torch.zeros(4, dtype=torch.bool)
    out = train_input(noise=0.5)(x, gen(0), none)
    ev = EvalInput(MEAN, STD, "dataset", CPU, channels_last=False)(x)
    diff = out - ev
    assert abs(float(diff.std()) - 0.5) < 0.03  # in units of the normalised input, whatever the std
    assert abs(float(diff.mean())) < 0.03
