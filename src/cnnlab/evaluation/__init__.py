"""Evaluation: a trained run scored and used. `load_run` (a checkpoint as an engine), `test_run` (the
once-only test, counted in evaluations.json), `predict_files` and `prediction_rows`, and class activation maps
(`explain_arrays`).

Names are imported from their modules on first use (`cnnlab.lazy_face`).
"""

from cnnlab import lazy_face

_EXPORTS = {
    "load_run": "loading",
    "test_run": "testing",
    "predict_files": "prediction",
    "prediction_rows": "prediction",
    "explain_arrays": "cam",
    "METHODS": "cam",
}
__all__ = list(_EXPORTS)
__getattr__, __dir__ = lazy_face(__name__, _EXPORTS)
