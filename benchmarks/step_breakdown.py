"""One training step of the assignment's network on the CPU, timed, and oneDNN's convolutions in it one by one.

    [ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 MKL_ENABLE_INSTRUCTIONS=AVX2] \
        python benchmarks/step_breakdown.py [--batch 256] [--size 128] [--steps 8] [--json]

Random inputs (channels_last, fp32, the heap kept as cnnlab's CPU runs keep it), Adam, cross-entropy: the median
forward, backward and whole step over --steps steps after three warm-up steps, then one more step under oneDNN's
verbose mode, whose lines give each convolution primitive (forward, backward data, backward weights), its kernel,
its shape and its milliseconds, with the GFLOP/s that makes. It is how docs/results/throughput.md found the one slow
kernel of the AVX2 step (the first convolution's weight gradient).
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import io
import json
import os
import re
import statistics
import sys
import tempfile
import time

import torch
from torch import nn

from cnnlab.config import Config
from cnnlab.studies.reports import machine
from cnnlab.training.engine import keep_freed_memory
from cnnlab.training.models import build


def _conv_flop(desc: str) -> float:
    """FLOPs of one convolution primitive from oneDNN's problem descriptor (mbN_icCocO_ihHohH..._iwWowW...)."""
    v = {k: int(x) for k, x in re.findall(r"(mb|ic|oc|oh|ow|kh|kw)(\d+)", desc)}
    return 2.0 * v["mb"] * v["ic"] * v["oc"] * v["oh"] * v["ow"] * v["kh"] * v["kw"]


@contextlib.contextmanager
def _captured_fd1():
    """What oneDNN writes to file descriptor 1 (its verbose lines) while the block runs."""
    sys.stdout.flush()
    saved = os.dup(1)
    with tempfile.TemporaryFile("w+") as f:
        os.dup2(f.fileno(), 1)
        out = io.StringIO()
        try:
            yield out
        finally:
            sys.stdout.flush()
            ctypes.CDLL(None).fflush(None)  # oneDNN prints through C's buffered stdout
            os.dup2(saved, 1)
            os.close(saved)
            f.seek(0)
            out.write(f.read())


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)

    keep_freed_memory()
    torch.manual_seed(0)
    model = build(Config().model, 3, 4, args.size).to(memory_format=torch.channels_last).train()
    opt = torch.optim.Adam(model.parameters(), 1e-3)
    x = torch.randn(args.batch, 3, args.size, args.size).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 4, (args.batch,))

    def step() -> tuple[float, float, float]:
        t0 = time.perf_counter()
        loss = nn.functional.cross_entropy(model(x), y)
        t1 = time.perf_counter()
        opt.zero_grad()
        loss.backward()
        t2 = time.perf_counter()
        opt.step()
        return t1 - t0, t2 - t1, time.perf_counter() - t0

    for _ in range(3):
        step()
    times = [step() for _ in range(args.steps)]
    with _captured_fd1() as verbose, torch.backends.mkldnn.verbose(torch.backends.mkldnn.VERBOSE_ON):
        step()
    convs = []
    for line in verbose.getvalue().splitlines():
        f = line.split(",")
        if len(f) > 8 and f[3] == "exec" and f[5] == "convolution":
            ms = float(f[-1])
            convs.append(
                {"kind": f[7], "kernel": f[6], "problem": f[-2], "ms": ms, "gflop_per_s": _conv_flop(f[-2]) / ms / 1e6}
            )
    result = {
        "machine": machine(),
        "aten": torch.backends.cpu.get_cpu_capability(),
        "threads": torch.get_num_threads(),
        "batch": args.batch,
        "size": args.size,
        **{
            k: 1000 * statistics.median(t[i] for t in times)
            for i, k in enumerate(("forward_ms", "backward_ms", "step_ms"))
        },
        "convolutions": convs,
    }
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        where = f"{result['machine']}, ATen {result['aten']}, {result['threads']} threads"
        print(f"{where}, batch {args.batch}, {args.size} px")
        print(
            f"step {result['step_ms']:.0f} ms: forward {result['forward_ms']:.0f}, backward {result['backward_ms']:.0f}"
        )
        for c in convs:
            rate = f"{c['ms']:7.1f} ms {c['gflop_per_s']:6.0f} GFLOP/s"
            print(f"  {c['kind']:<16} {c['kernel']:<36} {c['problem']:<60} {rate}")
    return result


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
