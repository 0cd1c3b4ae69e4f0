"""Box-guided training (data.boxes): the masks follow the augmentation, the localisation term moves the class
activation map into the boxes, a weight of 0 is the unguided run to the last digit, the run records its boxes file
and later commands never read it."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import make_shapes, one_line_error, run_cli
from PIL import Image, ImageDraw

from cnnlab.config import AugmentConfig, ModelConfig
from cnnlab.training.augment import Augmenter
from cnnlab.training.models import build, guidance_parts
from cnnlab.training.run_folder import read_history


def boxed_set(root: Path, n: int = 16, side: int = 64) -> Path:
    """Two classes (square, circle), one bright shape an image at a random place, its box in boxes.csv."""
    rng = np.random.default_rng(0)
    rows = []
    for split, count in (("train", n), ("test", 4)):
        for c, name in enumerate(("square", "circle")):
            (root / split / name).mkdir(parents=True)
            for i in range(count):
                x, y = (int(v) for v in rng.integers(12, side - 12, 2))
                im = Image.new("RGB", (side, side), (20, 20, 20))
                draw = ImageDraw.Draw(im)
                (draw.rectangle if c == 0 else draw.ellipse)([x - 8, y - 8, x + 7, y + 7], fill=(230, 230, 230))
                rel = f"{split}/{name}/{i}.png"
                im.save(root / rel)
                rows.append([rel, x / side, y / side, 16 / side, 16 / side])
    with open(root / "boxes.csv", "w", newline="") as f:
        csv.writer(f).writerows([["path", "cx", "cy", "w", "h"], *rows])
    return root


COMMON = ("--set", "model=resnet", "--set", "width=8", "--set", "depth=1", "--set", "image_size=64",
          "--set", "batch_size=16", "--set", "threads=1", "--set", "hflip=true", "--set", "rotate=10",
          "--set", "output_stride=8", "--set", "lr=0.003", "--set", "val_fraction=0.25")  # fmt: skip


def train(data: Path, out: Path, *sets: str, epochs: int = 3) -> Path:
    run_cli("train", "--data", data, *COMMON, "--set", f"epochs={epochs}", *sets, "--out", out)
    return out


@pytest.fixture(scope="module")
def boxed(tmp_path_factory) -> Path:
    return boxed_set(tmp_path_factory.mktemp("boxed") / "d")


def test_masks_move_with_their_images_and_draws_do_not_change():
    x = torch.zeros(4, 1, 32, 32)
    x[:, :, 4:12, 18:28] = 1.0
    masks = x.clone()
    aug = Augmenter(AugmentConfig(hflip=True, rotate=30, translate=0.1, scale_min=0.8, brightness=0.3, contrast=0.3))
    alone = aug.pixels(x.clone(), torch.Generator().manual_seed(3))
    moved, moved_masks = aug.pixels_and_masks(x.clone(), masks, torch.Generator().manual_seed(3))
    assert torch.equal(alone, moved)  # the same draws, with or without masks
    for img, m in zip(moved, moved_masks, strict=True):
        bright = img > img.mean()
        assert (m > 0.5).sum() > 0 and ((m > 0.5) == bright).float().mean() > 0.97
    # flips alone (no warp) move the masks too
    flip = Augmenter(AugmentConfig(hflip=True, vflip=True))
    out, out_masks = flip.pixels_and_masks(x.clone(), masks, torch.Generator().manual_seed(0))
    assert torch.equal(out > 0.5, out_masks > 0.5)


def test_output_stride_8_keeps_the_last_resolution_at_the_same_width():
    cfg = ModelConfig(model="resnet", width=8, depth=1, output_stride=8)
    model = build(cfg, 1, 3, 64)
    layer, head = guidance_parts(model)
    feats = {}
    layer.register_forward_hook(lambda m, i, o: feats.setdefault("x", o))
    model.eval()(torch.zeros(1, 1, 64, 64))
    assert feats["x"].shape[-2:] == (8, 8) and head.in_features == 32  # 16 with output_stride 16: 4 x 4
    default = build(ModelConfig(model="resnet", width=8, depth=1), 1, 3, 64)
    assert guidance_parts(default)[1].in_features == 64


def test_box_weight_0_is_the_unguided_run_and_guidance_moves_the_map_in(boxed, tmp_path):
    plain = train(boxed, tmp_path / "plain", epochs=6)
    zero = train(boxed, tmp_path / "zero", "--set", f"boxes={boxed / 'boxes.csv'}", "--set", "box_weight=0", epochs=6)
    guided = train(boxed, tmp_path / "g", "--set", f"boxes={boxed / 'boxes.csv'}", "--set", "box_weight=3", epochs=6)
    a, b, g = (read_history(r / "history.csv") for r in (plain, zero, guided))
    keys = ("train_loss", "val_loss", "val_f1")
    assert [[r[k] for k in keys] for r in a] == [[r[k] for k in keys] for r in b]
    assert "train_box_inside" not in a[0] and "train_box_inside" in g[0]
    # the share of the true class's map inside the box grows with the localisation term, and beats no term
    assert g[-1]["train_box_inside"] > g[0]["train_box_inside"] + 0.1
    assert g[-1]["train_box_inside"] > b[-1]["train_box_inside"] + 0.1
    record = json.loads((guided / "boxes.json").read_text())
    assert record["path"] == str((boxed / "boxes.csv").resolve()) and len(record["sha256"]) == 64
    assert record["train_images_with_box"] == record["train_images"] > 0


def test_later_commands_read_no_boxes_and_resume_checks_them(tmp_path):
    data = boxed_set(tmp_path / "d", n=8)
    boxes = tmp_path / "boxes.csv"
    boxes.write_bytes((data / "boxes.csv").read_bytes())
    run = train(data, tmp_path / "r", "--set", f"boxes={boxes}", epochs=2)
    boxes.rename(tmp_path / "elsewhere.csv")  # gone: test, predict and explain never need it
    run_cli("test", run, "--data", data)
    run_cli("predict", run, data / "test" / "square" / "0.png")
    # a resumed run trains on the boxes it started with
    last = torch.load(run / "last.pt", weights_only=False)
    last["finished"] = False
    torch.save(last, run / "last.pt")
    assert "boxes file not found" in one_line_error("train", "--resume", run)
    changed = (tmp_path / "elsewhere.csv").read_text().replace("0.", "0.0", 1)
    boxes.write_text(changed)
    assert "changed since" in one_line_error("train", "--resume", run)


def test_box_guidance_errors_are_one_line(tmp_path, boxed):
    shapes = make_shapes(tmp_path / "shapes")
    b = str(boxed / "boxes.csv")
    assert "class activation map" in one_line_error("train", "--data", shapes, "--set", f"boxes={b}")
    assert "mixup" in one_line_error(
        "train", "--data", shapes, "--set", "model=resnet", "--set", f"boxes={b}", "--set", "mixup=0.2"
    )
    assert "none of the" in one_line_error(
        "train", "--data", shapes, "--set", "model=resnet", "--set", f"boxes={b}", "--out", tmp_path / "r"
    )
    assert "output_stride" in one_line_error("train", "--data", shapes, "--set", "output_stride=4")
    assert "box_weight" in one_line_error("train", "--data", shapes, "--set", "box_weight=-1")


def test_resnet_heatmap_default_is_the_fine_block_fused_with_the_last():
    """resnet's default map (chosen on validation patients): Grad-CAM++ on the last block at 1/8 of the side and
    the last block; at output stride 8 they are one block."""
    from cnnlab.evaluation.cam import resolve_method
    from cnnlab.training.models import cam_layer

    for stride, expected in ((16, ["5", "6"]), (8, ["6"])):  # depth 1: blocks 3-6 (stem 0-2), at 1/2 to 1/16
        model = build(ModelConfig(model="resnet", width=8, depth=1, output_stride=stride), 1, 3, 64)
        names = {id(m): n for n, m in model.named_children()}
        assert [names[id(m)] for m in cam_layer("resnet", model)] == expected
        assert [names[id(m)] for m in cam_layer("resnet", model, "3,5")] == ["3", "5"]
    assert resolve_method(None, "resnet") == "gradcam++" and resolve_method(None, "adaptive") == "gradcam"
    assert resolve_method("layercam", "resnet") == "layercam"
