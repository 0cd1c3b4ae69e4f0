"""Studies: many runs. Executors (where runs train: in this process, in worker processes, or on Ray), studies
(a base config plus named variants, sweeps, the assignment's chain of stages), cross-validation on a data set's own
folds, and the reports (Markdown and HTML).

Names are imported from their modules on first use (`cnnlab.lazy_face`).
"""

from cnnlab import lazy_face

_EXPORTS = {
    "Job": "executors",
    "Executor": "executors",
    "make_executor": "executors",
    "resolve_jobs": "executors",
    "running": "executors",
    "run_job": "executors",
    "EXECUTORS": "executors",
    "Study": "definitions",
    "load_study": "definitions",
    "sweep": "definitions",
    "run_study": "definitions",
    "run_assignment": "definitions",
    "make_jobs": "definitions",
    "NAMES": "definitions",
    "run_cv": "cross_validation",
    "read_folds": "cross_validation",
    "study_report": "reports",
    "assignment_report": "reports",
    "Doc": "reports",
}
__all__ = list(_EXPORTS)
__getattr__, __dir__ = lazy_face(__name__, _EXPORTS)
