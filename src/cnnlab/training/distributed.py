"""Data-parallel training: one run over N processes with PyTorch's DistributedDataParallel, started by torchrun
(or by `cnnlab train --procs N`, which starts the same through `torch.distributed.run`).

`Ranks` is this process's place in the group (`SOLO` when there is none) and the collectives the loops need:
each rank's share of a batch (contiguous, so N ranks with B/N images each see what one process with B sees),
sums over ranks, and rows gathered from every rank in order. `join` starts the process group from torchrun's
environment (gloo on the CPU, NCCL on CUDA); `parallel_model` synchronises BatchNorm over ranks (torch's
SyncBatchNorm on CUDA; `GlobalBatchNorm2d` on the CPU, where torch's has no kernel) and wraps the model in DDP;
`launch` runs torchrun's launcher for `cnnlab train --procs N`.
"""

from __future__ import annotations

import datetime
import logging
import os
import signal
import sys
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from cnnlab.errors import UserError


@dataclass(frozen=True)
class Ranks:
    """This process's rank among `world` (and on its node, `local_rank` of `local_world`), with the collectives of
    the loops; every method is a no-op for a world of one."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    local_world: int = 1
    device: str = "cpu"  # where the collectives' tensors must be: cuda:N for NCCL

    @property
    def main(self) -> bool:
        """Rank 0: the one that writes the run folder and prints."""
        return self.rank == 0

    def share(self, n: int) -> slice:
        """This rank's contiguous part of n items (sizes differ by at most one)."""
        return slice(self.rank * n // self.world, (self.rank + 1) * n // self.world)

    def sum(self, t: torch.Tensor) -> torch.Tensor:
        """`t` summed over ranks, in place."""
        if self.world > 1:
            if str(t.device) == self.device:
                dist.all_reduce(t)
            else:
                moved = t.to(self.device)
                dist.all_reduce(moved)
                t.copy_(moved)
        return t

    def gather(self, part: torch.Tensor, n: int) -> torch.Tensor:
        """Every rank's `part` (its `share(n)` rows) concatenated in rank order: n rows, on every rank."""
        if self.world == 1:
            return part
        size = -(-n // self.world)
        padded = part.new_zeros((size, *part.shape[1:]), device=self.device)
        padded[: len(part)] = part
        out = [torch.empty_like(padded) for _ in range(self.world)]
        dist.all_gather(out, padded)
        shares = [Ranks(r, self.world).share(n) for r in range(self.world)]
        return torch.cat([o[: s.stop - s.start] for o, s in zip(out, shares, strict=True)]).to(part.device)

    def broadcast(self, obj):
        """Rank 0's `obj` (any picklable value), on every rank."""
        if self.world == 1:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]


SOLO = Ranks()
JOIN_TIMEOUT_HOURS = 4
_joined: Ranks = SOLO


def current() -> Ranks:
    """The group this process has joined (`join`), or SOLO."""
    return _joined


def launched() -> bool:
    """Whether torchrun (or `cnnlab train --procs`) started this process as one of several."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def join(device: str) -> Ranks:
    """Join the process group torchrun's environment describes (once): NCCL when the run trains on CUDA, gloo on
    the CPU. -> this process's Ranks (SOLO when not launched by torchrun)."""
    global _joined
    if not launched() or _joined.world > 1:
        return _joined
    cuda = device != "cpu" and torch.cuda.is_available()
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if cuda:
        torch.cuda.set_device(local_rank)
    # rank 0 decodes a new data set while the others wait: allow it hours, not the default half hour
    dist.init_process_group("nccl" if cuda else "gloo", timeout=datetime.timedelta(hours=JOIN_TIMEOUT_HOURS))
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    where = f"cuda:{local_rank}" if cuda else "cpu"
    _joined = Ranks(dist.get_rank(), dist.get_world_size(), local_rank, local_world, where)
    return _joined


def local_device(device: torch.device, ranks: Ranks) -> torch.device:
    """A rank's own GPU (cuda:LOCAL_RANK) for a CUDA run; the CPU stays the CPU."""
    if ranks.world > 1 and device.type == "cuda" and device.index is None:
        return torch.device("cuda", ranks.local_rank)
    return device


# ------------------------------------------------------------------------------------------ the model


class GlobalBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm2d whose training statistics are those of the whole batch, over every rank (gloo, CPU): the
    per-channel sum and count, then the squared deviations from the global mean, summed over ranks with
    autograd's all_reduce (so the gradient flows through the other ranks' share too). Evaluation, and a world of
    one, is BatchNorm2d's own. Its parameters and buffers are BatchNorm2d's: checkpoints do not change."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and dist.is_initialized() and dist.get_world_size() > 1):
            return super().forward(x)
        all_reduce = _AllReduceSum.apply
        dims, shape = (0, 2, 3), (1, -1, 1, 1)
        count = torch.full((1,), x.numel() // max(x.shape[1], 1), dtype=x.dtype, device=x.device)
        totals = all_reduce(torch.cat([x.sum(dims), count]))
        n = totals[-1]
        mean = totals[:-1] / n
        centred = x - mean.view(shape)
        var = all_reduce(centred.square().sum(dims)) / n
        y = centred * torch.rsqrt(var + self.eps).view(shape)
        if self.affine:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                m = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
                self.running_mean.lerp_(mean.detach(), m)
                self.running_var.lerp_(var.detach() * n / (n - 1).clamp_min(1), m)
        return y


class _AllReduceSum(torch.autograd.Function):
    """A sum over ranks that autograd goes through: the gradient of each rank's part is the sum over ranks of the
    gradients of the result (as torch.distributed.nn's all_reduce, which is deprecated)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        out = x.clone()
        dist.all_reduce(out)
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        out = grad.contiguous().clone()
        dist.all_reduce(out)
        return out


def synchronised_batchnorm(model: nn.Module, device: torch.device) -> nn.Module:
    """`model` with BatchNorm computed over every rank's images: SyncBatchNorm on CUDA; on the CPU each
    BatchNorm2d becomes a GlobalBatchNorm2d in place (same parameters, buffers and hooks: only `forward` differs)."""
    if device.type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(model)
    for m in model.modules():
        if type(m) is nn.BatchNorm2d:
            m.__class__ = GlobalBatchNorm2d
    return model


def parallel_model(model: nn.Module, device: torch.device) -> nn.Module:
    """The DDP wrapper that trains `model` (already synchronised and on `device`): gradients averaged over ranks
    after every backward. Buffers are not broadcast: synchronised BatchNorm keeps them equal on every rank."""
    import inspect

    from torch.nn.parallel import DistributedDataParallel

    ids = [device.index] if device.type == "cuda" else None
    newer = "forward_sync_buffers" in inspect.signature(DistributedDataParallel.__init__).parameters
    no_sync = {"forward_sync_buffers": False} if newer else {"broadcast_buffers": False}
    return DistributedDataParallel(model, device_ids=ids, **no_sync)


# -------------------------------------------------------------------------------------------- launcher


def torchrun_args(procs: int, nnodes: int, node_rank: int | None, endpoint: str | None) -> list[str]:
    """torchrun's options for N processes a node: one machine (`--standalone`, a free port), or `nnodes`
    machines meeting at `endpoint` (c10d rendezvous) as torchrun documents."""
    if procs < 1 or nnodes < 1:
        raise UserError(f"--procs and --nnodes must be at least 1, got {procs} and {nnodes}")
    args = [f"--nproc-per-node={procs}", f"--nnodes={nnodes}"]
    if nnodes == 1 and not endpoint:
        return [*args, "--standalone"]
    if not endpoint:
        raise UserError("training on several machines needs --rdzv-endpoint HOST:PORT (the same on every machine)")
    args += ["--rdzv-backend=c10d", f"--rdzv-endpoint={endpoint}", "--rdzv-id=cnnlab"]
    return [*args, f"--node-rank={node_rank}"] if node_rank is not None else args


def launch(torchrun: list[str], argv: list[str]) -> int:
    """Run `python -m cnnlab train ARGV` in every rank through torch.distributed.run; -> the exit code: 0, 2 when
    a rank stopped on a user error (which rank 0 printed), 130 when interrupted, else 1 with one line saying which
    rank failed and how."""
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import get_args_parser, run

    logging.getLogger("torch.distributed.elastic").setLevel(logging.CRITICAL)
    # torchrun sets one OpenMP thread a rank (and says so) unless told; cnnlab sets each rank's threads itself
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    args = get_args_parser().parse_args([*torchrun, "--module", "cnnlab", "train", *argv])
    try:
        run(args)
    except ChildFailedError as e:
        if any(f.exitcode == 2 for f in e.failures.values()):
            return 2
        rank, first = e.get_first_failure()
        code = first.exitcode
        how = f"was killed by {signal.Signals(-code).name}" if code < 0 else f"exited with code {code}"
        print(f"error: rank {rank} {how}; the other ranks were stopped", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return 0
