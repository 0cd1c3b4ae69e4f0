"""`cnnlab serve`: the page's callbacks without a browser, the CLI's errors, the page in a headless Chromium."""

from __future__ import annotations

import shutil
import socket
import struct
import sys
import tempfile
import zlib
from pathlib import Path

import numpy as np
import pytest
from conftest import one_line_error, run_cli

pytest.importorskip("gradio", reason="cnnlab serve needs gradio (pip install cnnlab[serve])")

from cnnlab.errors import UserError  # noqa: E402
from cnnlab.serve import page  # noqa: E402

CHROMIUM = Path("/usr/bin/chromium")
# A closed network: without the background-networking flags Chromium's own connections are refused and it stalls.
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.fixture(scope="module")
def run(eclipse, tmp_path_factory) -> Path:
    """A tiny run on the eclipse set: one epoch at 32 px."""
    out = tmp_path_factory.mktemp("serve") / "r1"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CNNLAB_CACHE", str(tmp_path_factory.mktemp("serve-cache")))
        run_cli("train", "--data", eclipse, "--epochs", 1, "--image-size", 32, "--batch-size", 8, "-q", "--out", out)
    return out


@pytest.fixture(scope="module")
def served(run) -> page.Served:
    return page.load(run)


def one_image(eclipse: Path) -> Path:
    return sorted((eclipse / "test" / "Total_solar_eclipse").iterdir())[0]


def png_declaring(path: Path, width: int, height: int) -> Path:
    """A small PNG file whose header declares width x height pixels (no real pixel data)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")
    )
    return path


# ------------------------------------------------------------------------------------------ callbacks


def test_summary_names_model_data_validation_and_no_test_yet(served):
    text = page.summary_markdown(served)
    assert "simple-bn-dropout" in text and str(served.cfg.data.path) in text
    assert "best macro-F1" in text and "at epoch 1 of 1" in text
    assert "not tested yet" in text


def test_summary_shows_the_test_score_once_tested(run, eclipse, tmp_path):
    copy = tmp_path / "tested"
    shutil.copytree(run, copy)
    run_cli("test", copy, "--data", eclipse)
    text = page.summary_markdown(page.load(copy))
    assert "not tested yet" not in text and "accuracy" in text.split("**Test**")[1]


def test_a_good_image_gives_probabilities_and_an_overlay(served, eclipse):
    message, probs, picture = page.predict_image(served, str(one_image(eclipse)))
    classes = list(served.ckpt["classes"])
    assert set(probs) == set(classes) and abs(sum(probs.values()) - 1) < 1e-4
    assert max(probs, key=probs.get) in message
    # The 32-pixel input and its overlay, each enlarged for the page, side by side.
    assert picture.dtype == np.uint8 and picture.shape == (page.SHOWN_SIDE, 2 * page.SHOWN_SIDE + page.GAP, 3)


def test_bad_uploads_are_messages_not_exceptions(served, tmp_path):
    text = tmp_path / "notes.png"
    text.write_text("not an image")
    huge = png_declaring(tmp_path / "huge.png", 30000, 30000)
    for path, why in ((text, "cannot read image"), (huge, "decompression-bomb")):
        message, probs, picture = page.predict_image(served, str(path))
        assert why in message and path.name in message and probs is None and picture is None
        assert str(tmp_path) not in message  # Gradio's temporary folder is noise to a user
    assert "Drop an image" in page.predict_image(served, None)[0]


def test_a_model_without_a_heatmap_still_classifies(served, eclipse, monkeypatch):
    from cnnlab.explain import heatmaps

    def no_map(*args, **kwargs):
        raise UserError("mlp has no spatial feature map to explain")

    monkeypatch.setattr(heatmaps, "explain_arrays", no_map)
    message, probs, picture = page.predict_image(served, str(one_image(eclipse)))
    assert "no spatial feature map" in message and probs
    assert picture.shape == (page.SHOWN_SIDE, page.SHOWN_SIDE, 3)  # the image alone


def test_overlay_of_a_gray_image_and_a_coarser_map():
    image = np.full((20, 10, 1), 128, np.uint8)
    heat = np.zeros((5, 5), np.float32)
    heat[0, 0] = 1.0
    out = page.overlay(image, heat)
    assert out.shape == (20, 10, 3) and out.dtype == np.uint8
    assert out[0, 0, 0] > out[-1, -1, 0] and out[0, 0, 2] < out[-1, -1, 2]  # jet: red where hot, blue where cold
    assert page.picture(image, heat).shape == (page.SHOWN_SIDE, page.SHOWN_SIDE + page.GAP, 3)


# ------------------------------------------------------------------------------------------------ CLI


def test_serve_rejects_a_folder_that_is_not_a_run(tmp_path):
    assert "not a cnnlab run folder" in one_line_error("serve", tmp_path)


def test_serve_without_gradio_names_the_extra(run, monkeypatch):
    monkeypatch.setitem(sys.modules, "gradio", None)  # import gradio then raises ImportError
    with pytest.raises(UserError, match=r"pip install cnnlab\[serve\]"):
        page.make_app(run)


def test_make_app_builds_the_page(run):
    gr = pytest.importorskip("gradio")
    app = page.make_app(run)
    assert isinstance(app, gr.Blocks)
    ids = {getattr(block, "elem_id", None) for block in app.blocks.values()}
    assert {"upload", "message", "probs", "heatmap", "summary", "curves"} <= ids


# ---------------------------------------------------------------------------------------- in a browser


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.skipif(not CHROMIUM.is_file(), reason="no Chromium at /usr/bin/chromium (apt-get install chromium)")
def test_the_page_classifies_an_uploaded_image_in_chromium(run, eclipse):
    sync_api = pytest.importorskip("playwright.sync_api", reason="the playwright package is not installed")
    image = one_image(eclipse)
    from cnnlab.evaluation.prediction import predict_files

    expected = predict_files(run, [image])[0]["label"]
    app = page.make_app(run)
    url = page.start(app, "127.0.0.1", free_port())
    try:
        with sync_api.sync_playwright() as p, tempfile.TemporaryDirectory() as profile:
            browser = p.chromium.launch_persistent_context(
                profile, executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS
            )
            try:
                tab = browser.new_page()
                tab.goto(url, timeout=30_000)
                tab.locator("#upload input[type=file]").set_input_files(str(image))
                tab.wait_for_function(
                    "() => { const i = document.querySelector('#heatmap img');"
                    " return i && i.complete && i.naturalWidth > 0; }",
                    timeout=30_000,
                )
                assert expected in tab.locator("#probs").inner_text()
                assert expected in tab.locator("#message").inner_text()
            finally:
                browser.close()
    finally:
        app.close()
