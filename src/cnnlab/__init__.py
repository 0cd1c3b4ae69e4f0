"""cnnlab: train CNN image classifiers from scratch, compare training choices, teach optimizers.

The Python API (docs/api.md): `inspect`, `train`, `load`, `lr_find`, `study`, `tune`, `cv`, `register_model`, and
the `Run` and `StudyResults` they return; every user mistake raises `UserError` with a one-line message.
Importing cnnlab imports no torch.

The packages, in the order they depend on one another (docs/ARCHITECTURE.md): `reporting` (log lines, progress,
figures, the report language), `data` (finding, splitting, decoding and caching images), `training` (everything
one run needs), `evaluation` (the once-only test, predictions, class activation maps), `explain`, `export`,
`serve`, `datatools` (inspect and audit a data set), `studies` (many runs: executors, studies, cross-validation,
reports), `teach` (optimizers from scratch on 2-D functions) and `cli` (the `cnnlab` command).
"""

from __future__ import annotations

import importlib

__version__ = "0.4.0"
__all__ = [
    "Image",
    "Report",
    "Run",
    "StudyResults",
    "UserError",
    "cv",
    "inspect",
    "load",
    "lr_find",
    "register_model",
    "study",
    "train",
    "tune",
]


def lazy_face(package: str, exports: dict[str, str]):
    """The `__getattr__` and `__dir__` of a package face (PEP 562): each public name is imported from its module on
    first use, so importing a package imports nothing heavy (`cnnlab predict FILE.onnx` never imports torch).

    exports: public name -> the module of `package` that defines it."""

    def __getattr__(name: str):
        if name not in exports:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        return getattr(importlib.import_module(f"{package}.{exports[name]}"), name)

    def __dir__() -> list[str]:
        return sorted(exports)

    return __getattr__, __dir__


# After lazy_face: the package faces that api imports use it.
from cnnlab.api import Image, Report, Run, StudyResults, cv, inspect, load, register_model, study, train  # noqa: E402
from cnnlab.errors import UserError  # noqa: E402

# The learning-rate range test and the search import torch or Optuna when first used: imported then, not here.
_LAZY = {"lr_find": "training.lr_finder", "tune": "studies.tuning"}
__getattr__, _lazy_dir = lazy_face(__name__, _LAZY)


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
