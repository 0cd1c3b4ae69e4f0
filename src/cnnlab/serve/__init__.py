"""Serve: `cnnlab serve RUN`, a local Gradio page that classifies an uploaded image and shows its heatmap.

Names are imported from their modules on first use (`cnnlab.lazy_face`).
"""

from cnnlab import lazy_face

_EXPORTS = {
    "make_app": "page",
    "serve_forever": "page",
    "start": "page",
}
__all__ = list(_EXPORTS)
__getattr__, __dir__ = lazy_face(__name__, _EXPORTS)
