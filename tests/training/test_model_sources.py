"""Models from outside cnnlab's registry: torchvision: and timm: architectures from scratch, a user's
package.module:builder and cnnlab.register_model, rebuilt by every process that needs them."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import cnnlab_env, make_shapes, run_cli

import cnnlab
from cnnlab.config import ModelConfig
from cnnlab.errors import UserError
from cnnlab.training.model_sources import feature_map_layer
from cnnlab.training.models import build, cam_layer

USER_MODULE = '''\
"""A user's models, outside cnnlab."""
from torch import nn

import cnnlab


def tiny(cfg, in_channels, n_classes):
    return nn.Sequential(
        nn.Conv2d(in_channels, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, n_classes),
    )


class Net(nn.Module):
    def __init__(self, cfg, in_channels, n_classes, image_size):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(in_channels, cfg.width, 3, padding=1), nn.ReLU())
        self.head = nn.Linear(cfg.width, n_classes)

    def forward(self, x):
        return self.head(self.features(x).mean((2, 3)))


@cnnlab.register_model("user-tiny")
def registered(cfg, in_channels, n_classes):
    return tiny(cfg, in_channels, n_classes)
'''


@pytest.fixture
def user_models(tmp_path, monkeypatch) -> Path:
    """A module `usermodels` in a folder of its own, on PYTHONPATH (for the processes cnnlab starts) and on this
    process's sys.path."""
    folder = tmp_path / "user_code"
    folder.mkdir()
    (folder / "usermodels.py").write_text(USER_MODULE)
    monkeypatch.syspath_prepend(str(folder))
    monkeypatch.setenv("PYTHONPATH", str(folder))
    yield folder
    sys.modules.pop("usermodels", None)


def _fresh(*args, cwd: Path, pythonpath: Path | None = None) -> subprocess.CompletedProcess:
    """`python -m cnnlab ARGS` in a new process, with this checkout's cnnlab (and `pythonpath`) importable."""
    env = cnnlab_env()
    if pythonpath:
        env["PYTHONPATH"] = f"{env['PYTHONPATH']}:{pythonpath}"
    else:
        env["PYTHONPATH"] = env["PYTHONPATH"].split(":")[0]
    return subprocess.run(
        [sys.executable, "-m", "cnnlab", *map(str, args)], cwd=cwd, env=env, capture_output=True, text=True
    )


@pytest.mark.slow
def test_torchvision_resnet18_trains_tests_predicts_exports_and_explains(tmp_path):
    data, run = make_shapes(tmp_path / "d"), tmp_path / "r"
    run_cli("train", "--data", data, "--model", "torchvision:resnet18", "--image-size", 32, "--epochs", 1, "--out", run)
    assert (run / "best.pt").is_file()
    run_cli("test", run)
    image = next((data / "test" / "circle").iterdir())
    out = run_cli("predict", run, image, "--json").output
    assert json.loads(out[out.index("[") :])[0]["label"] in ("circle", "square", "triangle")
    exported = run_cli("export", run, "--onnx", tmp_path / "m.onnx").output
    assert "max |probability difference|" in exported and (tmp_path / "m.onnx").is_file()
    run_cli("explain", run, image, "--out", tmp_path / "ex")
    assert (tmp_path / "ex" / image.name).is_file()


def test_pretrained_weights_are_one_error_line(shapes, tmp_path):
    out = run_cli(
        "train", "--data", shapes, "--model", "torchvision:resnet18", "--set", "pretrained=true", "--out",
        tmp_path / "r", expect=2,
    ).output  # fmt: skip
    assert out.startswith("error:") and "from scratch" in out and len(out.strip().splitlines()) == 1
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize(
    "model, words",
    [
        ("torchvision:resnet81", "did you mean 'resnet18'"),
        ("timm:efficientnet_b9", "did you mean"),
        ("no_such_package.models:net", "no module named no_such_package.models"),
        ("usermodels:missing", "has no attribute missing"),
        ("torchvision:", "SOURCE:NAME"),
        ("resnte", "did you mean 'resnet'"),
    ],
)
def test_a_model_that_cannot_be_found_is_one_line(shapes, tmp_path, user_models, model, words):
    if model.startswith("timm:"):
        pytest.importorskip("timm")
    out = run_cli("train", "--data", shapes, "--model", model, "--out", tmp_path / "r", expect=2).output
    assert out.startswith("error:") and words in out and len(out.strip().splitlines()) == 1, out


def test_gray_images_and_class_count_are_adapted_and_nothing_is_pretrained():
    cfg = ModelConfig(model="torchvision:resnet18")
    model = build(cfg, in_channels=1, n_classes=5, image_size=32)
    assert model.conv1.in_channels == 1 and model.fc.out_features == 5
    assert model(torch.zeros(2, 1, 32, 32)).shape == (2, 5)
    again = build(cfg, in_channels=1, n_classes=5, image_size=32)  # seeded alike: the same weights, not loaded ones
    torch.manual_seed(0)
    a = build(cfg, 1, 5, 32).state_dict()
    torch.manual_seed(0)
    b = build(cfg, 1, 5, 32).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a) and again is not model


def test_the_layer_a_heatmap_explains_is_found_automatically():
    model = build(ModelConfig(model="torchvision:resnet18"), 3, 3, 64)
    assert cam_layer("torchvision:resnet18", model) == [model.layer4]
    effnet = build(ModelConfig(model="torchvision:efficientnet_b0"), 1, 2, 64)
    assert cam_layer("torchvision:efficientnet_b0", effnet) == [effnet.features]
    assert (
        feature_map_layer(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 2)), torch.zeros(1, 12)) is None
    )
    with pytest.raises(UserError, match="layer"):
        cam_layer("torchvision:resnet18", model, layer="layer9")
    assert cam_layer("torchvision:resnet18", model, layer="layer3") == [model.layer3]


def test_timm_models_build_from_scratch_for_gray_input():
    pytest.importorskip("timm")
    model = build(ModelConfig(model="timm:efficientnet_b0"), 1, 4, 32)
    assert model(torch.zeros(2, 1, 32, 32)).shape == (2, 4)
    assert cam_layer("timm:efficientnet_b0", model) == [model.bn2]


def _summary(study: Path) -> list[dict]:
    with open(study / "summary.csv", newline="") as f:
        return [
            {k: v for k, v in row.items() if k not in ("wall_s", "images_per_s", "out")} for row in csv.DictReader(f)
        ]


@pytest.mark.slow
def test_a_users_model_trains_in_study_workers_and_a_fresh_process_rebuilds_it(eclipse, tmp_path, user_models):
    common = [
        "--data",
        eclipse,
        "--epochs",
        1,
        "--set",
        "image_size=32",
        "--set",
        "batch_size=16",
        "--set",
        "threads=1",
    ]
    common += ["--param", "model=usermodels:tiny,usermodels:Net"]
    # The study runs in a fresh `python -m cnnlab` whose cwd is not the module's folder: PYTHONPATH finds it.
    for jobs in (2, 1):
        done = _fresh("study", "lr", *common, "--out", tmp_path / f"s{jobs}", "--jobs", jobs, cwd=tmp_path,
                      pythonpath=user_models)  # fmt: skip
        assert done.returncode == 0, done.stderr[-2000:]
    assert _summary(tmp_path / "s2") == _summary(tmp_path / "s1")
    run = next(p.parent for p in (tmp_path / "s1").rglob("config.toml") if "Net" in p.read_text())
    image = next((eclipse / "test").rglob("*.jpeg"))
    done = _fresh("predict", run, image, "--json", cwd=tmp_path, pythonpath=user_models)
    assert done.returncode == 0, done.stderr
    without = _fresh("predict", run, image, cwd=tmp_path)
    assert without.returncode == 2 and "no module named usermodels" in without.stderr
    assert len(without.stderr.strip().splitlines()) == 1, without.stderr


def test_a_registered_model_records_its_module_for_fresh_processes(shapes, tmp_path, user_models):
    import usermodels  # noqa: F401  (registers user-tiny)

    run = cnnlab.train(data=shapes, model="user-tiny", out=tmp_path / "r", epochs=1, image_size=32, progress=False)
    assert run.config.model.registered_in == "usermodels"
    image = next((shapes / "test").rglob("*.png"))
    done = _fresh("predict", tmp_path / "r", image, "--json", cwd=tmp_path, pythonpath=user_models)
    assert done.returncode == 0, done.stderr
    with pytest.raises(UserError, match="cnnlab has a model of that name"):
        cnnlab.register_model("resnet")
    with pytest.raises(UserError, match="no colon"):
        cnnlab.register_model("a:b")


@pytest.mark.slow
def test_spawned_workers_import_the_module_that_registered_the_model(eclipse, tmp_path, user_models, monkeypatch):
    import usermodels  # noqa: F401  (registers user-tiny; torch is imported here, so the workers are spawned)

    monkeypatch.delenv("PYTHONPATH")  # only this process's sys.path knows the module's folder: the workers inherit it

    small = {"epochs": 1, "image_size": 32, "batch_size": 16, "threads": 1, "log": lambda *a: None}
    two = cnnlab.study("lr", eclipse, out=tmp_path / "s2", jobs=2, param="model=user-tiny,usermodels:tiny", **small)
    one = cnnlab.study("lr", eclipse, out=tmp_path / "s1", jobs=1, param="model=user-tiny,usermodels:tiny", **small)
    assert _summary(tmp_path / "s2") == _summary(tmp_path / "s1") and len(two.summary) == len(one.summary) == 2
