"""Models from outside cnnlab's own registry, always trained from scratch: `torchvision:NAME` and `timm:NAME` (any
classification model of the two libraries, with pretrained weights forced off), `package.module:builder` (a
user's callable or `nn.Module` class, imported by that path in every process that rebuilds the run), and names a
user registered with `cnnlab.register_model` (the registering module recorded in the config as
`model.registered_in`). `feature_map_layer` finds the layer a heatmap explains in any of them."""

from __future__ import annotations

import importlib
import inspect
import os
import sys
from collections.abc import Callable

import torch
from torch import nn

from cnnlab.config import ModelConfig
from cnnlab.errors import UserError, nearest

LIBRARIES = ("torchvision", "timm")
# Models whose auxiliary heads make them return tuples while training: built without them.
NO_AUX = {"googlenet", "inception_v3"}
REGISTERED_IN: dict[str, str] = {}  # a name registered with register_model -> the module that registered it


def is_external(name: str) -> bool:
    """Whether `name` is a `prefix:name` or `package.module:builder` model (not one of cnnlab's registry)."""
    return ":" in name


def split_name(name: str) -> tuple[str, str]:
    """'torchvision:resnet18' -> ('torchvision', 'resnet18'); a UserError for an empty part."""
    source, _, attr = name.partition(":")
    if not source or not attr:
        raise UserError(
            f"model '{name}' is neither a cnnlab model nor SOURCE:NAME (torchvision:resnet18, timm:efficientnet_b0, "
            "package.module:builder)"
        )
    return source, attr


def _torchvision(name: str, in_channels: int, n_classes: int, image_size: int) -> nn.Module:
    import torchvision

    names = torchvision.models.list_models(module=torchvision.models)  # the classification models
    if name not in names:
        raise nearest(name, names, "torchvision classification model")
    kwargs = {"aux_logits": False, "init_weights": True} if name in NO_AUX else {}
    if name.startswith("vit_"):
        kwargs["image_size"] = image_size  # a ViT's position embedding is made for one input size
    model = torchvision.models.get_model(name, weights=None, num_classes=n_classes, **kwargs)
    return adapt_input_channels(model, in_channels)


def _timm(name: str, in_channels: int, n_classes: int, image_size: int) -> nn.Module:
    try:
        import timm
    except ImportError:
        raise UserError(f"model timm:{name} needs the timm package: pip install 'cnnlab[timm]'") from None
    if not timm.is_model(name):
        raise nearest(name, timm.list_models(), "timm model")
    # pretrained=False: timm never looks for weights; the tag of a name such as resnet18.a1_in1k only names them.
    try:  # a fixed-size model (a ViT) is made for the run's input size; a CNN takes no img_size
        return timm.create_model(
            name, pretrained=False, num_classes=n_classes, in_chans=in_channels, img_size=image_size
        )
    except TypeError:
        return timm.create_model(name, pretrained=False, num_classes=n_classes, in_chans=in_channels)


def adapt_input_channels(model: nn.Module, in_channels: int) -> nn.Module:
    """Replace the first convolution by one of `in_channels` inputs (gray images into an RGB architecture), freshly
    initialised as the library initialises it; the model unchanged when it already takes that many."""
    first = next(((n, m) for n, m in model.named_modules() if isinstance(m, nn.Conv2d)), None)
    if first is None or first[1].in_channels == in_channels:
        return model
    name, conv = first
    new = nn.Conv2d(
        in_channels,
        conv.out_channels,
        conv.kernel_size,
        conv.stride,
        conv.padding,
        conv.dilation,
        1,
        conv.bias is not None,
        conv.padding_mode,
    )
    parent_name, _, attr = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, attr, new)
    return model


def import_builder(path: str) -> Callable:
    """The callable `package.module:builder` names (dots after the colon reach into classes); one UserError line
    when the module cannot be imported or has no such attribute, saying where the module was looked for."""
    module_name, attr = split_name(path)
    try:
        module = _import(module_name)
    except ModuleNotFoundError as e:
        if e.name and not module_name.startswith(e.name):  # the user's module imports something missing
            raise UserError(f"model {path}: importing {module_name} failed: {e}") from None
        raise UserError(
            f"model {path}: no module named {module_name} (looked in the current folder {os.getcwd()}, on "
            f"PYTHONPATH ({os.environ.get('PYTHONPATH') or 'not set'}) and in the installed packages)"
        ) from None
    except Exception as e:  # the user's module raised while importing: one line, theirs
        raise UserError(f"model {path}: importing {module_name} failed: {type(e).__name__}: {e}") from None
    obj = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise UserError(f"model {path}: {module_name} has no attribute {attr}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise UserError(f"model {path}: {attr} is not callable (expected a builder function or an nn.Module class)")
    return obj


def _import(module_name: str):
    """`importlib.import_module`, with the current folder on the path as `python -m` has it (the `cnnlab` script
    does not): a module beside the user's data and configs imports as in their own scripts. The folder stays on
    `sys.path`, so spawned workers (which copy the parent's path) find it too."""
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        cwd = os.getcwd()
        if cwd in sys.path or "" in sys.path or not e.name or not module_name.startswith(e.name):
            raise
        sys.path.append(cwd)
        return importlib.import_module(module_name)


def call_builder(fn: Callable, cfg: ModelConfig, in_channels: int, n_classes: int, image_size: int) -> nn.Module:
    """`fn(cfg, in_channels, n_classes)`, with `image_size=` too when its signature takes it; the result must be an
    nn.Module. The user's errors while building are one line, naming the builder."""
    label = getattr(fn, "__qualname__", repr(fn))
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        params = {}
    extra = {"image_size": image_size} if "image_size" in params else {}
    try:
        model = fn(cfg, in_channels, n_classes, **extra)
    except UserError:
        raise
    except Exception as e:
        raise UserError(f"model builder {label} failed: {type(e).__name__}: {e}") from None
    if not isinstance(model, nn.Module):
        raise UserError(f"model builder {label} returned {type(model).__name__}, not a torch nn.Module")
    return model


def build_external(cfg: ModelConfig, in_channels: int, n_classes: int, image_size: int) -> nn.Module:
    """A `torchvision:`, `timm:` or `package.module:builder` model, freshly initialised, never pretrained."""
    source, name = split_name(cfg.model)
    try:
        if source == "torchvision":
            return _torchvision(name, in_channels, n_classes, image_size)
        if source == "timm":
            return _timm(name, in_channels, n_classes, image_size)
    except UserError:
        raise
    except Exception as e:  # a library refusing its own arguments (an input size, a channel count)
        raise UserError(f"model {cfg.model} cannot be built: {type(e).__name__}: {e}") from None
    return call_builder(import_builder(cfg.model), cfg, in_channels, n_classes, image_size)


def import_registering_module(cfg: ModelConfig, registry: dict) -> None:
    """Make a `register_model` name known in this process: import the module the config says registered it (a
    fresh process: `cnnlab predict`, a spawned worker, a Ray task)."""
    if cfg.model in registry or is_external(cfg.model) or not cfg.registered_in:
        return
    try:
        _import(cfg.registered_in)
    except Exception as e:
        raise UserError(
            f"model {cfg.model} was registered by module {cfg.registered_in}, which cannot be imported here "
            f"({type(e).__name__}: {e}): put it on PYTHONPATH"
        ) from None
    if cfg.model not in registry:
        raise UserError(f"model {cfg.model}: importing {cfg.registered_in} did not register it")


def feature_map_layer(model: nn.Module, example: torch.Tensor) -> nn.Module | None:
    """The layer whose output a heatmap of an arbitrary classifier explains: of the modules a forward pass of
    `example` runs, the last to finish with a spatial (4-D) output before the head, a 1 x 1 map only where none is
    larger (global pooling, or a head's LayerNorm as ConvNeXt's, explains nothing). For torchvision's resnet18
    `layer4`, for timm's efficientnet_b0 `bn2`. None for a model without spatial maps."""
    order: list[tuple[nn.Module, torch.Size]] = []
    hooks = [
        m.register_forward_hook(lambda mod, _i, out: order.append((mod, out.shape)) if torch.is_tensor(out) else None)
        for m in model.modules()
        if m is not model
    ]
    was_training = model.training
    weight = next(model.parameters(), None)
    try:
        with torch.no_grad():
            model.eval()(example.to(weight.device) if weight is not None else example)
    except Exception:
        return None
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    head = next((i for i, (_, shape) in enumerate(order) if len(shape) == 2), len(order))
    h, w = example.shape[-2:]
    # an image's map: no larger than the input, its aspect the input's to a cell (not an attention tensor's
    # batch x heads x tokens x width, which is 4-D too)
    spatial = [
        (m, shape)
        for m, shape in order[:head]
        if len(shape) == 4 and shape[-2] <= h and shape[-1] <= w and abs(shape[-2] * w - shape[-1] * h) <= max(h, w)
    ]
    wide = [m for m, shape in spatial if shape[-1] * shape[-2] > 1]
    if wide:
        return wide[-1]
    points = [m for m, _ in spatial if not _is_pool(m)]
    return points[-1] if points else None


def _is_pool(m: nn.Module) -> bool:
    return "pool" in type(m).__name__.lower()
