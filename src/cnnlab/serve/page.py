"""`cnnlab serve RUN`: a local web page (Gradio) that classifies a dropped image with a run's best checkpoint and
shows the class probabilities, a heatmap over the image, and the run's summary.

Gradio is imported only here, inside functions, so the rest of cnnlab never needs it. The page decodes uploads
with cnnlab's own code (`data.read_images` with the run's `DecodeSettings`), never with Gradio's image
component, so a file that is not an image, or one that declares 30000 x 30000 pixels, is a message on the page.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cnnlab.config import Config
from cnnlab.data.decode import DecodeSettings
from cnnlab.data.image_files import read_images
from cnnlab.errors import UserError
from cnnlab.training import run_folder

ALPHA = 0.45  # the heatmap's weight in the overlay
SHOWN_SIDE = 320  # each panel's long side on the page
GAP = 8  # white pixels between the image and its overlay
TOP_CLASSES = 5


def _gradio():
    """The gradio module, imported on demand, with analytics off (the page must start without a network)."""
    os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
    try:
        import gradio
    except ImportError:
        raise UserError("cnnlab serve needs Gradio: pip install cnnlab[serve]") from None
    return gradio


@dataclass
class Served:
    """A run loaded once for the page: its folder, the checkpoint's config, the checkpoint and the engine."""

    run: Path
    cfg: Config
    ckpt: dict
    engine: object

    @property
    def prep(self) -> DecodeSettings:
        return DecodeSettings.of(self.cfg.data)


def load(run: Path) -> Served:
    """The run behind the page; a folder that is not a finished run is a UserError, before any server starts."""
    from cnnlab.evaluation.loading import load_run

    cfg, ckpt, eng = load_run(Path(run))
    return Served(Path(run), cfg, ckpt, eng)


# ------------------------------------------------------------------------------------------- summary


def summary_markdown(s: Served) -> str:
    """The run at a glance: model, data, classes, best validation macro-F1 and its epoch, each test's score."""
    from cnnlab.evaluation.testing import result_files

    classes = list(s.ckpt["classes"])
    lines = [
        f"**Run** `{s.run}`",
        f"- **Model** `{s.cfg.model.model}`, {s.cfg.data.image_size} px, "
        f"{'gray' if s.cfg.data.channels == 1 else 'RGB'}",
        f"- **Data** `{s.cfg.data.path}`: {len(classes)} classes ({', '.join(classes)})",
    ]
    history = s.run / run_folder.HISTORY
    summary = (
        run_folder.summarize_history(run_folder.read_history(history), int(s.ckpt.get("epoch", 0)))
        if history.is_file()
        else {}
    )
    if summary:
        lines.append(
            f"- **Validation** best macro-F1 **{summary['best_val_f1']:.3f}** at epoch "
            f"{summary['best_epoch']} of {summary['epochs']} (accuracy {summary['best_val_acc']:.3f})"
        )
    else:
        lines.append("- **Validation** no history.csv in the run")
    tests = result_files(s.run)  # RUN/tests/NAME/test.json, one an evaluation (or an older run's test.json)
    if not tests:
        lines.append("- **Test** not tested yet (`cnnlab test RUN`)")
    for name, path in tests.items():
        lines.append(f"- **Test** {f'`{name}`: ' if len(tests) > 1 else ''}{_test_line(path)}")
    return "\n".join(lines)


def _test_line(path: Path) -> str:
    try:
        t = json.loads(path.read_text(encoding="utf-8"))
        return (
            f"macro-F1 **{t['macro_f1']:.3f}**, accuracy {t['accuracy']:.3f} on {t['n_images']} images "
            f"(evaluation {t.get('evaluation_number', 1)})"
        )
    except (ValueError, KeyError, TypeError):  # a damaged test.json must not take the page down
        return f"{path.name} is damaged or not a cnnlab test result"


# ---------------------------------------------------------------------------------------- prediction


def overlay(image: np.ndarray, heatmap: np.ndarray, alpha: float = ALPHA) -> np.ndarray:
    """H x W x C uint8 image (C 1 or 3) and H' x W' heatmap in [0, 1] -> H x W x 3 uint8, jet colours blended in."""
    from matplotlib import colormaps
    from PIL import Image

    rgb = _rgb(image)
    h, w = rgb.shape[:2]
    heat = np.asarray(heatmap, dtype=np.float32)
    if heat.shape != (h, w):  # a coarser map: stretch it over the image
        heat = np.asarray(Image.fromarray(heat, "F").resize((w, h), Image.Resampling.BILINEAR))
    colour = colormaps["jet"](np.clip(heat, 0.0, 1.0))[..., :3] * 255.0
    return ((1.0 - alpha) * rgb.astype(np.float32) + alpha * colour).round().clip(0, 255).astype(np.uint8)


def _rgb(image: np.ndarray) -> np.ndarray:
    return np.repeat(image, 3, axis=2) if image.shape[2] == 1 else image[..., :3]


def _enlarged(picture: np.ndarray) -> np.ndarray:
    """Enlarged to SHOWN_SIDE on its long side: a 32-pixel input is unreadable at its own size."""
    from PIL import Image

    h, w = picture.shape[:2]
    scale = SHOWN_SIDE / max(h, w)
    if scale <= 1:
        return picture
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    return np.asarray(Image.fromarray(picture).resize(size, Image.Resampling.BILINEAR))


def picture(image: np.ndarray, heatmap: np.ndarray | None = None) -> np.ndarray:
    """What the page shows: the image as the model sees it (H x W x C uint8) and, beside it, the heatmap overlay."""
    panels = [_enlarged(_rgb(image))]
    if heatmap is not None:
        gap = np.full((panels[0].shape[0], GAP, 3), 255, np.uint8)
        panels += [gap, _enlarged(overlay(image, heatmap))]
    return np.concatenate(panels, axis=1)


def predict_image(s: Served, path) -> tuple[str, dict | None, np.ndarray | None]:
    """One upload -> (message, {class: probability} or None, overlay picture or None). Never raises: whatever goes
    wrong is the message the page shows."""
    if not path:
        return "Drop an image or click to pick one.", None, None
    name = Path(path).name
    try:
        _, arrays = read_images([Path(path)], s.prep)  # cnnlab's decoding; a bad file is a UserError
        return _explain(s, Path(path), arrays[0])
    except UserError as e:
        return f"**Cannot use {name}**: {str(e).replace(str(path), name)}", None, None
    except Exception as e:  # the page's boundary: an unexpected failure is shown, the server keeps serving
        return f"**Unexpected error on {name}**: {type(e).__name__}: {e}", None, None


def _explain(s: Served, path: Path, array: np.ndarray) -> tuple[str, dict, np.ndarray]:
    """The prediction and its heatmap, on the engine loaded once; a model without a spatial map (an MLP) gets its
    probabilities alone."""
    from cnnlab.explain.heatmaps import explain_arrays

    try:
        h = explain_arrays(s.engine, [array], list(s.ckpt["classes"]), model_name=s.cfg.model.model)[0]
    except UserError as e:  # no heatmap for this model (or no grad-cam package): say why, still classify
        import torch

        from cnnlab.evaluation.prediction import prediction_rows

        s.engine.model.eval()
        with torch.inference_mode():
            probs = s.engine.logits(s.engine.eval_input(torch.from_numpy(array)[None])).softmax(1).cpu()
        row = prediction_rows([path], probs, list(s.ckpt["classes"]))[0]
        return f"**{row['label']}**: no heatmap ({e})", row["probs"], picture(array.transpose(1, 2, 0))
    return f"**{h['label']}** ({h['prob']:.1%})", h["probs"], picture(h["image"], h["heatmap"])


# ------------------------------------------------------------------------------------------------ page


def make_app(run: Path):
    """The page for a run, as a gradio.Blocks (not started). A folder that is not a run is a UserError."""
    gr = _gradio()
    s = load(Path(run))
    with gr.Blocks(title=f"cnnlab: {s.run.name}", analytics_enabled=False) as app:
        gr.Markdown(f"# cnnlab · {s.run.name}\nDrop an image to classify it with the run's best checkpoint.")
        with gr.Row():
            with gr.Column(scale=1):
                upload = gr.File(label="Image", type="filepath", elem_id="upload")
                message = gr.Markdown("Drop an image or click to pick one.", elem_id="message")
                probs = gr.Label(label="Class probabilities", num_top_classes=TOP_CLASSES, elem_id="probs")
            with gr.Column(scale=1):
                heat = gr.Image(
                    label="As the model sees it, and its heatmap (red: what drove the prediction)",
                    type="numpy",
                    interactive=False,
                    elem_id="heatmap",
                    format="png",
                )
        with gr.Row():
            with gr.Column(scale=1):
                gr.Markdown(summary_markdown(s), elem_id="summary")
            with gr.Column(scale=1):
                curves = s.run / run_folder.CURVES
                gr.Image(
                    str(curves) if curves.is_file() else None,
                    label="Training curves",
                    interactive=False,
                    elem_id="curves",
                )
        # One upload at a time (Gradio's default concurrency of 1): the heatmap hooks into the shared model.
        upload.change(lambda p: predict_image(s, p), inputs=upload, outputs=[message, probs, heat], concurrency_limit=1)
    return app


def start(app, host: str = "127.0.0.1", port: int = 7860) -> str:
    """Start the page's server in the background; -> its URL. A port in use is a UserError."""
    try:
        app.launch(
            server_name=host,
            server_port=port,
            prevent_thread_lock=True,
            quiet=True,
            share=False,
            show_error=True,
            ssr_mode=False,
            mcp_server=False,
            enable_monitoring=False,
            max_file_size="100mb",
            footer_links=["gradio", "settings"],
        )
    except OSError as e:
        raise UserError(f"cannot serve on {host}:{port}: {e}") from None
    return f"http://{host}:{port}/"


def serve_forever(app, host: str, port: int, log=print) -> None:
    """Serve until Ctrl-C, then close the server."""
    url = start(app, host, port)
    log(f"serving on {url} (Ctrl-C stops)")
    try:
        while True:
            time.sleep(0.5)
    except KeyboardInterrupt:
        log("stopped")
    finally:
        app.close()
