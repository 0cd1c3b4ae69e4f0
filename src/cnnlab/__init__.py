"""cnnlab: train CNN image classifiers from scratch, compare training choices, teach optimizers.

The Python API (docs/api.md): `inspect`, `train`, `load`, `study`, and the `Run` and `StudyResults` they
return; every user mistake raises `UserError` with a one-line message. Importing cnnlab imports no torch.
"""

from cnnlab.api import Image, Report, Run, StudyResults, inspect, load, study, train
from cnnlab.errors import UserError

__version__ = "0.1.0"
__all__ = ["Image", "Report", "Run", "StudyResults", "UserError", "inspect", "load", "study", "train"]
