"""Explanations: heatmaps for every model, the box mapping through crop and pad, the pointing game on boxes whose
answer is known, the test's error gallery, and the one-line errors."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import one_line_error, run_cli
from PIL import Image, ImageDraw

from cnnlab.data.decode import DecodeSettings, decode, decode_with_geometry
from cnnlab.errors import UserError
from cnnlab.explain.heatmaps import box_scores, heatmaps
from cnnlab.training.models import MODELS

pytest.importorskip("pytorch_grad_cam")
FAST = ["--epochs", 1, "--image-size", 32, "--batch-size", 8, "-q"]


def _train(data: Path, out: Path, *args) -> Path:
    run_cli("train", "--data", data, "--out", out, *FAST, *args)
    return out


def _an_image(data: Path) -> Path:
    return next((data / "test").rglob("*.jpeg"))


@pytest.mark.parametrize("name", sorted(MODELS))
def test_every_model_gives_a_heatmap_of_the_image_size(eclipse, tmp_path, name):
    run = _train(eclipse, tmp_path / "r", "--model", name)
    if name == "mlp":  # documented: an MLP has no spatial feature map, so no heatmap
        with pytest.raises(UserError, match="no spatial feature map"):
            heatmaps(run, [_an_image(eclipse)])
        return
    for method in ("gradcam", "gradcam++"):
        (row,) = heatmaps(run, [_an_image(eclipse)], method=method)
        assert row["heatmap"].shape == (32, 32) and row["heatmap"].dtype == np.float32
        assert 0 <= row["heatmap"].min() and row["heatmap"].max() <= 1
        assert row["image"].shape == (32, 32, 3) and row["image"].dtype == np.uint8
        assert row["target"] == row["label"] and abs(sum(row["probs"].values()) - 1) < 1e-5
        assert row["prob"] == row["probs"][row["label"]]


@pytest.mark.parametrize(
    "sets", [["precision=bf16", "normalize=equalize"], ["channels_last=false", "normalize=image", "channels=1"]]
)
def test_bf16_channels_last_and_per_image_normalisation(eclipse, tmp_path, sets):
    run = _train(eclipse, tmp_path / "r", "--model", "adaptive", *[a for s in sets for a in ("--set", s)])
    classes = sorted(p.name for p in (eclipse / "train").iterdir())
    rows = heatmaps(run, [eclipse / "test"], target=classes[1])
    assert len(rows) == 12 and all(r["target"] == classes[1] for r in rows)
    assert all(np.isfinite(r["heatmap"]).all() and r["heatmap"].shape == (32, 32) for r in rows)
    predicted = json.loads(run_cli("predict", run, eclipse / "test", "--json").output)
    assert [r["label"] for r in rows] == [p["label"] for p in predicted]  # the probabilities are predict's


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_heatmaps_on_cuda(eclipse, tmp_path):
    run = _train(eclipse, tmp_path / "r", "--model", "resnet", "--device", "cuda")
    (row,) = heatmaps(run, [_an_image(eclipse)], method="gradcam++")
    assert row["heatmap"].shape == (32, 32) and 0 <= row["heatmap"].min() <= row["heatmap"].max() <= 1


def test_explain_images_writes_overlays_and_a_contact_sheet(eclipse, tmp_path):
    run = _train(eclipse, tmp_path / "r", "--model", "simple-bn")
    out = run_cli(
        "explain",
        run,
        _an_image(eclipse),
        eclipse / "test" / "Total_solar_eclipse",
        "--out",
        tmp_path / "cam",
        "--method",
        "gradcam++",
        "--class",
        "Total_solar_eclipse",
    ).output
    cam = tmp_path / "cam"
    assert (cam / "contact_sheet.png").is_file() and (cam / f"{_an_image(eclipse).stem}.png").is_file()
    assert len(list(cam.glob("*.png"))) == 6 and "contact_sheet.png" in out  # a name given twice: both kept


# ------------------------------------------------------------------------------------ box scores


def test_pointing_game_and_energy_on_a_hand_made_heatmap():
    heat = np.zeros((10, 10), dtype=np.float32)
    heat[2, 7] = 1.0  # the maximum: column 7, row 2
    heat[8, 1] = 0.5
    s = box_scores(heat, [(6, 1, 9, 4)])
    assert s == {"hit": 1.0, "energy": pytest.approx(1 / 1.5), "area": pytest.approx(9 / 100)}
    assert box_scores(heat, [(0, 7, 3, 10)])["hit"] == 0.0  # holds the 0.5, not the maximum
    assert box_scores(heat, [(0, 7, 3, 10)])["energy"] == pytest.approx(0.5 / 1.5)
    flat = box_scores(np.ones((10, 10)), [(0, 0, 5, 2)])  # no information: chance, not a free hit
    assert flat["hit"] == flat["energy"] == flat["area"] == pytest.approx(0.1)


def test_box_follows_the_foreground_crop_and_the_padding(tmp_path):
    im = Image.new("L", (200, 100), 0)
    draw = ImageDraw.Draw(im)
    draw.rectangle([40, 20, 159, 79], fill=120)  # the "head": 120 x 60 pixels at (40, 20)
    draw.rectangle([80, 40, 119, 59], fill=255)  # the "tumour": box cx 0.5, cy 0.5, w 0.2, h 0.2
    im.save(tmp_path / "a.png")
    prep = DecodeSettings(image_size=64, resize="pad", channels=1, crop="foreground")
    arr, size, _, geo = decode_with_geometry(tmp_path / "a.png", prep)
    assert np.array_equal(arr, decode(tmp_path / "a.png", prep)[0]) and size == (200, 100)
    # By hand: crop = head +- 2% of 200 = (36, 16, 164, 84), 128 x 68; scale 0.5 -> 64 x 34, padded 15 rows down.
    assert geo.crop == (36, 16, 164, 84) and geo.resized == (64, 34) and geo.offset == (0, 15)
    x0, y0, x1, y1 = geo.box(0.5, 0.5, 0.2, 0.2)
    assert (x0, y0, x1, y1) == pytest.approx((22, 27, 42, 37))  # (80-36)/2, 15+(40-16)/2, (120-36)/2, 15+(60-16)/2
    assert arr[0, 29:35, 24:40].min() > 200 and arr[0, 29:35, 10:18].max() < 160  # the bright box is there
    # A large JPEG opens at a fraction of its size (draft): the box lands in the same place.
    im.resize((800, 400), Image.Resampling.NEAREST).save(tmp_path / "b.jpg", quality=95)
    _, _, _, big = decode_with_geometry(tmp_path / "b.jpg", prep)
    assert big.size != (800, 400) and big.box(0.5, 0.5, 0.2, 0.2) == pytest.approx((22, 27, 42, 37), abs=1)


def _boxed_set(root: Path) -> tuple[Path, list[float]]:
    """Two classes (square, circle), one bright shape a 64 x 64 image, its box written to boxes.csv; every box
    on even pixels, so at 32 px its share of the image is exactly (16/64)^2."""
    rng = np.random.default_rng(0)
    rows, areas = [], []
    for split, n in (("train", 12), ("test", 4)):
        for c, name in enumerate(("square", "circle")):
            (root / split / name).mkdir(parents=True)
            for i in range(n):
                x, y = (int(v) * 2 for v in rng.integers(6, 26, 2))
                im = Image.new("RGB", (64, 64), (20, 20, 20))
                shape = ImageDraw.Draw(im).rectangle if c == 0 else ImageDraw.Draw(im).ellipse
                shape([x - 8, y - 8, x + 7, y + 7], fill=(230, 230, 230))
                rel = f"{split}/{name}/{i}.png"
                im.save(root / rel)
                rows.append([rel, x / 64, y / 64, 16 / 64, 16 / 64])
                areas.append((16 / 64) ** 2)
    with open(root / "boxes.csv", "w", newline="") as f:
        csv.writer(f).writerows([["path", "cx", "cy", "w", "h"], *rows])
    return root, areas


def test_localisation_scores_on_a_known_box_set(tmp_path):
    data, areas = _boxed_set(tmp_path / "boxed")
    boxes = data / "boxes.csv"
    run = _train(data, tmp_path / "r", "--model", "adaptive")
    r = json.loads(run_cli("explain", run, "--data", data, "--boxes", boxes, "--json", "--out", tmp_path / "o").output)
    assert {
        "pointing_game",
        "energy_in_box",
        "random_pointing_game",
        "random_energy_in_box",
        "n_images",
        "run",
        "method",
    } <= set(r)
    assert r["n_images"] == 32 and r["method"] == "gradcam" and r["run"] == str(run)
    assert 0 <= r["pointing_game"] <= 1 and 0 <= r["energy_in_box"] <= 1
    assert r["random_pointing_game"] == r["random_energy_in_box"] == pytest.approx(np.mean(areas))
    assert {"explain.json", "localisation.csv"} <= {p.name for p in (tmp_path / "o").iterdir()}
    assert (tmp_path / "o" / "hits.png").is_file() or (tmp_path / "o" / "misses.png").is_file()

    manifest = tmp_path / "m.csv"
    with open(manifest, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "class", "split"])
        w.writerows([[p.relative_to(data).as_posix(), p.parent.name, p.parts[-3]] for p in sorted(data.rglob("*.png"))])
    r = json.loads(
        run_cli(
            "explain", run, "--data", data, "--boxes", boxes, "--manifest", manifest, "--json", "--method", "gradcam++"
        ).output
    )
    assert r["n_images"] == 8 and 0 <= r["accuracy"] <= 1 and set(r["per_class"]) <= {"square", "circle"}


def test_test_writes_both_confusion_panels_and_the_error_gallery_once(eclipse, tmp_path):
    for name in ("simple", "mlp"):  # an MLP's gallery: the images without heatmaps
        run = _train(eclipse, tmp_path / name, "--model", name)
        run_cli("test", run, "--data", eclipse)
        (folder,) = (run / "tests").iterdir()
        assert (folder / "test_confusion.png").is_file() and (folder / "test_errors.png").is_file()
        assert len(json.loads((run / "evaluations.json").read_text())) == 1


def test_bad_inputs_are_one_line_errors(eclipse, tmp_path):
    data, _ = _boxed_set(tmp_path / "boxed")
    run = _train(eclipse, tmp_path / "r", "--model", "simple")
    img = _an_image(eclipse)
    assert "did you mean 'Total_solar_eclipse'" in one_line_error(
        "explain", run, img, "--out", tmp_path / "o", "--class", "Total_solar_eclips"
    )
    assert "did you mean 'gradcam++'" in one_line_error(
        "explain", run, img, "--out", tmp_path / "o", "--method", "gradcam+"
    )
    assert "not a cnnlab run" in one_line_error("explain", tmp_path, img, "--out", tmp_path / "o")
    assert "--out DIR is needed" in one_line_error("explain", run, img)
    assert "boxes file not found" in one_line_error("explain", run, "--data", eclipse, "--boxes", tmp_path / "no.csv")
    # Box rows for images that are not in the data: the eclipse set has none of the boxed set's files.
    assert "not in" in one_line_error("explain", run, "--data", eclipse, "--boxes", data / "boxes.csv")
