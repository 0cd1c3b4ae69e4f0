"""Models by name, always from scratch (nothing here downloads or loads pretrained weights): cnnlab's own, the
models users register (`register_model`), and `torchvision:`, `timm:` and `package.module:builder` names
(training/model_sources.py)."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from cnnlab.config import ModelConfig
from cnnlab.errors import UserError, nearest
from cnnlab.training.layers import Dropout, Sequential
from cnnlab.training.model_sources import (
    REGISTERED_IN,
    build_external,
    call_builder,
    feature_map_layer,
    import_registering_module,
    is_external,
    split_name,
)

ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {
    "relu": lambda: nn.ReLU(inplace=True),
    "leaky_relu": lambda: nn.LeakyReLU(0.01, inplace=True),
    "tanh": nn.Tanh,
    "gelu": nn.GELU,
    "silu": lambda: nn.SiLU(inplace=True),
    "elu": lambda: nn.ELU(inplace=True),
}
POOLS = {"max": nn.MaxPool2d, "avg": nn.AvgPool2d}

MODELS: dict[str, Callable] = {}
FIXED_SIZE: set[str] = set()  # models whose input must have the configured size
GAP_HEAD: set[str] = set()  # models ending in global average pooling and one linear layer: a class activation map
# model name -> (model -> the layer whose output a class activation map (evaluation/cam.py) weighs), or None:
# no spatial map
CAM_LAYERS: dict[str, Callable[[nn.Module], nn.Module | list[nn.Module] | None] | None] = {}
CAM_METHODS: dict[str, str] = {}  # model name -> its default heatmap method (evaluation/cam.py METHODS)


def register(
    name: str,
    fixed_size: bool = False,
    cam_layer: Callable[[nn.Module], nn.Module | list[nn.Module]] | None = None,
    gap_head: bool = False,
    cam_method: str = "gradcam",
):
    """Register a model builder; `cam_layer` picks the layer a heatmap explains (None: the model has no spatial
    feature map, as an MLP); `gap_head`: the model ends in global average pooling and one linear layer, so box
    guidance can weigh its class activation map (`guidance_parts`); `cam_method`: its default heatmap method."""

    def deco(fn):
        MODELS[name] = fn
        CAM_LAYERS[name] = cam_layer
        CAM_METHODS[name] = cam_method
        if fixed_size:
            FIXED_SIZE.add(name)
        if gap_head:
            GAP_HEAD.add(name)
        return fn

    return deco


def register_model(name: str, cam_layer: Callable[[nn.Module], nn.Module | list[nn.Module]] | None = None):
    """Decorator: `--model NAME` builds the decorated callable (or nn.Module class), called as
    `fn(model_config, in_channels, n_classes)` (and `image_size=` when it takes that argument), trained from
    scratch like every model. The registering module is recorded in each run's config (`model.registered_in`), so
    a fresh process (`cnnlab predict`, a spawned study worker, a Ray task) imports it to rebuild the model; a name
    registered in a notebook or script (`__main__`) is known to that process and its forked workers only.
    `cam_layer` picks the layer a heatmap explains (default: found by a forward pass, `feature_map_layer`)."""
    if is_external(name) or not name:
        raise UserError(f"cannot register model '{name}': a registered name has no colon")
    if name in MODELS and name not in REGISTERED_IN:
        raise UserError(f"cannot register model '{name}': cnnlab has a model of that name")

    def deco(fn):
        register(name, cam_layer=cam_layer or _automatic_layer)(lambda cfg, c, n, s: call_builder(fn, cfg, c, n, s))
        module = getattr(fn, "__module__", "") or ""
        REGISTERED_IN[name] = "" if module == "__main__" else module
        return fn

    return deco


def check_model_name(cfg: ModelConfig) -> None:
    """The model name is cnnlab's, registered (its module imported when the config names it), or SOURCE:NAME;
    pretrained weights are refused. Builds nothing (the check that it builds is training/checks.py's)."""
    if cfg.pretrained:
        raise UserError(
            "cnnlab trains from scratch: pretrained weights are never loaded (remove pretrained = true; "
            "torchvision: and timm: models start from their libraries' random initialisation)"
        )
    if is_external(cfg.model):
        split_name(cfg.model)
        return
    import_registering_module(cfg, MODELS)
    if cfg.model not in MODELS:
        unknown = str(nearest(cfg.model, MODELS, "model"))
        raise UserError(f"{unknown[:-1]}; or torchvision:NAME, timm:NAME, package.module:builder)")


def model_source(name: str) -> str:
    """What a run's config records beside the model name so that any process can rebuild it: the module that
    registered it with `register_model` ("" for cnnlab's own, SOURCE:NAME names, and `__main__`)."""
    return REGISTERED_IN.get(name, "")


def _example(model: nn.Module, size: int = 64) -> torch.Tensor:
    first = next((m for m in model.modules() if isinstance(m, nn.Conv2d)), None)
    return torch.zeros(1, first.in_channels if first else 3, size, size)


def _automatic_layer(model: nn.Module, example: torch.Tensor | None = None) -> nn.Module | None:
    return feature_map_layer(model, example if example is not None else _example(model))


def last_feature_map(model: nn.Module) -> nn.Module | None:
    """The last activation or residual block before the head (the first Flatten or global pool): the last spatial
    map the classifier reads, after its non-linearity. A later in-place op would overwrite the saved activation,
    and nothing before the head modifies this output in place."""
    layers = list(spatial_layers(model).values())
    return layers[-1] if layers else None


def fine_and_last_blocks(model: nn.Module, stride: int = 8) -> list[nn.Module] | None:
    """The last residual block whose output has at least 1/`stride` of the input's side, and the last block, their
    maps fused: for the resnet at output stride 16, the third stage's last block (16 x 16 at 128 px) and the fourth's
    (8 x 8); at output stride 8 the last block alone. By Grad-CAM++, this pointed at the tumour best on
    validation patients (docs/results/explain.md)."""
    blocks, total = [], 1
    for m in model.children():
        conv = m.body[0] if isinstance(m, BasicBlock) else m
        if isinstance(conv, nn.Conv2d):
            total *= conv.stride[0]
        if isinstance(m, BasicBlock):
            blocks.append((total, m))
    if not blocks:
        return None
    fine = [m for s, m in blocks if s <= stride][-1:]
    return [m for m in fine if m is not blocks[-1][1]] + [blocks[-1][1]]


def spatial_layers(model: nn.Module) -> dict[str, nn.Module]:
    """The layers a heatmap can explain, by module name (as `model.named_modules()` names them): activations and
    residual blocks before the head."""
    kinds = (*{type(make()) for make in ACTIVATIONS.values()}, BasicBlock)
    out = {}
    for name, m in model.named_children():
        if isinstance(m, (nn.Flatten, nn.AdaptiveAvgPool2d)):
            break
        if isinstance(m, kinds):
            out[name] = m
    return out


def cam_layer(
    name: str, model: nn.Module, layer: str | None = None, example: torch.Tensor | None = None
) -> list[nn.Module]:
    """The layers a heatmap of model `name` explains: the registry's default (for models from outside cnnlab, the
    last spatial map before the head, found by a forward pass of `example`, a batch of the model's input shape),
    or `layer`, module names joined by commas (several: their maps fused, as LayerCAM does); UserError for a
    model without a spatial feature map or an unknown layer name."""
    if is_external(name):
        pick = _automatic_layer
    elif name not in MODELS:
        raise nearest(name, MODELS, "model")
    else:
        pick = CAM_LAYERS.get(name)
    if layer and pick is not None:  # the layers asked for are looked up below: no default needed
        default = []
    elif pick is _automatic_layer:
        default = _automatic_layer(model, example)
    else:
        default = pick(model) if pick else None
    if default is None:
        raise UserError(f"{name} has no spatial feature map to explain: a heatmap needs a convolutional model")
    if not layer:
        return list(default) if isinstance(default, (list, tuple)) else [default]
    modules = dict(model.named_modules())
    candidates = spatial_layers(model) if name in MODELS and pick is not _automatic_layer else modules
    picked = []
    for part in (p.strip() for p in layer.split(",")):
        if part not in modules or not part:
            raise nearest(part, candidates, f"layer of {name} (module names; several joined by commas)")
        picked.append(modules[part])
    return picked


def guidance_parts(model: nn.Module) -> tuple[nn.Module, nn.Linear]:
    """(the last spatial feature map, the linear head) of a `gap_head` model: the class activation map of class k is
    the head's row k weighing the feature map's channels (CAM, Zhou et al. 2016; Grad-CAM of that layer is the
    same map up to scale)."""
    children = list(model.children())
    layer = last_feature_map(model)
    after = children[children.index(layer) + 1 :] if layer in children else []
    if not after or not isinstance(after[-1], nn.Linear) or not any(isinstance(m, nn.AdaptiveAvgPool2d) for m in after):
        raise UserError("box guidance needs a model ending in global average pooling and one linear layer")
    if not all(isinstance(m, (nn.AdaptiveAvgPool2d, nn.Flatten, nn.Dropout, nn.Identity)) for m in after[:-1]):
        raise UserError("box guidance needs a model ending in global average pooling and one linear layer")
    return layer, after[-1]


def activation(name: str) -> nn.Module:
    if name not in ACTIVATIONS:
        raise nearest(name, ACTIVATIONS, "activation")
    return ACTIVATIONS[name]()


def pool(name: str, k: int) -> nn.Module:
    if name not in POOLS:
        raise nearest(name, POOLS, "pooling")
    return POOLS[name](k)


def build(cfg: ModelConfig, in_channels: int, n_classes: int, image_size: int) -> nn.Module:
    """The registered model `cfg.model` (a UserError with a "did you mean" for an unknown name), or a
    `torchvision:`, `timm:` or `package.module:builder` one, freshly initialised for `in_channels` x `image_size`
    inputs and `n_classes` outputs; never pretrained."""
    if is_external(cfg.model):
        return build_external(cfg, in_channels, n_classes, image_size)
    import_registering_module(cfg, MODELS)
    if cfg.model not in MODELS:
        raise nearest(cfg.model, MODELS, "model")
    return MODELS[cfg.model](cfg, in_channels, n_classes, image_size)


# ------------------------------------------------------------------------- the assignment's network


def _flat_size(features: nn.Module, in_channels: int, image_size: int) -> int:
    with torch.no_grad():
        out = features.eval()(torch.zeros(1, in_channels, image_size, image_size))
    if out.numel() == 0:
        raise UserError(f"image_size {image_size} is too small for this network's convolutions and pooling")
    return out.numel()


def simple_cnn(
    cfg: ModelConfig, in_channels: int, n_classes: int, image_size: int, batchnorm: bool, dropout: bool
) -> nn.Sequential:
    """The assignment's CNN: two conv/pool blocks and two linear layers; BatchNorm and Dropout optional.

    At 128 px with the defaults: 128 -conv4-> 125 -pool3-> 41 -conv4-> 38 -pool3-> 12, 64*12*12 = 9216. A
    `layers.Sequential`: training on the CPU, each convolution and its pooling run as one cheaper step.
    """
    p = cfg.dropout

    def block(cin, cout):
        layers = [nn.Conv2d(cin, cout, cfg.kernel_size, cfg.stride, cfg.padding), pool(cfg.pool, 3)]
        layers += [nn.BatchNorm2d(cout)] if batchnorm else []
        layers += [Dropout(p)] if dropout else []
        return layers + [activation(cfg.activation)]

    features = nn.Sequential(*block(in_channels, cfg.width), *block(cfg.width, 2 * cfg.width), nn.Flatten())
    flat = _flat_size(features, in_channels, image_size)
    head = [nn.Linear(flat, cfg.hidden)] + ([Dropout(p)] if dropout else [])
    head += [activation(cfg.activation), nn.Linear(cfg.hidden, n_classes)]
    return Sequential(*features, *head)


for _name, _bn, _do in [
    ("simple", False, False),
    ("simple-bn", True, False),
    ("simple-dropout", False, True),
    ("simple-bn-dropout", True, True),
]:
    register(_name, fixed_size=True, cam_layer=last_feature_map)(
        lambda cfg, c, n, s, _bn=_bn, _do=_do: simple_cnn(cfg, c, n, s, batchnorm=_bn, dropout=_do)
    )


@register("mlp", fixed_size=True, cam_layer=None)  # no spatial map: explain refuses it
def mlp(cfg: ModelConfig, in_channels: int, n_classes: int, image_size: int) -> nn.Sequential:
    """A fully connected baseline: what convolutions buy is measured against this."""
    d = in_channels * image_size * image_size
    layers: list[nn.Module] = [nn.Flatten(), nn.Linear(d, cfg.hidden)]
    layers += [nn.BatchNorm1d(cfg.hidden)] if cfg.batchnorm else []
    layers += [activation(cfg.activation), Dropout(cfg.dropout), nn.Linear(cfg.hidden, cfg.hidden // 2)]
    layers += [activation(cfg.activation), Dropout(cfg.dropout), nn.Linear(cfg.hidden // 2, n_classes)]
    return nn.Sequential(*layers)


# ------------------------------------------------------------------------------- size-agnostic nets


def conv_bn_act(cin: int, cout: int, cfg: ModelConfig, stride: int = 1) -> list[nn.Module]:
    layers: list[nn.Module] = [nn.Conv2d(cin, cout, 3, stride, 1, bias=not cfg.batchnorm)]
    layers += [nn.BatchNorm2d(cout)] if cfg.batchnorm else []
    return layers + [activation(cfg.activation)]


@register("adaptive", cam_layer=last_feature_map)
def adaptive(cfg: ModelConfig, in_channels: int, n_classes: int, image_size: int) -> nn.Sequential:
    """Any input size: 3x3 'same' convolutions, pooling halves the resolution while channels double,
    then AdaptiveAvgPool2d reduces whatever is left to one vector of n_channels."""
    layers: list[nn.Module] = []
    cin = in_channels
    for stage in range(4):
        cout = cfg.width * 2**stage
        for i in range(max(1, cfg.depth)):
            layers += conv_bn_act(cin if i == 0 else cout, cout, cfg)
        layers.append(pool(cfg.pool, 2))
        cin = cout
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), Dropout(cfg.dropout), nn.Linear(cin, n_classes)]
    return nn.Sequential(*layers)


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, cfg: ModelConfig):
        super().__init__()
        self.body = nn.Sequential(
            *conv_bn_act(cin, cout, cfg, stride),
            nn.Conv2d(cout, cout, 3, 1, 1, bias=not cfg.batchnorm),
            *([nn.BatchNorm2d(cout)] if cfg.batchnorm else []),
        )
        # ResNet-D shortcut: average-pool, then a 1x1 convolution. It keeps all pixels' information, and it
        # avoids a strided 1x1 channels_last convolution whose CPU backward crashes in this PyTorch build.
        self.skip = (
            nn.Identity()
            if stride == 1 and cin == cout
            else nn.Sequential(
                *([nn.AvgPool2d(stride, ceil_mode=True)] if stride > 1 else []),
                nn.Conv2d(cin, cout, 1, bias=not cfg.batchnorm),
                *([nn.BatchNorm2d(cout)] if cfg.batchnorm else []),
            )
        )
        self.act = activation(cfg.activation)

    def forward(self, x):
        return self.act(self.body(x) + self.skip(x))


@register("resnet", cam_layer=fine_and_last_blocks, gap_head=True, cam_method="gradcam++")
def resnet(cfg: ModelConfig, in_channels: int, n_classes: int, image_size: int) -> nn.Sequential:
    """A small residual CNN: a strided stem, four stages of `depth` basic blocks, widths doubling. Its last feature
    map has 1/16 of the input's side; with output_stride = 8 the last stage keeps the third stage's resolution and
    width (the same cost, a map twice as fine for heatmaps and box guidance)."""
    layers: list[nn.Module] = [*conv_bn_act(in_channels, cfg.width, cfg, stride=2)]
    cin = cfg.width
    for stage in range(4):
        keep = stage == 3 and cfg.output_stride == 8
        cout = cfg.width * 2 ** (2 if keep else stage)
        for i in range(max(1, cfg.depth)):
            layers.append(BasicBlock(cin, cout, 2 if (i == 0 and stage > 0 and not keep) else 1, cfg))
            cin = cout
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), Dropout(cfg.dropout), nn.Linear(cin, n_classes)]
    return nn.Sequential(*layers)
