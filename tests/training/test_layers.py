"""Unit tests of cnnlab.training.layers (Dropout with a cheaper CPU mask, Sequential running a convolution and its
max-pooling as one step) and of the engine's kept heap."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
import torch
from torch import nn

from cnnlab.training.layers import Dropout, Sequential, fusable

CL = torch.channels_last


def test_dropout_drops_its_share_and_keeps_the_expectation():
    torch.manual_seed(0)
    x = torch.ones(64, 32, 20, 20)
    y = Dropout(0.2).train()(x)
    dropped = round(0.2 * 65536)
    assert float((y == 0).float().mean()) == pytest.approx(dropped / 65536, abs=3e-3)
    kept = y[y != 0]
    assert torch.all(kept == torch.tensor(65536 / (65536 - dropped), dtype=torch.float32))
    assert float(y.mean()) == pytest.approx(1.0, abs=1e-2)


def test_dropout_is_seeded_by_torch_and_its_gradient_is_its_mask():
    x = torch.randn(8, 4, 6, 6).contiguous(memory_format=CL).requires_grad_()
    torch.manual_seed(3)
    y = Dropout(0.5).train()(x)
    torch.manual_seed(3)
    again = Dropout(0.5).train()(x)
    assert torch.equal(y, again)
    assert y.is_contiguous(memory_format=CL)  # the layout it was given
    y.backward(torch.ones_like(y))
    assert torch.equal(x.grad, torch.where(y != 0, 2.0, 0.0))
    torch.manual_seed(4)
    assert not torch.equal(Dropout(0.5).train()(x), y)


def test_dropout_edges_are_nn_dropout():
    x = torch.randn(5, 7)
    assert Dropout(0.3).eval()(x) is x  # evaluation: identity
    assert torch.equal(Dropout(0.0).train()(x), x)
    assert torch.equal(Dropout(1.0).train()(x), torch.zeros_like(x))
    strided = torch.randn(6, 10)[:, ::2]  # not contiguous
    torch.manual_seed(1)
    out = Dropout(0.5).train()(strided)
    assert torch.equal(out[out != 0], strided[out != 0] * 2)
    inplace = x.clone()
    assert Dropout(0.5, inplace=True).train()(inplace) is inplace
    assert isinstance(Dropout(0.2), nn.Dropout)  # what checks and model surgery look for


def test_the_assignment_network_uses_it():
    from cnnlab.config import Config
    from cnnlab.training.models import build

    model = build(Config().model, 3, 4, 32)
    assert sum(isinstance(m, Dropout) for m in model.modules()) == 3


def _twins(*layers: nn.Module) -> tuple[Sequential, nn.Sequential]:
    """cnnlab's Sequential and torch's over the same modules, in float64 (rounding then shows as 1e-15)."""
    fused = Sequential(*layers).double().train()
    return fused, nn.Sequential(*fused).train()


def _same_training_step(fused: nn.Module, plain: nn.Module, x: torch.Tensor) -> None:
    x = x.double().requires_grad_()
    a, b = fused(x), plain(x)
    assert a.shape == b.shape
    torch.testing.assert_close(a, b, rtol=0, atol=1e-12)
    up = torch.randn_like(a)
    ga = torch.autograd.grad(a, [x, *fused.parameters()], up)
    gb = torch.autograd.grad(b, [x, *plain.parameters()], up)
    for u, v in zip(ga, gb, strict=True):
        torch.testing.assert_close(u, v, rtol=0, atol=1e-11)


@pytest.mark.parametrize(
    "conv, pool, size",
    [
        (nn.Conv2d(3, 8, 4), nn.MaxPool2d(3), 29),  # the assignment's: 26 outputs, 8 pooled windows read 24 of them
        (nn.Conv2d(3, 8, 3, stride=2), nn.MaxPool2d(2, stride=3), 31),  # strides on both sides
        (nn.Conv2d(2, 6, (3, 5), dilation=(1, 2)), nn.MaxPool2d((2, 3), dilation=(2, 1)), (23, 30)),
        (nn.Conv2d(3, 8, 3, padding=1), nn.MaxPool2d(3), 17),  # padded: no crop
        (nn.Conv2d(3, 8, 3), nn.MaxPool2d(3, padding=1), 16),
        (nn.Conv2d(3, 8, 3), nn.MaxPool2d(3, ceil_mode=True), 17),
        (nn.Conv2d(4, 8, 3, groups=2, padding_mode="reflect", padding=1), nn.MaxPool2d(2), 15),
    ],
)
def test_a_convolution_and_its_pooling_as_one_step_are_the_plain_pair(conv, pool, size):
    torch.manual_seed(0)
    h, w = (size, size) if isinstance(size, int) else size
    fused, plain = _twins(conv, pool, nn.ReLU())
    assert fusable(conv, pool)
    _same_training_step(fused, plain, torch.randn(3, conv.in_channels, h, w))


def test_the_assignment_network_trains_as_its_plain_layers_would():
    from cnnlab.config import Config
    from cnnlab.training.models import build

    torch.manual_seed(0)
    model = build(Config().model, 3, 4, 64).double()
    assert isinstance(model, Sequential) and fusable(model[0], model[1]) and fusable(model[5], model[6])
    x = torch.randn(6, 3, 64, 64).contiguous(memory_format=CL)
    torch.manual_seed(1)  # the same Dropout masks on both sides
    a = model(x.double())
    torch.manual_seed(1)
    b = nn.Sequential(*model)(x.double())
    torch.testing.assert_close(a, b, rtol=0, atol=1e-12)
    assert model.state_dict().keys() == nn.Sequential(*model).state_dict().keys()  # checkpoints are unchanged


def test_what_is_observed_or_not_trained_on_the_cpu_takes_the_plain_order():
    conv, pool = nn.Conv2d(3, 4, 3), nn.MaxPool2d(2)
    fused = Sequential(conv, pool)
    x = torch.randn(2, 3, 9, 9)
    assert not fusable(nn.Conv2d(3, 4, 3, bias=False), pool)  # nothing to move
    assert not fusable(conv, nn.MaxPool2d(2, return_indices=True))
    assert not fusable(conv, nn.AvgPool2d(2))
    seen = []
    handle = conv.register_forward_hook(lambda m, i, o: seen.append(o.shape))
    assert not fusable(conv, pool)
    fused.train()(x)
    assert seen == [torch.Size([2, 4, 7, 7])]  # the hook saw the whole convolution, uncropped
    handle.remove()
    assert fusable(conv, pool)
    one = torch.randn(3, 9, 9)  # unbatched: C x H x W in, C x H x W out
    torch.testing.assert_close(fused.train()(one), nn.Sequential(conv, pool)(one), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(fused.eval()(x), nn.Sequential(conv, pool)(x), rtol=0, atol=0)  # evaluation: plain
    with torch.autocast("cpu", dtype=torch.bfloat16):  # bf16: plain (the moved bias would round otherwise)
        torch.testing.assert_close(fused.train()(x), nn.Sequential(conv, pool)(x), rtol=0, atol=0)


_FAULTS = """
import resource, torch
from cnnlab.config import Config
from cnnlab.training.engine import keep_freed_memory
from cnnlab.training.models import build

torch.manual_seed(0)
torch.set_num_threads(1)
model = build(Config().model, 3, 4, 128).train()
opt = torch.optim.SGD(model.parameters(), lr=0.01)
x, y = torch.rand(48, 3, 128, 128), torch.randint(0, 4, (48,))  # the first convolution's output: 96 MB

def faults(steps):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(steps):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before

faults(1)
default = faults(2)
assert keep_freed_memory() and keep_freed_memory()
faults(3)  # the heap grows to the step's peak
print(default, 2 * min(faults(1) for _ in range(3)))  # the quietest step: a rare one that meets a hole, not each
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_kept_heap_ends_the_page_faults_of_training_steps():
    out = subprocess.run([sys.executable, "-c", textwrap.dedent(_FAULTS)], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    default, kept = map(int, out.stdout.split())
    assert default > 2 * 50_000  # every step maps its large tensors afresh and faults them in (96 MB: 24,576 pages)
    assert kept < default / 10
