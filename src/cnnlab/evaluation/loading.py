"""A trained run loaded for scoring (`load_run`): one of its checkpoints as an engine in eval mode, in fp32, with the
checkpoint's own config, classes and normalisation statistics."""

from __future__ import annotations

from pathlib import Path

import torch

from cnnlab.config import Config
from cnnlab.errors import UserError
from cnnlab.training import run_folder
from cnnlab.training.engine import Engine, make_engine
from cnnlab.training.models import build


def load_run(run: Path, which: str = "best") -> tuple[Config, dict, Engine]:
    """-> (the checkpoint's config, the checkpoint, an engine with its weights in eval mode).

    `which`: best (default), last, or epoch-NNN. The checkpoint decides everything: its config builds the model
    and decodes images, its classes name the outputs, its statistics normalise."""
    run = Path(run)
    run_folder.read_config(run)  # a clear error for a folder that is not a run
    path = run / f"{which}.pt"
    if which == "best" and not path.is_file() and (run / run_folder.LAST).is_file():
        raise UserError(
            f"{path} is missing although {run / run_folder.LAST} exists: the run has finished epochs, "
            "but its best checkpoint was deleted or moved"
        )
    ckpt = run_folder.load_checkpoint(path, hint="" if path.is_file() else ": the run has not finished an epoch yet")
    cfg = Config.from_dict(ckpt["config"])
    cfg.train.device = "cpu" if not torch.cuda.is_available() else cfg.train.device
    # Scoring and prediction run in fp32 whatever the run trained in: bf16 autocast is a training-speed choice, and
    # fp32 is what an exported model (cnnlab export) reproduces to 1e-4.
    cfg.train.precision = "fp32"
    model = build(cfg.model, cfg.data.channels, len(ckpt["classes"]), cfg.data.image_size)
    model.load_state_dict(ckpt["model"])
    eng = make_engine(cfg, model, ckpt["mean"], ckpt["std"])
    eng.model.eval()
    return cfg, ckpt, eng
