"""Every check on a config's values, in one place: `check_config` runs before any file is scanned or decoded, so a
mistyped name or an impossible value costs the user nothing but one line.

Types were already checked when the values were set (cnnlab.config); names are checked against the registries
that use them, with a "did you mean" suggestion; the model is built once on the CPU (milliseconds), so an
input too small for its layers is reported here too.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.util
import math
from collections.abc import Mapping

import torch

from cnnlab.config import Config, ModelConfig, load_recipe
from cnnlab.data.cache import CACHE_MODES
from cnnlab.data.decode import CROP_POLICIES, RESIZE_POLICIES, parse_window
from cnnlab.data.splits import SPLIT_POLICIES
from cnnlab.errors import UserError, nearest
from cnnlab.training.batching import IMBALANCE_MODES
from cnnlab.training.engine import PRECISIONS
from cnnlab.training.model_sources import is_external
from cnnlab.training.models import (
    ACTIVATIONS,
    FIXED_SIZE,
    GAP_HEAD,
    MODELS,
    POOLS,
    build,
    check_model_name,
    model_source,
)
from cnnlab.training.optimization import MONITORS, NO_WARMUP, OPTIMIZERS, SCHEDULERS
from cnnlab.training.presets import NORMALIZE_POLICIES

IMAGE_SIZES = (8, 4096)
MAX_MLP_WEIGHTS = 1 << 30


def make_config(base=None, *overrides: Mapping | None, default: str | None = None) -> Config:
    """The one way a config is made, for the command line, the API, studies and cross-validation alike.

    base: a Config (copied), or the TOML file or shipped recipe it names; else `default` (a recipe name), else
    cnnlab's defaults. overrides: mappings of config fields (bare `lr` or qualified `optim.lr`) applied in order,
    None values skipped. Returns the checked Config; the first bad key or value raises one UserError, before any
    file is scanned."""
    name = base or default
    cfg = name.copy() if isinstance(name, Config) else load_recipe(name) if name else Config()
    for mapping in overrides:
        cfg.update({k: v for k, v in (mapping or {}).items() if v is not None})
    m = cfg.model
    if m.model in MODELS or is_external(m.model):  # else a registered name this process has not imported yet: keep it
        m.registered_in = model_source(m.model)
    return check_config(cfg)


def check_config(cfg: Config) -> Config:
    """Raise one UserError for the first bad value; return `cfg` unchanged when every value is usable.

    A config is checked once: one that has not changed since it passed returns at once (`make_config` checks it,
    and `fit` or a study's worker then meets it again)."""
    if getattr(cfg, "_checked", None) == cfg.to_dict():
        return cfg
    _data(cfg)
    _augment(cfg)
    _model(cfg)
    _optimization(cfg)
    _train(cfg)
    cfg._checked = cfg.to_dict()
    return cfg


def _name(value: str, choices, what: str) -> None:
    if value not in choices:
        raise nearest(value, choices, what)


def _within(name: str, value: float, lo: float, hi: float, lo_open: bool = False, hi_open: bool = False) -> None:
    """lo <= value <= hi (or < at an open end); NaN never passes."""
    ok = not math.isnan(value) and (value > lo if lo_open else value >= lo) and (value < hi if hi_open else value <= hi)
    if not ok:
        interval = f"{'(' if lo_open else '['}{lo:g}, {hi:g}{')' if hi_open else ']'}"
        raise UserError(f"{name} must be in {interval}, got {value:g}")


def _at_least(name: str, value: int, lo: int) -> None:
    if value < lo:
        raise UserError(f"{name} must be {'>= 0' if lo == 0 else f'at least {lo}'}, got {value}")


def _non_negative(name: str, value: float) -> None:
    if not 0 <= value < math.inf:
        raise UserError(f"{name} must be >= 0 and finite, got {value:g}")


def _positive(name: str, value: float) -> None:
    if not 0 < value < math.inf:
        raise UserError(f"{name} must be positive and finite, got {value:g}")


def _probability(name: str, value: float) -> None:
    if not 0 <= value <= 1:
        raise UserError(f"{name} must be a probability in [0, 1], got {value:g}")


def _data(cfg: Config) -> None:
    d = cfg.data
    _within("image_size", d.image_size, *IMAGE_SIZES)
    _name(d.resize, RESIZE_POLICIES, "resize policy")
    _name(d.crop, CROP_POLICIES, "crop policy")
    parse_window(d.window)  # two numbers, LOW < HIGH
    if d.channels not in (1, 3):
        raise UserError(f"channels must be 1 (gray) or 3 (RGB), got {d.channels}")
    _within("val_fraction", d.val_fraction, 0, 1, hi_open=True)
    _name(d.split, SPLIT_POLICIES, "split")
    # split = groups takes its groups from a group_file, a label file's group column, or DICOM PatientIDs: whether
    # the data gives any is known once it is scanned (data/splits.py group_split_groups)
    if d.group_file and d.split != "groups":
        raise UserError("a group_file needs split = groups")
    _at_least("block_size", d.block_size, 1)
    _name(d.normalize, NORMALIZE_POLICIES, "normalize policy")
    _name(d.imbalance, IMBALANCE_MODES, "imbalance")
    _name(d.cache, CACHE_MODES, "cache mode")


def _augment(cfg: Config) -> None:
    a = cfg.augment
    _within("rotate", a.rotate, 0, 180)
    for name in ("translate", "brightness", "contrast"):
        _within(name, getattr(a, name), 0, 1)
    _within("scale_min", a.scale_min, 0, 4, lo_open=True)
    _within("scale_max", a.scale_max, a.scale_min, 4)
    for name in ("jpeg", "erase", "blur"):
        _probability(name, getattr(a, name))
    _within("sharpness", a.sharpness, 0, 4)
    for name in ("gamma", "noise", "mixup"):
        _non_negative(name, getattr(a, name))


def _model(cfg: Config) -> None:
    m, d = cfg.model, cfg.data
    check_model_name(m)
    _name(m.activation, ACTIVATIONS, "activation")
    _name(m.pool, POOLS, "pooling")
    for name in ("width", "depth", "kernel_size", "stride", "hidden"):
        _at_least(name, getattr(m, name), 1)
    _at_least("padding", m.padding, 0)
    if m.output_stride not in (8, 16):
        raise UserError(f"output_stride must be 8 or 16, got {m.output_stride}")
    _within("dropout", m.dropout, 0, 1, hi_open=True)
    if m.model in FIXED_SIZE and d.resize == "keep":
        raise UserError(
            f"model {m.model} needs a fixed input size: use resize squash or pad, "
            "or a size-agnostic model (adaptive, resnet)"
        )
    if m.model == "mlp" and d.channels * d.image_size**2 * m.hidden > MAX_MLP_WEIGHTS:
        raise UserError(
            f"model mlp at image_size {d.image_size} would have "
            f"{d.channels * d.image_size**2 * m.hidden:,} weights in its first layer: use a smaller "
            "image_size or hidden, or a convolutional model"
        )
    _builds(dataclasses.astuple(m), d.channels, d.image_size)


@functools.cache
def _builds(model: tuple, channels: int, image_size: int) -> None:
    """Build the model once on the CPU (milliseconds): an input too small for its layers fails here."""
    m = ModelConfig(*model)
    if is_external(m.model):  # a model from outside cnnlab: one image through it, so a size it refuses fails here
        net = build(m, channels, 2, image_size)
        try:
            with torch.no_grad():
                net.eval()(torch.zeros(1, channels, image_size, image_size))
        except Exception as e:
            first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
            raise UserError(f"model {m.model} cannot take {image_size} x {image_size} inputs: {first}") from None
        return
    try:
        build(m, channels, 2, image_size)
    except RuntimeError:
        raise UserError(
            f"image_size {image_size} is too small for model {m.model}: its convolutions and pooling "
            f"(kernel_size {m.kernel_size}, stride {m.stride}, padding {m.padding}) shrink it to "
            "nothing"
        ) from None


def _optimization(cfg: Config) -> None:
    o, s = cfg.optim, cfg.schedule
    _name(o.optimizer, OPTIMIZERS, "optimizer")
    _positive("lr", o.lr)
    for name in ("momentum", "beta1", "beta2", "alpha"):
        _within(name, getattr(o, name), 0, 1, hi_open=True)
    _within("eps", o.eps, 0, 1, lo_open=True)
    _non_negative("weight_decay", o.weight_decay)
    if o.nesterov and (o.optimizer != "sgd" or o.momentum <= 0):
        raise UserError("nesterov needs optimizer sgd with momentum > 0")
    _name(s.scheduler, SCHEDULERS, "scheduler")
    _at_least("warmup_epochs", s.warmup_epochs, 0)
    if s.warmup_epochs and s.scheduler in NO_WARMUP:
        raise UserError(
            f"warmup_epochs does not combine with scheduler {s.scheduler} "
            "(onecycle has its own warm-up; use none, step or cosine)"
        )
    _at_least("plateau_patience", s.plateau_patience, 0)
    _within("plateau_factor", s.plateau_factor, 0, 1, lo_open=True, hi_open=True)
    _at_least("step_size", s.step_size, 1)
    _within("step_gamma", s.step_gamma, 0, 1, lo_open=True)
    _non_negative("min_lr", s.min_lr)
    _within("label_smoothing", cfg.loss.label_smoothing, 0, 1, hi_open=True)
    _boxes(cfg)


def _boxes(cfg: Config) -> None:
    """Box guidance needs a model with a class activation map (global pooling and one linear layer) and no mixup
    (a mixed image has two classes' boxes). The file is read when training starts: tests never read it."""
    _non_negative("box_weight", cfg.loss.box_weight)
    if not cfg.data.boxes:
        return
    if cfg.model.model not in GAP_HEAD:
        raise UserError(
            f"box guidance (data.boxes) needs a model with a class activation map (global pooling, then one linear "
            f"layer): {', '.join(sorted(GAP_HEAD))}; {cfg.model.model} has none"
        )
    if cfg.augment.mixup:
        raise UserError("box guidance (data.boxes) does not combine with mixup: a mixed image has two classes' boxes")


def _train(cfg: Config) -> None:
    t = cfg.train
    _at_least("epochs", t.epochs, 1)
    _at_least("batch_size", t.batch_size, 1)
    _at_least("eval_batch_size", t.eval_batch_size, 1)
    _name(t.monitor, MONITORS, "monitor")
    _at_least("patience", t.patience, 0)
    _at_least("threads", t.threads, 0)
    _within("ema", t.ema, 0, 1, hi_open=True)
    _at_least("save_every", t.save_every, 0)
    _name(t.precision, PRECISIONS, "precision")
    if t.tensorboard and importlib.util.find_spec("tensorboard") is None:
        raise UserError("tensorboard = true needs the tensorboard package: pip install cnnlab[tensorboard]")
    _device(t.device)


def _device(name: str) -> None:
    if name == "auto":
        return
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise UserError(f"unknown device '{name}' (use auto, cpu, cuda or cuda:N)") from None
    if dev.type not in ("cpu", "cuda"):
        raise UserError(f"unsupported device '{name}' (use auto, cpu, cuda or cuda:N)")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UserError("device cuda requested but no CUDA GPU is available (use --device cpu)")
