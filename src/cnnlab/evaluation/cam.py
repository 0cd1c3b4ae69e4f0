"""Class activation maps on a loaded engine (`explain_arrays`): Grad-CAM, Grad-CAM++, LayerCAM and the other
gradient-weighted maps of the grad-cam package (pytorch-grad-cam, imported only here, inside functions), on the layer
the model registry names or on the layers asked for (several: their maps fused).

Below evaluation/testing.py (whose test gallery uses it) and the explain package (which adds run loading, files
and box scores).
"""

from __future__ import annotations

import numpy as np
import torch

from cnnlab.data.image_files import shape_batches
from cnnlab.errors import UserError, nearest
from cnnlab.training.engine import Engine
from cnnlab.training.models import cam_layer

# our name -> pytorch_grad_cam's class: the gradient-weighted maps (the fast ones; ScoreCAM and AblationCAM cost a
# forward pass a channel, too slow for a CPU gallery)
METHODS = {
    "gradcam": "GradCAM",
    "gradcam++": "GradCAMPlusPlus",
    "hirescam": "HiResCAM",
    "xgradcam": "XGradCAM",
    "layercam": "LayerCAM",
    "gradcam-elementwise": "GradCAMElementWise",
    "eigengradcam": "EigenGradCAM",
}


def resolve_method(method: str | None, model_name: str) -> str:
    """`method`, or (None) the default of the model's family (the registry's `cam_method`)."""
    from cnnlab.training.models import CAM_METHODS

    return method or CAM_METHODS.get(model_name, "gradcam")


def cam_class(method: str):
    """The grad-cam class of `method`; UserError for an unknown method or a missing package."""
    if method not in METHODS:
        raise nearest(method, METHODS, "explanation method")
    try:
        import pytorch_grad_cam
    except ImportError:
        raise UserError("heatmaps need the grad-cam package: pip install 'cnnlab[explain]'") from None
    return getattr(pytorch_grad_cam, METHODS[method])


def class_index(name: str, classes: list[str]) -> int:
    if name not in classes:
        raise nearest(name, classes, "class")
    return classes.index(name)


def explain_arrays(
    eng: Engine,
    arrays: list[np.ndarray],
    classes: list[str],
    method: str | None = None,
    target: str | None = None,
    *,
    model_name: str,
    layer: str | None = None,
    batch_size: int = 32,
) -> list[dict]:
    """Heatmaps for decoded images, e.g. an upload the web demo decoded with `data.read_images`.

    eng: a loaded run's engine (`evaluation.load_run(run)[2]`); arrays: C x H x W uint8 arrays as `data.decode`
    returns them; classes: the run's class names (`ckpt["classes"]`); method: a name of METHODS (None: the model
    family's default); target: the class to explain (default: each image's predicted class); model_name: the run's
    `cfg.model.model`, whose registry entry names the default layer; layer: module names instead (comma-joined:
    their maps fused). Returns one dict an image: label, prob, probs ({class: prob}), target, heatmap (H x W
    float32 in [0, 1], the image's size), image (H x W x C uint8). The probabilities are `cnnlab predict`'s (the
    run's precision and flip TTA); the map is computed in fp32 with autocast off, without TTA.
    """
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    make_cam = cam_class(resolve_method(method, model_name))
    example = torch.zeros(1, *arrays[0].shape) if arrays else None  # the input shape a layer search runs on
    layers = cam_layer(model_name, eng.model, layer, example)
    wanted = None if target is None else class_index(target, classes)
    eng.model.eval()
    rows: list[dict] = [{} for _ in arrays]  # filled by index: batches group images of one shape
    for idx in shape_batches(arrays, batch_size):
        x = torch.from_numpy(np.stack([arrays[i] for i in idx]))
        with torch.inference_mode():
            probs = eng.logits(eng.eval_input(x)).float().softmax(1).cpu()
        picks = [wanted if wanted is not None else int(p.argmax()) for p in probs]
        # Gradients are needed even if a caller runs under no_grad; the map in fp32, whatever the run's precision.
        with (
            torch.enable_grad(),
            torch.autocast(eng.device.type, enabled=False),
            make_cam(model=eng.model, target_layers=layers) as cam,
        ):
            maps = cam(input_tensor=eng.eval_input(x), targets=[ClassifierOutputTarget(k) for k in picks])
        eng.model.zero_grad(set_to_none=True)
        for j, i in enumerate(idx):
            label = int(probs[j].argmax())
            rows[i] = {
                "label": classes[label],
                "prob": float(probs[j, label]),
                "probs": {c: float(probs[j, k]) for k, c in enumerate(classes)},
                "target": classes[picks[j]],
                "heatmap": np.clip(np.nan_to_num(maps[j]), 0, 1).astype(np.float32),
                "image": np.ascontiguousarray(arrays[i].transpose(1, 2, 0)),
            }
    return rows
