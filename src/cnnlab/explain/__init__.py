"""Explain: where a run's model looks. Heatmap overlays and contact sheets for image files
(`explain_images`), and how well heatmaps point at known boxes (`localisation`: the pointing game, strict and
with a tolerance, and the energy in the box, beside the random, centre and class-prior baselines).

Names are imported from their modules on first use (`cnnlab.lazy_face`).
"""

from cnnlab import lazy_face

_EXPORTS = {
    "heatmaps": "heatmaps",
    "explain_images": "heatmaps",
    "localisation": "heatmaps",
    "read_boxes": "heatmaps",
    "box_scores": "pointing",
    "point_hits": "pointing",
    "tolerance_px": "pointing",
    "class_prior": "pointing",
}
__all__ = list(_EXPORTS)
__getattr__, __dir__ = lazy_face(__name__, _EXPORTS)
