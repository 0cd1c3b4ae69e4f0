"""Unit tests of cnnlab.training.layers (Dropout with a cheaper CPU mask) and of the engine's kept heap."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
import torch
from torch import nn

from cnnlab.training.layers import Dropout

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
print(default, faults(2))
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_kept_heap_ends_the_page_faults_of_training_steps():
    out = subprocess.run([sys.executable, "-c", textwrap.dedent(_FAULTS)], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    default, kept = map(int, out.stdout.split())
    assert default > 2 * 50_000  # every step maps its large tensors afresh and faults them in (96 MB: 24,576 pages)
    assert kept < default / 10
