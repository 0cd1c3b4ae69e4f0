"""One typed config describes a run: loadable from TOML, overridable by `--set key=value`, saved with the run.

Field names are unique across sections, so a key may be written bare (`seed=3`, `image_size=64`) or
qualified (`train.seed=3`, `data.dedupe=true`). TOML files use the sections. The defaults below are
`cnnlab train`'s; a recipe (`recipes/*.toml`, e.g. `assignment`, the base of `cnnlab study`) is a TOML file of
overrides. Types are checked here, as values are set; every check on the values themselves is in
`cnnlab.training.check_config` (training/checks.py), which runs before any work.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import tomllib
import types
import typing
from dataclasses import dataclass, field, fields
from pathlib import Path

import tomli_w

from cnnlab.errors import UserError, nearest
from cnnlab.files import write_text

RECIPES = Path(__file__).parent / "recipes"


@dataclass
class DataConfig:
    path: str = ""
    image_size: int = 128
    resize: str = "squash"  # squash | pad | keep (variable size, for size-agnostic models)
    channels: int = 3  # 1 = gray
    crop: str = "none"  # none | foreground
    # LOW:HIGH (e.g. 0:4095, -1000:400): the values of 16-bit, 32-bit, float and gray DICOM images (DICOM after its
    # modality LUT: CT in HU) mapped linearly to 0..255, the same for every image, those outside clipped. "" = each
    # image's own range (min..max: suits MRI), or a DICOM file's own window when it has one. 8-bit and colour
    # images are never windowed: their values already are display values, and a window meant for 12-bit data
    # would black them out.
    window: str = ""
    val_fraction: float = 0.3
    split_seed: int = 42
    dedupe: bool = False  # keep duplicate groups whole on one side of the train/val split
    split: str = "random"  # random | blocks (runs of block_size files in name order stay together) | groups
    block_size: int = 20
    group_file: str = ""  # split = groups: CSV (path,group) of files that stay together (e.g. one patient's)
    val_manifest: str = ""  # CSV (path,class[,split]) of the training images to validate on, instead of a split
    train_manifest: str = ""  # CSV (path,class) of the training images to use at all; others are left out (a CV fold)
    boxes: str = ""  # CSV (path,cx,cy,w,h) of object boxes: box-guided training reads its training images' rows only
    strict: bool = False  # unusable files are an error instead of a warning
    class_map: str = ""  # test_name=train_name,...
    cache_dir: str = ""
    # auto (in memory when the decoded set fits easily, else memory-mapped from the cache folder) | memory | mmap
    cache: str = "auto"
    imbalance: str = "none"  # none | weights | oversample | undersample
    # dataset (training mean/std per channel) | image (each image to mean 0, std 1) | equalize (each image's
    # nonzero pixels to their rank in its own histogram, then to mean 0, std 1: blind to any monotone
    # change of brightness, contrast or gamma, i.e. to how a scanner or an export window mapped intensities)
    normalize: str = "dataset"


@dataclass
class AugmentConfig:
    hflip: bool = False
    vflip: bool = False
    rotate: float = 0.0  # max degrees
    translate: float = 0.0  # max shift, fraction of the side
    scale_min: float = 1.0  # random resized crop: zoom in up to 1/scale_min
    scale_max: float = 1.0  # values above 1 zoom out
    brightness: float = 0.0  # +- fraction
    contrast: float = 0.0  # +- fraction
    gamma: float = 0.0  # log-uniform in [1/(1+g), 1+g]
    blur: float = 0.0  # probability of a 3x3 blur
    sharpness: float = 0.0  # sharpness factor uniform in [1 - s, 1 + s] (0 = blurred, 1 = unchanged, 2 = sharpened)
    noise: float = 0.0  # std of gaussian noise, in units of the normalised input
    mixup: float = 0.0  # alpha of the Beta(alpha, alpha) mixing weight; 0 = off
    jpeg: float = 0.0  # probability of re-encoding as JPEG at a random quality 30-95
    erase: float = 0.0  # probability of blacking out one random rectangle (random erasing)


@dataclass
class ModelConfig:
    model: str = "simple-bn-dropout"
    width: int = 32  # channels of the first block
    depth: int = 2  # residual blocks per stage (resnet), convs per stage (adaptive)
    kernel_size: int = 4
    stride: int = 1
    padding: int = 0
    activation: str = "relu"
    pool: str = "max"
    dropout: float = 0.2
    batchnorm: bool = True  # for models whose name does not fix it (mlp, adaptive, resnet)
    hidden: int = 512
    output_stride: int = 16  # resnet: 16, or 8 (the last stage keeps its resolution: a finer map to explain)
    pretrained: bool = False  # refused when true: cnnlab trains from scratch
    # the module whose import registers `model` (cnnlab.register_model): recorded by make_config, imported by every
    # process that rebuilds the run
    registered_in: str = ""


@dataclass
class OptimConfig:
    optimizer: str = "adam"
    lr: float = 1e-3
    momentum: float = 0.9  # sgd, rmsprop
    nesterov: bool = False
    beta1: float = 0.9
    beta2: float = 0.999
    eps: float = 1e-8
    alpha: float = 0.99  # rmsprop smoothing
    weight_decay: float = 0.0


@dataclass
class ScheduleConfig:
    scheduler: str = "none"  # none | plateau | step | cosine | onecycle
    warmup_epochs: int = 0
    plateau_patience: int = 3
    plateau_factor: float = 0.1
    step_size: int = 10
    step_gamma: float = 0.1
    min_lr: float = 0.0


@dataclass
class LossConfig:
    label_smoothing: float = 0.0
    # with data.boxes: the weight of the localisation term, -log of the true class map's share inside the box
    # (0.3: chosen on a validation fold of the figshare set, docs/results/explain.md)
    box_weight: float = 0.3


@dataclass
class TrainConfig:
    epochs: int = 50
    batch_size: int = 256
    eval_batch_size: int = 512
    seed: int = 0
    monitor: str = "val_f1"  # val_f1 | val_loss | val_acc
    patience: int = 10  # early stopping; 0 = never stop early
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    precision: str = "auto"  # auto (bf16 autocast on GPUs and on CPUs with native bf16, else fp32) | fp32 | bf16
    channels_last: bool = True
    threads: int = 0  # 0 = all cores
    ema: float = 0.0  # weight EMA decay (e.g. 0.999); 0 = off
    tta: bool = False  # average predictions over horizontal flips at evaluation
    save_every: int = 0  # also keep the evaluated weights of every Nth epoch as epoch-NNN.pt; 0 = off
    tensorboard: bool = False  # also log every epoch's figures to RUN/tb/ (`tensorboard --logdir RUN or STUDY`)


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    # ---------------------------------------------------------------- keys

    @staticmethod
    @functools.cache
    def keys() -> dict[str, tuple[str, str, type]]:
        """bare name -> (section, name, type). Qualified names are `section.name`."""
        out = {}
        for sec in fields(Config):
            cls = type(sec.default_factory())
            hints = typing.get_type_hints(cls)
            for f in fields(cls):
                out[f.name] = (sec.name, f.name, hints[f.name])
        return out

    def get(self, key: str):
        sec, name, _ = resolve_key(key)
        return getattr(getattr(self, sec), name)

    def set(self, key: str, value) -> None:
        sec, name, typ = resolve_key(key)
        setattr(getattr(self, sec), name, coerce(value, typ, key))

    def update(self, overrides: dict) -> Config:
        for k, v in overrides.items():
            self.set(k, v)
        return self

    def copy(self) -> Config:
        """A deep copy; a config already checked (`make_config`) stays known as checked."""
        cfg = Config.from_dict(self.to_dict())
        if hasattr(self, "_checked"):
            cfg._checked = self._checked
        return cfg

    # ---------------------------------------------------------------- io

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict, where: str = "config") -> Config:
        cfg = cls()
        for sec, body in d.items():
            if isinstance(body, dict):
                if sec not in {f.name for f in fields(Config)}:
                    raise _unknown(sec, where, sections=True)
                for k, v in body.items():
                    if k not in {f.name for f in fields(getattr(cfg, sec))}:
                        raise _unknown(f"{sec}.{k}", where)
                    cfg.set(f"{sec}.{k}", v)
            else:
                cfg.set(sec, body)  # bare keys at top level are allowed too
        return cfg

    @classmethod
    def load(cls, path) -> Config:
        return cls.from_dict(read_toml(path, "config file"), where=str(path))

    def save(self, path) -> None:
        write_text(Path(path), tomli_w.dumps(self.to_dict()))

    def absolute(self) -> Config:
        """A copy whose paths (data, cache, validation manifest) are absolute: a run folder's config then means
        the same data from any working directory."""
        cfg = self.copy()
        for key in ("path", "cache_dir", "val_manifest", "train_manifest", "group_file", "boxes"):
            if cfg.get(key):
                cfg.set(key, str(Path(cfg.get(key)).expanduser().resolve()))
        return cfg


def load_recipe(name_or_path) -> Config:
    """A config file by path, or a recipe shipped with cnnlab by name (`assignment`, `mri`)."""
    path = Path(name_or_path)
    if path.suffix != ".toml" and not path.exists():
        shipped = {p.stem: p for p in RECIPES.glob("*.toml")}
        if str(name_or_path) not in shipped:
            raise nearest(str(name_or_path), shipped, "recipe (or a .toml file)")
        path = shipped[str(name_or_path)]
    return Config.load(path)


def read_toml(path, what: str) -> dict:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{what} not found: {path}")
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise UserError(f"{path}: not UTF-8 text (TOML files are UTF-8)") from None
    except tomllib.TOMLDecodeError as e:
        raise UserError(f"{path}: not valid TOML: {e}") from e


def _unknown(key: str, where: str, sections: bool = False) -> UserError:
    pool = (
        [f.name for f in fields(Config)]
        if sections
        else (list(Config.keys()) + [f"{s}.{n}" for s, n, _ in Config.keys().values()])
    )
    close = difflib.get_close_matches(key, pool, n=1, cutoff=0.5)
    hint = f"; did you mean '{close[0]}'?" if close else ""
    what = "section" if sections else "key"
    return UserError(f"unknown config {what} '{key}' in {where}{hint}")


def resolve_key(key: str) -> tuple[str, str, type]:
    keys = Config.keys()
    if "." in key:
        sec, name = key.split(".", 1)
        if name in keys and keys[name][0] == sec:
            return keys[name]
    elif key in keys:
        return keys[key]
    raise _unknown(key, "--set")


def coerce(value, typ, key: str):
    """A TOML value or a command-line string -> the field's type, or one clear error."""
    origin = typing.get_origin(typ)
    if origin in (typing.Union, types.UnionType):
        typ = next(a for a in typing.get_args(typ) if a is not type(None))
    try:
        if typ is bool:
            if isinstance(value, bool):
                return value
            s = str(value).strip().lower()
            if s in ("1", "true", "yes", "on"):
                return True
            if s in ("0", "false", "no", "off"):
                return False
            raise ValueError
        if typ is int:
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError
            return int(float(value)) if isinstance(value, str) and "e" in value.lower() else int(value)
        if typ is float:
            if isinstance(value, bool):
                raise ValueError
            return float(value)
        if typ is str:
            return str(value)
    except (TypeError, ValueError):
        raise UserError(f"bad value for {key}: '{value}' is not a {typ.__name__}") from None
    raise UserError(f"cannot set {key}")  # pragma: no cover


def parse_sets(items) -> dict[str, str]:
    """`key=value` strings from the command line -> dict (checked against the config keys)."""
    out = {}
    for item in items or ():
        if "=" not in item:
            raise UserError(f"bad --set '{item}': expected key=value")
        k, v = item.split("=", 1)
        k = k.strip()
        resolve_key(k)
        out[k] = v.strip()
    return out
