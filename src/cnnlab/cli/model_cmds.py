"""`cnnlab explain` (heatmaps, and `--boxes` localisation), `cnnlab export` (ONNX) and `cnnlab serve` (a Gradio page)
for a trained run. Heavy imports (torch, grad-cam, onnx, gradio) happen inside commands so `--help` stays fast."""

from __future__ import annotations

import json
from pathlib import Path

import click

from cnnlab.errors import UserError


class _MethodOption(click.Option):
    """--method, whose help lists METHODS: read when the help is shown, since evaluation.cam imports torch."""

    def get_help_record(self, ctx):
        from cnnlab.evaluation.cam import METHODS

        self.help = f"The heatmap: {', '.join(METHODS)}. Default: the model family's (resnet: gradcam++, else gradcam)."
        return super().get_help_record(ctx)


@click.command("explain")
@click.argument("run", type=click.Path())
@click.argument("images", nargs=-1)
@click.option("--out", type=click.Path(), help="Folder for the overlays (and, with --boxes, the report and galleries).")
@click.option("--method", default=None, cls=_MethodOption, help="The heatmap.")
@click.option(
    "--layer",
    metavar="NAME[,NAME]",
    help="Explain these modules (names as model.named_modules() gives them; several: their maps fused) "
    "instead of the model's default layer.",
)
@click.option("--class", "target", help="Explain this class (default: each image's predicted class).")
@click.option("--data", help="With --boxes: the dataset root the box paths are relative to (default: the run's).")
@click.option(
    "--boxes",
    type=click.Path(),
    help="CSV path,cx,cy,w,h (0-1, YOLO): score how well heatmaps point at these boxes (pointing game, strict and "
    "with a tolerance, energy in box), beside the random, centre and class-prior baselines.",
)
@click.option(
    "--manifest",
    type=click.Path(),
    help="With --boxes: only the images listed (its test rows, if it has a split column).",
)
@click.option("--json", "as_json", is_flag=True, help="With --boxes: print the scores as JSON.")
def explain_cmd(run, images, out, method, layer, target, data, boxes, manifest, as_json):
    """Heatmaps (Grad-CAM, Grad-CAM++, LayerCAM, ...) of what drove a run's predictions: an overlay PNG per image
    and a contact sheet; or, with --boxes, how often the heatmap's maximum falls in (or within 15/224 of the side
    of) a known box, against pointing at the image centre and at the class's densest point of the run's own
    training boxes. Needs cnnlab[explain].

    \b
    Examples:
      cnnlab explain runs/r1 img.jpg more/ --out cam/ --method gradcam++
      cnnlab explain runs/r1 --data ../shared/datasets/figshare-brain-tumor \\
          --boxes ../shared/datasets/figshare-brain-tumor/boxes.csv --manifest test.csv --json --out cam/
    """
    from cnnlab.explain.heatmaps import explain_images, localisation

    if boxes:
        if images:
            raise UserError("give images, or --boxes for the localisation score, not both")
        r = localisation(
            Path(run), boxes, data=data, manifest=manifest, method=method, target=target, out=out, layer=layer
        )
        if as_json:
            click.echo(json.dumps(r, indent=2))
        else:
            from cnnlab.explain.report import summary_lines

            click.echo("\n".join(summary_lines(r)) + (f"\nwrote {out}" if out else ""))
        return
    if data or manifest or as_json:
        raise UserError("--data, --manifest and --json go with --boxes")
    if not images:
        raise UserError(
            "no images given: cnnlab explain RUN IMAGES... --out DIR (or --boxes CSV for the localisation score)"
        )
    if not out:
        raise UserError("--out DIR is needed: the overlays are written there")
    for r in explain_images(Path(run), list(images), out, method, target, layer=layer):
        click.echo(f"{r['label']:<24} {r['prob']:.3f}  {r['path']}  -> {r['overlay']}")
    click.echo(f"wrote {Path(out) / 'contact_sheet.png'}")


@click.command("export")
@click.argument("run", type=click.Path())
@click.option("--onnx", "onnx_file", type=click.Path(), metavar="FILE", required=True, help="The ONNX file to write.")
def export_cmd(run, onnx_file):
    """Export a run's best checkpoint with its preprocessing to ONNX, checked against PyTorch on the run's images.

    The file takes uint8 N x C x H x W images, decoded and resized as cnnlab does (its metadata says how), and
    returns logits: normalisation and flip TTA are in the graph. `cnnlab predict FILE.onnx` runs it without torch.

    \b
    Example:
      cnnlab export runs/r1 --onnx model.onnx
      cnnlab predict model.onnx photo.jpg --json
    """
    from cnnlab.export.onnx_export import export_onnx

    export_onnx(Path(run), Path(onnx_file), log=click.echo)
    click.echo(f"wrote {onnx_file}")


@click.command("serve")
@click.argument("run", type=click.Path())
@click.option("--port", type=int, default=7860, show_default=True, help="The page's port.")
@click.option(
    "--host",
    default="127.0.0.1",
    show_default=True,
    help="The address to listen on (0.0.0.0 opens the page to the network).",
)
def serve_cmd(run, port, host):
    """A local web page (Gradio) that classifies a dropped image with a run's best checkpoint: class
    probabilities, a heatmap over the image, and the run's summary and curves. Needs cnnlab[serve].

    \b
    Example:
      cnnlab serve runs/r1 --port 7860
    """
    from cnnlab.serve.page import make_app, serve_forever

    app = make_app(Path(run))  # a folder that is not a run is an error before any server starts
    serve_forever(app, host, port, log=click.echo)
