"""Layers cnnlab's own networks are built of, where torch's would cost more on a CPU.

`Dropout` is `nn.Dropout` with a cheaper mask on the CPU. torch draws a CPU mask with `bernoulli_`, one float a
value, then scales the mask and multiplies: about 110 ms for the 13.8 million values after the assignment
network's first block (batch 256, 128 px) with AVX2 kernels on two cores. Here each value takes 16 random bits
(four from every 64-bit draw of torch's generator, so the random stream is still the one `torch.manual_seed`
seeds) and is dropped when they fall below p x 65536: about 35 ms for the same values. The probability is p
rounded to a multiple of 1/65536 (0.2 gives 13107/65536 = 0.199997), and the kept values are scaled by the exact
inverse of the kept share, so the expectation is unchanged. On a GPU, and in evaluation, it is `nn.Dropout`.

`Sequential` is `nn.Sequential` (the same children, state_dict and printout) that, training on the CPU, runs a
convolution followed by a max-pooling as one step (`conv_then_max_pool`), where two things of the plain order cost
time and change nothing: the convolution's bias is added after the pooling (max(x + b) = max(x) + b, rounding
being monotonic), so it is added to, and its gradient summed over, 9 times fewer values with a 3 x 3 pool; and the
convolution only computes the outputs the pooling reads (with the assignment network's 4 x 4 convolutions and 3 x
3 pools, 123 of 125 rows and 36 of 38). For the assignment's network (batch 256, 128 px, AVX2 kernels, two cores)
a training step in fp32 takes about 10% less time (docs/results/throughput.md). The results are those of the plain
order up to rounding. Evaluation, GPUs, bf16 autocast (where it was slower) and modules something observes (a
forward or backward hook) take the plain order.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules.utils import _pair

_LEVELS = 1 << 16  # a value's 16 random bits


class Dropout(nn.Dropout):
    """`nn.Dropout` (same arguments, no state) whose training-time mask on the CPU is drawn from 16 random bits
    a value instead of a float (see the module's text): about three times cheaper, the same expectation."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0 or x.device.type != "cpu" or not x.is_floating_point():
            return super().forward(x)
        return F.dropout(x, 1.0, True, self.inplace) if self.p == 1 else self._drop(x)

    def _drop(self, x: torch.Tensor) -> torch.Tensor:
        dropped = round(self.p * _LEVELS)  # of every 65536 bit patterns, these many drop the value
        if not (x.is_contiguous() or x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last)):
            x = x.contiguous()
        n = x.numel()
        bits = torch.empty((n + 3) // 4, dtype=torch.int64).random_(-(1 << 63), (1 << 63) - 1)
        # The mask in x's own memory layout (channels_last included), so the product runs over contiguous memory.
        keep = bits.view(torch.int16)[:n].as_strided(x.size(), x.stride()) >= dropped - _LEVELS // 2
        scale = keep.to(x.dtype).mul_(_LEVELS / (_LEVELS - dropped))
        return x.mul_(scale) if self.inplace else x * scale


class Sequential(nn.Sequential):
    """`nn.Sequential` whose CPU training forward in fp32 runs each convolution followed by a max-pooling through
    `conv_then_max_pool` (see the module's text); anything else, and any other mode or device, as `nn.Sequential`."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and x.device.type == "cpu") or _autocast() or _observed(self):
            return super().forward(x)
        layers = list(self)
        i = 0
        while i < len(layers):
            if i + 1 < len(layers) and fusable(layers[i], layers[i + 1]):
                x = conv_then_max_pool(x, layers[i], layers[i + 1])
                i += 2
            else:
                x = layers[i](x)
                i += 1
        return x


def _autocast() -> bool:
    """Whether the CPU autocasts (bf16): oneDNN's bf16 kernels add the bias at no cost, and the extra steps made an
    epoch of the assignment's network about 10% slower there (docs/results/throughput.md)."""
    try:
        return torch.is_autocast_enabled("cpu")
    except TypeError:  # torch < 2.4
        return torch.is_autocast_cpu_enabled()


def _observed(*modules: nn.Module) -> bool:
    """Whether a hook would see these modules' own calls (skipped calls would hide them)."""
    from torch.nn.modules import module as m

    if m._global_forward_hooks or m._global_forward_pre_hooks or m._global_backward_hooks:
        return True
    return any(x._forward_hooks or x._forward_pre_hooks or x._backward_hooks or x._backward_pre_hooks for x in modules)


def fusable(conv: nn.Module, pool: nn.Module) -> bool:
    """Whether `conv` then `pool` can run as `conv_then_max_pool`: a 2-d convolution with a bias, then a 2-d
    max-pooling that returns no indices, neither observed by a hook."""
    return (
        isinstance(conv, nn.Conv2d)
        and conv.bias is not None
        and isinstance(pool, nn.MaxPool2d)
        and not pool.return_indices
        and not _observed(conv, pool)
    )


def conv_then_max_pool(x: torch.Tensor, conv: nn.Conv2d, pool: nn.MaxPool2d) -> torch.Tensor:
    """pool(conv(x)), computed as max_pool(conv(x cropped, no bias)) + bias: the input cropped to what the pooling
    reads of the convolution's output (where neither pads nor rounds up), the bias added to the pooled values."""
    x = x[..., : _rows_read(x.shape[-2], conv, pool, 0), : _rows_read(x.shape[-1], conv, pool, 1)]
    y = F.max_pool2d(
        conv._conv_forward(x, conv.weight, None),
        pool.kernel_size,
        pool.stride,
        pool.padding,
        pool.dilation,
        pool.ceil_mode,
    )
    return y + conv.bias.to(y.dtype).view(-1, 1, 1)  # C x 1 x 1: a batch or one unbatched image


def _rows_read(n: int, conv: nn.Conv2d, pool: nn.MaxPool2d, dim: int) -> int:
    """Of `n` input rows (dim 0) or columns (dim 1), how many the pooled output depends on through `conv`."""
    if isinstance(conv.padding, str) or conv.padding[dim] or _pair(pool.padding)[dim] or pool.ceil_mode:
        return n  # padded or rounded up: the edges matter
    k, s, d = conv.kernel_size[dim], conv.stride[dim], conv.dilation[dim]
    pk, ps, pd = _pair(pool.kernel_size)[dim], _pair(pool.stride or pool.kernel_size)[dim], _pair(pool.dilation)[dim]
    out = (n - d * (k - 1) - 1) // s + 1  # the convolution's outputs
    pooled = (out - pd * (pk - 1) - 1) // ps + 1
    if out < 1 or pooled < 1:
        return n  # too small: the plain call raises its own error
    used = (pooled - 1) * ps + pd * (pk - 1) + 1  # the outputs the pooling reads
    return (used - 1) * s + d * (k - 1) + 1
