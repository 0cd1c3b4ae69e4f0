"""Export: a run as an ONNX file (`export_onnx`, checked against PyTorch before it is written), and such a file
run on onnxruntime alone, without torch (`open_model`, `predict_onnx`).

Names are imported from their modules on first use (`cnnlab.lazy_face`).
"""

from cnnlab import lazy_face

_EXPORTS = {
    "export_onnx": "onnx_export",
    "open_model": "onnx_runtime",
    "onnx_logits": "onnx_runtime",
    "predict_onnx": "onnx_runtime",
}
__all__ = list(_EXPORTS)
__getattr__, __dir__ = lazy_face(__name__, _EXPORTS)
