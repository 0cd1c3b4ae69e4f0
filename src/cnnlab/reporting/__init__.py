"""Reporting: how cnnlab talks to a person. The one `Reporter` (log lines, progress bars, the report language)
handed to the work; progress bars (a widget in Jupyter, a text bar on a terminal, silent
in a log), every sentence of a report in each language (`text`, `check_lang`), and every figure (`figures`).

Names are imported from their modules on first use (`cnnlab.lazy_face`).
"""

from cnnlab import lazy_face

_EXPORTS = {
    "Report": "display",
    "Image": "display",
    "Reporter": "reporter",
    "epoch_line": "reporter",
    "progress_bar": "progress",
    "in_notebook": "progress",
    "text": "strings",
    "check_lang": "strings",
    "translations": "strings",
    "LANGS": "strings",
    "curves": "figures",
    "overlay": "figures",
    "overlay_figure": "figures",
    "confusion_matrix": "figures",
    "confusion_panels": "figures",
    "contact_sheet": "figures",
    "heatmap_grid": "figures",
    "distance_histogram": "figures",
    "group_gallery": "figures",
}
__all__ = list(_EXPORTS)
__getattr__, __dir__ = lazy_face(__name__, _EXPORTS)
