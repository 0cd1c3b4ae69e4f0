"""Unit tests of cnnlab.training.engine: device, precision, memory layout, input presets and flip TTA."""

from __future__ import annotations

from contextlib import nullcontext

import pytest
import torch
from torch import nn

from cnnlab.config import Config
from cnnlab.training import engine as engine_mod
from cnnlab.training.engine import make_engine, pick_device, pick_precision
from cnnlab.training.presets import EvalInput, TrainInput

MEAN, STD = torch.tensor([0.5, 0.5, 0.5]), torch.tensor([0.25, 0.25, 0.25])


def close(a: torch.Tensor, b: torch.Tensor, atol: float = 1e-5) -> None:
    assert a.shape == b.shape, (a.shape, b.shape)
    err = float((a.detach().float() - b.detach().float()).abs().max()) if a.numel() else 0.0
    assert err <= atol, f"max |a - b| = {err} > {atol}"


def tiny_model(seed: int = 0, n_classes: int = 3) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, n_classes)
    ).eval()


def engine(seed: int = 0, **overrides):
    cfg = Config().update({"device": "cpu", "precision": "fp32", **overrides})
    return make_engine(cfg, tiny_model(seed), MEAN, STD)


def images(n: int = 4, h: int = 8, w: int = 7) -> torch.Tensor:
    return torch.randint(0, 256, (n, 3, h, w), generator=torch.Generator().manual_seed(9), dtype=torch.uint8)


# --------------------------------------------------------------------------------- device, precision


def test_fp32_on_cpu_means_no_autocast():
    eng = engine()
    assert eng.device == torch.device("cpu")
    assert eng.autocast_dtype is None
    assert isinstance(eng.autocast(), nullcontext)
    assert next(eng.model.parameters()).device.type == "cpu"
    assert eng.describe("fp32").startswith("cpu (")
    assert eng.describe("fp32").endswith(f"{torch.get_num_threads()} threads), fp32, channels_last")


def test_pick_device():
    assert pick_device("cpu") == torch.device("cpu")
    assert pick_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    assert pick_device("cuda:1") == torch.device("cuda", 1)  # checked elsewhere, only resolved here


def test_pick_precision_on_cpu(monkeypatch):
    cpu = torch.device("cpu")
    assert pick_precision("fp32", cpu) is None
    assert pick_precision("bf16", cpu) is torch.bfloat16
    assert pick_precision("fp16", cpu) is torch.float16
    monkeypatch.setattr(engine_mod, "cpu_has_bf16", lambda: False)
    assert pick_precision("auto", cpu) is None
    monkeypatch.setattr(engine_mod, "cpu_has_bf16", lambda: True)
    assert pick_precision("auto", cpu) is torch.bfloat16


def test_auto_precision_is_explained(monkeypatch):
    monkeypatch.setattr(engine_mod, "cpu_has_bf16", lambda: False)
    eng = engine(precision="auto", channels_last=False)
    assert eng.autocast_dtype is None
    assert eng.describe("auto").endswith(", fp32 (auto: no native bf16 on this CPU), NCHW")
    monkeypatch.setattr(engine_mod, "cpu_has_bf16", lambda: True)
    eng = engine(precision="auto")
    assert eng.autocast_dtype is torch.bfloat16
    assert eng.describe("auto").endswith(", bf16 autocast (auto: native bf16 on this CPU), channels_last")


@pytest.mark.parametrize("isa", ["AVX2", "avx512_core"])
def test_onednn_isa_cap_without_bf16_disables_it(monkeypatch, isa):
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", isa)
    assert engine_mod.cpu_has_bf16() is False


def test_bf16_autocast_on_cpu_still_returns_fp32_logits():
    eng = engine(precision="bf16")
    assert eng.autocast_dtype is torch.bfloat16
    out = eng.logits(eng.eval_input(images()))
    assert out.dtype == torch.float32 and out.shape == (4, 3)
    ref = engine(precision="fp32").logits(engine().eval_input(images()))
    close(out, ref, atol=0.05)  # bf16 keeps ~3 significant digits


# ------------------------------------------------------------------------------------------ layout


def test_channels_last_is_applied_to_model_and_inputs():
    eng = engine(channels_last=True)
    conv = eng.model[0].weight
    assert conv.is_contiguous(memory_format=torch.channels_last) and not conv.is_contiguous()
    assert eng.eval_input(images()).is_contiguous(memory_format=torch.channels_last)
    x = eng.train_input(images(), torch.Generator().manual_seed(0), torch.zeros(4, dtype=torch.bool))
    assert x.is_contiguous(memory_format=torch.channels_last)
    flat = engine(channels_last=False)
    assert flat.model[0].weight.is_contiguous()
    assert flat.eval_input(images()).is_contiguous()
    assert flat.describe("fp32").endswith(", NCHW")


def test_make_engine_builds_both_presets_from_the_config():
    eng = engine(normalize="image", hflip=True, tta=True)
    assert isinstance(eng.eval_input, EvalInput) and not isinstance(eng.eval_input, TrainInput)
    assert isinstance(eng.train_input, TrainInput)
    assert eng.eval_input.normalize == eng.train_input.normalize == "image"
    assert eng.train_input.augment.cfg.hflip and eng.train_input.augment.active
    assert eng.tta is True and engine().tta is False
    # the eval preset normalises with the given statistics: 0 -> (0 - 0.5) / 0.25
    x = torch.zeros(1, 3, 2, 2, dtype=torch.uint8)
    close(engine().eval_input(x), torch.full((1, 3, 2, 2), -2.0))


# ---------------------------------------------------------------------------------------------- logits


def test_logits_are_the_model_output():
    eng = engine()
    x = eng.eval_input(images(5))
    out = eng.logits(x)
    assert out.shape == (5, 3) and out.dtype == torch.float32
    with torch.no_grad():
        close(out, eng.model(x))
    assert not torch.allclose(out, eng.logits(x.flip(-1)), atol=1e-4)  # the tiny model is not mirror-symmetric


def test_tta_averages_the_probabilities_of_image_and_mirror():
    plain, tta = engine(seed=1), engine(seed=1, tta=True)
    x = plain.eval_input(images(6))
    with torch.no_grad():
        p, p_mirror = plain.logits(x).softmax(1), plain.logits(x.flip(-1)).softmax(1)
        out = tta.logits(x)
    assert out.shape == (6, 3)
    close(out.exp(), (p + p_mirror) / 2, atol=1e-6)  # log of the mean probability
    close(out.exp().sum(1), torch.ones(6), atol=1e-6)
    close(out, tta.logits(x.flip(-1)), atol=1e-5)  # an image and its mirror get the same prediction
    # a mirror-symmetric image: TTA gives its own log-probabilities
    sym = torch.cat([images(2, w=4), images(2, w=4).flip(-1)], -1)
    xs = plain.eval_input(sym)
    with torch.no_grad():
        close(tta.logits(xs), plain.logits(xs).log_softmax(1), atol=1e-5)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_engine_runs_presets_and_logits_on_the_gpu_with_the_cpu_draws():
    cfg = Config().update({"device": "cuda", "precision": "auto", "hflip": True, "noise": 0.1})
    eng = make_engine(cfg, tiny_model(), MEAN, STD)
    assert eng.device.type == "cuda" and next(eng.model.parameters()).is_cuda
    assert eng.autocast_dtype is (torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16)
    none = torch.zeros(4, dtype=torch.bool)
    x = eng.train_input(images(), torch.Generator().manual_seed(0), none)
    assert x.is_cuda and x.is_contiguous(memory_format=torch.channels_last)
    cpu = engine(hflip=True, noise=0.1)  # the same weights and the same (CPU generator) draws
    close(x.cpu(), cpu.train_input(images(), torch.Generator().manual_seed(0), none), atol=1e-4)
    out = eng.logits(eng.eval_input(images()))
    assert out.is_cuda and out.dtype == torch.float32 and out.shape == (4, 3)
    close(out.cpu(), cpu.logits(cpu.eval_input(images())), atol=0.05)
