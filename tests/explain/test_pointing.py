"""The pointing game's honest baselines: the tolerance hit, the centre point, the class prior made of the run's own
training boxes only (never the scored images'), on hand-made heatmaps and boxes; then `cnnlab explain --boxes` end
to end on a tiny run whose training boxes lie in one corner and whose test boxes lie in the other."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from conftest import one_line_error, run_cli
from PIL import Image, ImageDraw

from cnnlab.data.boxes import box_mask
from cnnlab.data.decode import DecodeSettings
from cnnlab.explain.pointing import (
    box_distance,
    box_scores,
    class_prior,
    densest_point,
    near_mask,
    point_hits,
    tolerance_px,
)

FAST = ["--epochs", 1, "--image-size", 32, "--batch-size", 8, "-q"]
TOL32 = 15 / 224 * 32  # 2.14 px


# ------------------------------------------------------------------------------------ tolerance and baselines


def test_tolerance_is_15_of_224_of_the_longer_side():
    assert tolerance_px((224, 224)) == pytest.approx(15)
    assert tolerance_px((32, 48)) == pytest.approx(15 / 224 * 48)


def test_a_maximum_within_the_tolerance_hits_only_with_the_tolerance():
    box = [(20, 20, 26, 26)]
    heat = np.zeros((32, 32))
    heat[22, 18] = 1  # pixel centre (18.5, 22.5): 1.5 px left of the box
    s = box_scores(heat, box, TOL32)
    assert s["hit"] == 0 and s["hit_tol"] == 1
    heat = np.zeros((32, 32))
    heat[22, 17] = 1  # 2.5 px away: outside 2.14
    assert box_scores(heat, box, TOL32)["hit_tol"] == 0
    heat = np.zeros((32, 32))
    heat[23, 23] = 1  # inside: both
    s = box_scores(heat, box, TOL32)
    assert s["hit"] == s["hit_tol"] == 1 and s["area"] == pytest.approx(36 / 1024)
    # The diagonal counts as a distance to the rectangle: (18.5, 18.5) is 1.5 * sqrt(2) = 2.12 from the corner.
    assert box_distance(18.5, 18.5, box) == pytest.approx(1.5 * np.sqrt(2))
    heat = np.zeros((32, 32))
    heat[18, 18] = 1
    assert box_scores(heat, box, TOL32)["hit_tol"] == 1


def test_several_maxima_score_the_share_that_hits_and_the_random_baseline_is_the_near_area():
    box = [(20, 20, 26, 26)]
    heat = np.zeros((32, 32))
    heat[23, 23] = heat[22, 18] = heat[2, 2] = 1  # inside, within the tolerance, far
    s = box_scores(heat, box, TOL32)
    assert s["hit"] == pytest.approx(1 / 3) and s["hit_tol"] == pytest.approx(2 / 3)
    near = near_mask((32, 32), box, TOL32)
    ys, xs = np.mgrid[0:32, 0:32] + 0.5
    by_hand = np.array(
        [[box_distance(x, y, box) <= TOL32 for x, y in zip(rx, ry, strict=True)] for rx, ry in zip(xs, ys, strict=True)]
    )
    assert np.array_equal(near, by_hand) and (near >= box_mask((32, 32), box)).all()
    assert s["tol_area"] == pytest.approx(near.mean()) and s["tol_area"] > s["area"]
    flat = box_scores(np.ones((32, 32)), box, TOL32)  # no information: each game at its chance level
    assert flat["hit"] == pytest.approx(flat["area"]) and flat["hit_tol"] == pytest.approx(flat["tol_area"])


def test_the_centre_misses_a_box_far_from_it_and_hits_one_within_the_tolerance():
    centre = (16.0, 16.0)  # of a 32 x 32 heatmap
    assert point_hits(centre, [(1, 1, 7, 7)], TOL32) == (0.0, 0.0)  # a corner box
    assert point_hits(centre, [(12, 12, 20, 20)], TOL32) == (1.0, 1.0)
    assert point_hits(centre, [(17.5, 10, 25, 20)], TOL32) == (0.0, 1.0)  # 1.5 px to its left
    assert point_hits(centre, [(1, 1, 7, 7), (17.5, 10, 25, 20)], TOL32) == (0.0, 1.0)  # the nearest box counts
    # As box_mask counts a pixel centre: the box's left and top edges are in, its right and bottom ones out.
    assert point_hits(centre, [(16, 16, 20, 20)], 0) == (1.0, 1.0)
    assert point_hits(centre, [(10, 10, 16, 16)], 0)[0] == 0.0


def test_the_densest_point_breaks_ties_at_the_centroid():
    d = np.zeros((10, 10))
    d[2:5, 3:6] = 1  # a plateau: its middle
    assert densest_point(d) == (3, 4)
    d = np.zeros((10, 10))
    d[2, 2] = d[2, 5] = d[2, 8] = 2  # three in a row: the middle one
    assert densest_point(d) == (2, 5)
    d[2, 5] = 0  # two, equally near their centroid: the first, row-major (deterministic)
    assert densest_point(d) == (2, 2)
    d[7, 7] = 3  # a strict maximum wins
    assert densest_point(d) == (7, 7)


# ------------------------------------------------------------------------------------ the class prior


def _cornered_set(root: Path, sizes=((64, 64),)) -> Path:
    """Two classes (square, circle), a bright 16 px shape an image, boxed in boxes.csv: the training images' in the
    top-left quarter, the test images' in the bottom-right one. manifest.csv lists both, with their split."""
    rng = np.random.default_rng(0)
    boxes, listed = [], []
    for split, n, lo in (("train", 12, 10), ("test", 4, 44)):
        for c, name in enumerate(("square", "circle")):
            (root / split / name).mkdir(parents=True)
            for i in range(n):
                w, h = sizes[i % len(sizes)]
                cx, cy = (int(v) for v in rng.integers(lo, lo + 10, 2))
                cx, cy = cx * w // 64, cy * h // 64
                im = Image.new("RGB", (w, h), (20, 20, 20))
                shape = ImageDraw.Draw(im).rectangle if c == 0 else ImageDraw.Draw(im).ellipse
                shape([cx - 8, cy - 8, cx + 7, cy + 7], fill=(230, 230, 230))
                rel = f"{split}/{name}/{i}.png"
                im.save(root / rel)
                boxes.append([rel, cx / w, cy / h, 16 / w, 16 / h])
                listed.append([rel, name, split])
    for file, header, rows in (("boxes.csv", ["path", "cx", "cy", "w", "h"], boxes), ("manifest.csv", None, listed)):
        with open(root / file, "w", newline="") as f:
            csv.writer(f).writerows([header or ["path", "class", "split"], *rows])
    return root


def _split_csv(run: Path, data: Path, train_classes=("square", "circle")) -> None:
    """A run folder's split.csv, by hand: every train/ image of `train_classes` a train row, one a val row."""
    run.mkdir(parents=True)
    rows = [
        [p.relative_to(data).as_posix(), p.parent.name, "train" if not p.name.startswith("0") else "val", -1]
        for p in sorted((data / "train").rglob("*.png"))
        if p.parent.name in train_classes
    ]
    with open(run / "split.csv", "w", newline="") as f:
        csv.writer(f).writerows([["path", "class", "split", "group"], *rows])


def _table(data: Path) -> dict:
    from cnnlab.data.boxes import read_boxes

    return read_boxes(data / "boxes.csv")


def test_the_class_prior_points_at_the_training_boxes_not_at_the_scored_ones(tmp_path):
    data = _cornered_set(tmp_path / "d")
    _split_csv(tmp_path / "run", data)
    table = _table(data)
    prep = DecodeSettings(image_size=32, resize="squash")
    scored = [k for k in table if k.startswith("test/")]
    prior = class_prior(tmp_path / "run", data, ["circle", "square"], table, prep, exclude=scored)
    j = prior.as_json()
    assert j["class_prior_images"] == 22  # 12 train images a class, one of each a val row
    assert j["class_prior_source"]["left_out_scored"] == 0 and not j["class_prior_fallback"]
    for c in ("circle", "square"):
        x, y = prior.point(c, (32, 32))
        assert x < 12 and y < 12  # the training corner: box centres at 5-10 px, 8 px wide
        assert j["class_prior_points"][c]["images"] == 11 and j["class_prior_points"][c]["x"] == pytest.approx(x)
    # A scored image that is also a training image: its box never enters the prior.
    train_too = [k for k in table if k.startswith("train/square/") and not Path(k).name.startswith("0")]
    left = class_prior(tmp_path / "run", data, ["circle", "square"], table, prep, exclude=scored + train_too[:4])
    assert left.images == {"circle": 11, "square": 7} and left.source["left_out_scored"] == 4
    # Every training image scored: no prior left, the centre instead, and the JSON says so.
    none = class_prior(tmp_path / "run", data, ["circle", "square"], table, prep, exclude=list(table)).as_json()
    assert none["class_prior_images"] == 0 and none["class_prior_fallback"] == ["circle", "square"]
    assert none["class_prior_points"]["square"]["fallback"].startswith("centre")


def test_a_class_without_training_boxes_falls_back_to_the_centre(tmp_path):
    data = _cornered_set(tmp_path / "d")
    _split_csv(tmp_path / "run", data, train_classes=("square",))
    prior = class_prior(tmp_path / "run", data, ["circle", "square"], _table(data), DecodeSettings(image_size=32))
    assert prior.point("circle", (32, 32)) == (16.0, 16.0) and prior.points["circle"] is None
    assert prior.point("square", (32, 32))[0] < 12 and prior.as_json()["class_prior_fallback"] == ["circle"]


def test_the_class_prior_of_resize_keep_is_relative_to_each_canvas(tmp_path):
    data = _cornered_set(tmp_path / "d", sizes=((64, 32), (32, 64), (64, 64)))  # three shapes of canvas
    _split_csv(tmp_path / "run", data)
    prep = DecodeSettings(image_size=32, resize="keep")
    prior = class_prior(tmp_path / "run", data, ["circle", "square"], _table(data), prep)
    for c in ("circle", "square"):
        u, v = prior.points[c]
        assert u < 0.4 and v < 0.4  # the top-left corner, whatever the canvas
        x, y = prior.point(c, (16, 32))  # an H x W heatmap of a wide image
        assert (x, y) == pytest.approx((u * 32, v * 16))
    split_rows = (tmp_path / "run" / "split.csv").read_text()
    assert "test/" not in split_rows  # the test images never were training images


# ------------------------------------------------------------------------------------ end to end


def _train(data: Path, out: Path, *args) -> Path:
    run_cli("train", "--data", data, "--out", out, *FAST, *args)
    return out


@pytest.fixture(scope="module")
def cornered_run(tmp_path_factory):
    pytest.importorskip("pytorch_grad_cam")
    root = tmp_path_factory.mktemp("cornered")
    data = _cornered_set(root / "d")
    return data, _train(data, root / "run", "--model", "adaptive")


def test_explain_boxes_reports_both_pointing_games_beside_the_baselines(cornered_run, tmp_path):
    data, run = cornered_run
    args = ["explain", run, "--data", data, "--boxes", data / "boxes.csv", "--manifest", data / "manifest.csv"]
    r = json.loads(run_cli(*args, "--json", "--out", tmp_path / "o").output)
    assert r["n_images"] == 8 and r["layer"] == "default" and r["layer_modules"] and r["method"] == "gradcam"
    assert r["tolerance_px"] == pytest.approx(TOL32) and 0 <= r["pointing_game"] <= r["pointing_game_tol"] <= 1
    b = r["baselines"]
    assert set(b) == {"random", "random_tol", "centre", "centre_tol", "class_prior", "class_prior_tol"}
    assert b["random"] == r["random_pointing_game"] == r["random_energy_in_box"] < b["random_tol"]
    # Test boxes in the bottom-right quarter: the centre and the training corner's prior miss them all.
    assert b["centre"] == b["class_prior"] == b["class_prior_tol"] == 0
    assert r["class_prior_by"] == "true class" and not r["class_prior_fallback"]
    assert 0 < r["class_prior_images"] <= 24 and r["class_prior_source"]["left_out_scored"] == 0
    assert all(p["x"] < 12 and p["y"] < 12 for p in r["class_prior_points"].values())
    for c, v in r["per_class"].items():
        assert v["n"] == 4 and set(v["baselines"]) == set(b) and v["baselines"]["class_prior"] == 0, c
        assert v["pointing_game"] <= v["pointing_game_tol"]
    out = tmp_path / "o"
    assert json.loads((out / "explain.json").read_text()) == r
    with open(out / "localisation.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 8
    assert {"hit", "hit_tol", "centre_hit", "centre_hit_tol", "prior_hit", "prior_hit_tol"} <= set(rows[0])
    md = (out / "explain.md").read_text()
    assert "| centre point |" in md and "| class prior |" in md and "with tolerance" in md
    assert "split.csv" in md and "## Per class" in md and f"{r['tolerance_px']:.2f} px" in md
    assert (out / "hits.png").is_file() or (out / "misses.png").is_file()

    text = run_cli(*args).output  # without --json: a readable summary, baselines included
    assert "pointing game" in text and "px tolerance" in text and "centre point" in text and "class prior" in text


def test_scored_training_images_never_make_the_prior(cornered_run):
    data, run = cornered_run
    # Without a manifest every boxed image is scored, the run's training images too: none is left for the prior.
    r = json.loads(run_cli("explain", run, "--data", data, "--boxes", data / "boxes.csv", "--json").output)
    assert r["n_images"] == 32 and r["class_prior_images"] == 0
    assert r["class_prior_source"]["left_out_scored"] == r["class_prior_source"]["train_rows_boxed"] > 0
    assert r["class_prior_fallback"] == ["circle", "square"] and r["class_prior_by"] == "predicted class"
    assert r["baselines"]["class_prior"] == r["baselines"]["centre"]


def test_layer_option_in_both_modes_and_a_bad_layer_is_one_line(cornered_run, tmp_path):
    from cnnlab.evaluation.loading import load_run
    from cnnlab.training.models import spatial_layers

    data, run = cornered_run
    names = list(spatial_layers(load_run(run)[2].model))
    layer = ",".join(names[-2:])
    boxed = ["explain", run, "--data", data, "--boxes", data / "boxes.csv", "--manifest", data / "manifest.csv"]
    r = json.loads(run_cli(*boxed, "--json", "--layer", layer, "--method", "layercam").output)
    assert r["layer"] == layer and r["layer_modules"] == names[-2:] and r["method"] == "layercam"
    image = next((data / "test").rglob("*.png"))
    out = run_cli("explain", run, image, "--out", tmp_path / "cam", "--layer", names[0]).output
    assert "contact_sheet.png" in out and (tmp_path / "cam" / f"{image.stem}.png").is_file()
    assert "unknown layer" in one_line_error(*boxed, "--layer", "nope")
    assert "unknown layer" in one_line_error(*boxed, "--layer", f"{names[0]},nope")
    assert "unknown layer" in one_line_error("explain", run, image, "--out", tmp_path / "c2", "--layer", "nope")
    assert not (tmp_path / "c2").exists()  # nothing written before the error
    assert "choose from" in one_line_error(*boxed, "--method", "gradcamm")
    assert "layercam" in run_cli("explain", "--help").output  # the method choices come from METHODS


def test_the_issues_commands_on_the_synthetic_set(tmp_path):
    """synth-eclipse writes boxes.csv; a box-guided run trains on it; explain --boxes on the test rows prints the
    baselines and both pointing games."""
    pytest.importorskip("pytorch_grad_cam")
    from cnnlab.data.folders import scan
    from cnnlab.data.manifest import write_manifest

    d = tmp_path / "ecl"
    run_cli("data", "synth-eclipse", d, "--train-per-class", 10, "--test-per-class", 3, "--size", 48)
    assert (d / "boxes.csv").is_file()
    run = tmp_path / "r"
    sets = ["model=resnet", "width=8", "depth=1", "image_size=48", "epochs=2", "batch_size=16", "output_stride=8"]
    train = ["train", "--data", d, "--set", f"boxes={d / 'boxes.csv'}", *(x for s in sets for x in ("--set", s))]
    run_cli(*train, "--out", run)
    assert json.loads((run / "boxes.json").read_text())["train_images_with_box"] > 0
    manifest = tmp_path / "m.csv"
    write_manifest(scan(d, warn=False), manifest, splits=("test",))
    r = json.loads(
        run_cli("explain", run, "--data", d, "--boxes", d / "boxes.csv", "--manifest", manifest, "--json").output
    )
    assert r["n_images"] == 9  # 3 classes x 3 test images, each with its Sun box
    assert r["method"] == "gradcam++"
    assert {"pointing_game", "pointing_game_tol", "energy_in_box"} <= set(r)
    assert {"random", "centre", "centre_tol", "class_prior", "class_prior_tol"} <= set(r["baselines"])
    assert r["class_prior_images"] > 0  # the prior came from the run's training boxes
