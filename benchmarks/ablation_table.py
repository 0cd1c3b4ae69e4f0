"""A markdown table of one-lever ablations: each run against the first (the base), validation figures only.

    python benchmarks/ablation_table.py BASE_RUN RUN [RUN ...]

Each row names what its config changes from the base's (as `key=value`), its best validation macro-F1, the
mean of its last 3 epochs (steadier than one best epoch), the difference from the base, and its training
minutes (the sum of its epoch times). Nothing here reads a test result.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from cnnlab.config import Config
from cnnlab.training.run_folder import read_history

IGNORED = {"path", "threads", "cache_dir"}  # where and how fast, not what


def changes(cfg: dict, base: dict) -> str:
    diff = [f"{k}={v}" for sec, body in cfg.items() for k, v in body.items() if k not in IGNORED and base[sec][k] != v]
    return " ".join(diff) or "(base)"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+", type=Path)
    args = ap.parse_args(argv)
    base = Config.load(args.runs[0] / "config.toml").to_dict()
    rows, ref = [], None
    for run in args.runs:
        hist = read_history(run / "history.csv")
        f1 = [h["val_f1"] for h in hist]
        best, last3 = max(f1), sum(f1[-3:]) / len(f1[-3:])
        ref = ref if ref is not None else last3
        minutes = sum(h["epoch_s"] for h in hist) / 60
        rows.append(
            f"| `{changes(Config.load(run / 'config.toml').to_dict(), base)}` | {best:.3f} | {last3:.3f} "
            f"| {last3 - ref:+.3f} | {len(hist)} | {minutes:.1f} |"
        )
    print("| change from the base | best val macro-F1 | last 3 epochs | vs base (last 3) | epochs | minutes |")
    print("|---|---|---|---|---|---|")
    print("\n".join(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
