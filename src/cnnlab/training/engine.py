"""Where and how a model runs: the device, the precision (bf16 autocast where it pays), the memory layout, the
train and eval input presets, and flip TTA at evaluation."""

from __future__ import annotations

import ctypes
import os
from contextlib import nullcontext
from dataclasses import dataclass

import torch
from torch import nn

from cnnlab.config import Config
from cnnlab.training.distributed import SOLO, Ranks, local_device, parallel_model, synchronised_batchnorm
from cnnlab.training.presets import EvalInput, TrainInput

PRECISIONS = ("auto", "fp32", "bf16", "fp16")


@dataclass
class Engine:
    """Everything the loops need: the model on its device, its precision and its two input presets; in a
    data-parallel run, its ranks and the DDP wrapper that trains the model (`trained`)."""

    model: nn.Module
    device: torch.device
    autocast_dtype: torch.dtype | None
    train_input: TrainInput
    eval_input: EvalInput
    tta: bool = False
    ranks: Ranks = SOLO
    parallel: nn.Module | None = None
    gpu_share: int = 1  # runs sharing this GPU at once (a study's workers): each takes 1/gpu_share of its memory

    @property
    def trained(self) -> nn.Module:
        """What a training step calls: over several ranks the DDP wrapper, made on the first step (its
        construction is a collective: every rank makes it at once), else the model itself."""
        if self.ranks.world == 1:
            return self.model
        if self.parallel is None:
            self.parallel = parallel_model(self.model, self.device)
        return self.parallel

    def autocast(self):
        if self.autocast_dtype is None:
            return nullcontext()
        return torch.autocast(self.device.type, dtype=self.autocast_dtype)

    def describe(self, precision: str = "auto") -> str:
        """One line of what this machine got: device, precision (and why, for auto), layout, threads."""
        if self.device.type == "cuda":
            where = f"{self.device} ({torch.cuda.get_device_name(self.device)})"
            if self.gpu_share > 1:
                where += f", shared by {self.gpu_share} runs (1/{self.gpu_share} of its memory each)"
        else:
            where = f"cpu ({torch.backends.cpu.get_cpu_capability()}, {torch.get_num_threads()} threads)"
        dtype = {None: "fp32", torch.bfloat16: "bf16 autocast", torch.float16: "fp16 autocast"}[self.autocast_dtype]
        why = ""
        if precision == "auto":
            why = (
                (
                    " (auto: native bf16 on this CPU)"
                    if self.autocast_dtype is not None
                    else " (auto: no native bf16 on this CPU)"
                )
                if self.device.type == "cpu"
                else " (auto)"
            )
        layout = "channels_last" if self.train_input.channels_last else "NCHW"
        ranks = f", rank 0 of {self.ranks.world} (DDP)" if self.ranks.world > 1 else ""
        return f"{where}, {dtype}{why}, {layout}{ranks}"

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        with self.autocast():
            out = self.model(x).float()
            if self.tta:
                out = (out.softmax(1) + self.model(x.flip(-1)).float().softmax(1)).div(2).log()
        return out


# glibc's mallopt parameters (malloc.h).
_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4
_kept = False


def keep_freed_memory() -> bool:
    """Make glibc's malloc keep the memory a CPU training step frees, for the next step to reuse. True where it
    took effect (Linux with glibc; elsewhere nothing changes).

    By default glibc gives every block over its mmap threshold (at most 32 MB) its own mapping and unmaps it when
    freed, so each step faults in its large tensors afresh: the assignment's network at batch 256 allocates about
    1.5 GB a step (its first convolution's 512 MB output, the max-pool gradient of the same size, ...), 400,000
    page faults that the kernel must zero-fill, about 40% of an fp32 step (docs/results/throughput.md). With no
    mmap and a 2 GB trim threshold the blocks come from the heap and stay there: no fault after the first steps,
    and the process keeps its peak (2.5 GB for that step instead of falling back to 1 GB between steps), as
    CUDA's caching allocator does for GPU memory. The numbers computed do not change."""
    global _kept
    if _kept:
        return True
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (AttributeError, OSError, TypeError):  # not glibc (macOS, Windows, musl without the symbol)
        return False
    _kept = bool(mallopt(_M_MMAP_MAX, 0)) and bool(mallopt(_M_TRIM_THRESHOLD, 2**31 - 1))
    return _kept


@dataclass(frozen=True)
class Sharing:
    """This process is worker `index` of `workers` that train a study's runs at once on this machine."""

    index: int = 0
    workers: int = 1

    def gpu(self, count: int) -> tuple[int, int]:
        """The GPU this worker trains on when `count` are visible (the workers dealt round-robin), and how many
        workers share it."""
        count = max(1, count)
        return self.index % count, len(range(self.index % count, self.workers, count))


_sharing = Sharing()


def share_machine(index: int, workers: int) -> None:
    """Tell this process it is worker `index` of `workers` running at once (a study's local workers): a run on
    `cuda` then trains on GPU index % count, and takes at most its share of that GPU's memory, so that one run's
    cached blocks never starve the others."""
    global _sharing
    _sharing = Sharing(index, max(1, workers))


def _shared_gpu(device: torch.device, ranks: Ranks) -> tuple[torch.device, int]:
    """A solo CUDA run's GPU among the workers sharing this machine's GPUs, its memory share applied ->
    (device, runs sharing it)."""
    if device.type != "cuda" or ranks.world > 1 or _sharing.workers == 1:
        return device, 1
    index, share = _sharing.gpu(torch.cuda.device_count())
    if device.index is None:
        device = torch.device("cuda", index)
    torch.cuda.set_device(device)
    if share > 1:
        torch.cuda.set_per_process_memory_fraction(1 / share, device)
    return device, share


def pick_device(name: str) -> torch.device:
    """auto: the GPU when there is one. Names are checked by `check_config` (training/checks.py) before any work."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


# oneDNN instruction sets without native bf16 dot products: with ONEDNN_MAX_CPU_ISA capped to one of them, oneDNN
# would emulate bf16 (slower than fp32), whatever the CPU has.
_ISAS_WITHOUT_BF16 = {"SSE41", "AVX", "AVX2", "AVX2_VNNI", "AVX2_VNNI_2", "AVX512_CORE", "AVX512_CORE_VNNI"}


def cpu_has_bf16() -> bool:
    """Native bfloat16 matrix units (AVX-512 BF16 or AMX), where oneDNN runs bf16 about 2x faster than fp32, and
    oneDNN allowed to use them (ONEDNN_MAX_CPU_ISA)."""
    if os.environ.get("ONEDNN_MAX_CPU_ISA", "").upper() in _ISAS_WITHOUT_BF16:
        return False
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def pick_precision(name: str, device: torch.device) -> torch.dtype | None:
    """auto: bf16 autocast on a GPU, and on a CPU with native bf16 (docs/results/speed.md shows the
    validation score unchanged); fp32 elsewhere."""
    if name == "fp32" or (name == "auto" and device.type == "cpu" and not cpu_has_bf16()):
        return None
    if name == "fp16":
        return torch.float16
    if device.type == "cuda" and not torch.cuda.is_bf16_supported():
        return torch.float16
    return torch.bfloat16


def make_engine(cfg: Config, model: nn.Module, mean: torch.Tensor, std: torch.Tensor, ranks: Ranks = SOLO) -> Engine:
    """The `Engine` for `model` under `cfg`: the device and precision picked (auto resolved), the model moved there
    (channels_last if asked), and the train and eval input presets with the statistics `mean` and `std`. Over
    several `ranks`: each rank's own GPU and BatchNorm synchronised over ranks (the DDP wrapper comes with the
    first step)."""
    t, d = cfg.train, cfg.data
    device, share = _shared_gpu(local_device(pick_device(t.device), ranks), ranks)
    if ranks.world > 1:
        model = synchronised_batchnorm(model, device)
    if t.channels_last:
        model = model.to(memory_format=torch.channels_last)
    model.to(device)
    if device.type == "cpu":
        keep_freed_memory()
    return Engine(
        model,
        device,
        pick_precision(t.precision, device),
        TrainInput(mean, std, d.normalize, device, t.channels_last, cfg.augment),
        EvalInput(mean, std, d.normalize, device, t.channels_last),
        t.tta,
        ranks,
        gpu_share=share,
    )
