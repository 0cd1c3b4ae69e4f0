"""Datatools: looking at a data set before training. `cnnlab data inspect` (`inspect_dataset`), `cnnlab data
audit` (`run_audit`: duplicates, label conflicts, test leakage) and `--against` another set (`audit_against`).

Names are imported from their modules on first use (`cnnlab.lazy_face`).
"""

from cnnlab import lazy_face

_EXPORTS = {
    "inspect_dataset": "inspection",
    "format_report": "inspection",
    "run_audit": "audit",
    "format_audit": "audit",
    "audit_against": "audit_against",
    "format_against": "audit_against",
}
__all__ = list(_EXPORTS)
__getattr__, __dir__ = lazy_face(__name__, _EXPORTS)
