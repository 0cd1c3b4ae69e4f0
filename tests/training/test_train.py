"""The training engine: config, models, determinism, exact resume, test once, predict."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import make_shapes, one_line_error, run_cli
from sklearn.metrics import f1_score

from cnnlab.config import Config, parse_sets
from cnnlab.errors import UserError
from cnnlab.reporting.reporter import Reporter
from cnnlab.training.metrics import confusion, scores
from cnnlab.training.models import MODELS, build
from cnnlab.training.optimization import ema_decay
from cnnlab.training.run_folder import TIMING_COLUMNS, read_history
from cnnlab.training.trainer import fit

FAST = ["--image-size", 32, "--batch-size", 8, "-q"]


def _strip_timing(history):
    return [{k: v for k, v in row.items() if k not in TIMING_COLUMNS} for row in history]


# ------------------------------------------------------------------------------------------ config


def test_config_round_trip_and_bare_or_qualified_keys(tmp_path):
    cfg = Config().update({"seed": 3, "data.image_size": "64", "dedupe": "true", "lr": "5e-3"})
    assert (cfg.train.seed, cfg.data.image_size, cfg.data.dedupe, cfg.optim.lr) == (3, 64, True, 5e-3)
    cfg.save(tmp_path / "c.toml")
    assert Config.load(tmp_path / "c.toml") == cfg


def test_config_errors_name_the_nearest_key(tmp_path):
    with pytest.raises(UserError, match="did you mean 'image_size'"):
        parse_sets(["imagesize=3"])
    with pytest.raises(UserError, match="'abc' is not a int"):
        Config().set("epochs", "abc")
    (tmp_path / "bad.toml").write_text("[train]\nepoch = 3\n")
    with pytest.raises(UserError, match="did you mean 'train.epochs'"):
        Config.load(tmp_path / "bad.toml")
    assert "not valid TOML" in one_line_error("train", "--config", _write(tmp_path / "x.toml", "[[["))


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


# ------------------------------------------------------------------------------------------ models


@pytest.mark.parametrize("name", sorted(MODELS))
def test_every_model_builds_and_trains_a_step(name):
    cfg = Config().model
    cfg.model, cfg.width = name, 8
    model = build(cfg, in_channels=1, n_classes=3, image_size=64)
    x, y = torch.randn(4, 1, 64, 64), torch.tensor([0, 1, 2, 0])
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    loss = torch.nn.functional.cross_entropy(model(x), y)
    loss.backward()
    opt.step()
    assert torch.isfinite(loss)


def test_simple_network_matches_the_assignment_layer_for_layer():
    cfg = Config().model
    for name, n_bn, n_do in [
        ("simple", 0, 0),
        ("simple-bn", 2, 0),
        ("simple-dropout", 0, 3),
        ("simple-bn-dropout", 2, 3),
    ]:
        cfg.model = name
        m = build(cfg, 3, 4, 128)
        kinds = [type(layer).__name__ for layer in m]
        assert kinds.count("BatchNorm2d") == n_bn and kinds.count("Dropout") == n_do
        linear = [layer for layer in m if isinstance(layer, torch.nn.Linear)]
        assert (linear[0].in_features, linear[0].out_features, linear[1].out_features) == (9216, 512, 4)
        convs = [layer for layer in m if isinstance(layer, torch.nn.Conv2d)]
        assert [(c.in_channels, c.out_channels, c.kernel_size) for c in convs] == [(3, 32, (4, 4)), (32, 64, (4, 4))]
    assert build(cfg, 3, 4, 64)[-4].in_features == 64 * 5 * 5  # 64 -> 61 -> 20 -> 17 -> 5


def test_size_agnostic_models_accept_any_size():
    cfg = Config().model
    for name in ("adaptive", "resnet"):
        cfg.model, cfg.width = name, 8
        m = build(cfg, 3, 5, 64).eval()
        for h, w in [(48, 80), (96, 64), (33, 47)]:
            assert m(torch.randn(2, 3, h, w)).shape == (2, 5)


def test_macro_f1_matches_sklearn():
    g = torch.Generator().manual_seed(0)
    y, p = torch.randint(0, 4, (200,), generator=g), torch.randint(0, 3, (200,), generator=g)
    ours = scores(confusion(y, p, 4))["f1"]
    assert ours == pytest.approx(f1_score(y.numpy(), p.numpy(), average="macro", zero_division=0))


# --------------------------------------------------------------------------------------- training


def _cfg(data: Path, **over) -> Config:
    base = {"path": str(data), "image_size": 32, "batch_size": 8, "epochs": 3, "seed": 3}
    return Config().update({**base, **over})


def test_same_config_and_seed_give_the_same_history(eclipse, tmp_path):
    a = fit(_cfg(eclipse, mixup=0.4, jpeg=0.3, erase=0.3), tmp_path / "a", Reporter.quiet())
    b = fit(_cfg(eclipse, mixup=0.4, jpeg=0.3, erase=0.3), tmp_path / "b", Reporter.quiet())
    assert a["best_val_f1"] == b["best_val_f1"]
    ha, hb = read_history(tmp_path / "a" / "history.csv"), read_history(tmp_path / "b" / "history.csv")
    assert _strip_timing(ha) == _strip_timing(hb)
    fit(_cfg(eclipse, mixup=0.4, jpeg=0.3, erase=0.3, seed=4), tmp_path / "c", Reporter.quiet())
    assert _strip_timing(read_history(tmp_path / "c" / "history.csv")) != _strip_timing(ha)


def test_onecycle_ends_with_the_run_when_resampled_sizes_vary_the_batches(tmp_path):
    # resize=keep and oversampling, the minority class in two sizes: each epoch's copies set the size buckets,
    # so its number of batches. OneCycle's length is the sum of every epoch's own count: its schedule ends with
    # the run's last step (counted from epoch 1's alone, it stopped short or stepped past its end).
    from cnnlab.training.preparation import prepare_run_data
    from cnnlab.training.trainer import Trainer

    data = make_shapes(tmp_path / "d", splits=(("train", 14),), classes=("a", "b"), seed=1)
    make_shapes(tmp_path / "w", splits=(("train", 6),), classes=("b",), size=(56, 40), seed=2)
    for f in sorted((data / "train" / "b").iterdir())[4:]:
        f.unlink()
    for f in (tmp_path / "w" / "train" / "b").iterdir():
        f.rename(data / "train" / "b" / f"wide {f.name}")
    cfg = _cfg(data, resize="keep", imbalance="oversample", scheduler="onecycle", model="resnet", width=8, depth=1)
    cfg = cfg.update({"batch_size": 3, "epochs": 6, "seed": 0, "threads": 1})
    tr = Trainer.build(cfg, prepare_run_data(cfg))
    assert len(set(tr.steps)) > 1, tr.steps  # the case at hand: not every epoch has as many batches
    done = []
    for _ in range(cfg.train.epochs):
        tr.run_epoch()
        done.append(int(tr.opt.optimizer.state_dict()["state"][0]["step"]))
    assert [b - a for a, b in zip([0, *done], done, strict=False)] == tr.steps
    assert tr.opt.scheduler.last_epoch == tr.opt.scheduler.total_steps == sum(tr.steps)


def test_weight_ema_follows_every_step(eclipse, tmp_path):
    fit(_cfg(eclipse, epochs=2, ema=0.9), tmp_path / "r", Reporter.quiet())
    ckpt = torch.load(tmp_path / "r" / "last.pt", weights_only=True)
    n_train = sum(1 for line in (tmp_path / "r" / "split.csv").read_text().splitlines() if ",train," in line)
    steps = n_train // 8 + (n_train % 8 > 1)  # a last batch of one joins the one before it
    assert int(ckpt["ema"]["n_averaged"]) == 2 * steps
    assert ema_decay(0.999, 0) == 0.1 and ema_decay(0.999, 10**6) == 0.999  # warm-up, then the set decay


def test_run_folder_explains_itself(eclipse, tmp_path):
    out = tmp_path / "r"
    run_cli(
        "train",
        "--data",
        eclipse,
        "--model",
        "simple-bn-dropout",
        "--epochs",
        2,
        "--set",
        "seed=3",
        "--out",
        out,
        *FAST,
    )
    for name in ("config.toml", "split.csv", "skipped.csv", "history.csv", "curves.png", "last.pt", "best.pt"):
        assert (out / name).is_file(), name
    header = (out / "history.csv").read_text().splitlines()[0].split(",")
    for col in ("epoch", "train_loss", "train_f1", "val_loss", "val_f1", "val_acc", "lr", "epoch_s", "images_per_s"):
        assert col in header
    assert Config.load(out / "config.toml").train.seed == 3
    ckpt = torch.load(out / "last.pt", weights_only=True)
    assert {"model", "optimizer", "scheduler", "epoch", "rng_cpu", "config"} <= set(ckpt)
    assert "already holds a run" in one_line_error("train", "--data", eclipse, "--out", out)


@pytest.mark.parametrize(
    "over",
    [
        {"imbalance": "weights", "label_smoothing": 0.1, "scheduler": "plateau"},
        {"imbalance": "oversample", "optimizer": "sgd", "nesterov": True, "scheduler": "onecycle"},
        {"imbalance": "undersample", "optimizer": "rmsprop", "scheduler": "cosine", "warmup_epochs": 1},
        {
            "optimizer": "adagrad",
            "scheduler": "step",
            "step_size": 1,
            "hflip": True,
            "rotate": 10,
            "contrast": 0.2,
            "gamma": 0.2,
            "blur": 0.5,
            "noise": 0.1,
            "scale_min": 0.8,
            "ema": 0.9,
            "tta": True,
        },
        {
            "optimizer": "adamw",
            "model": "adaptive",
            "resize": "keep",
            "image_size": 48,
            "width": 8,
            "channels": 1,
            "normalize": "image",
        },
        {
            "model": "resnet",
            "width": 8,
            "depth": 1,
            "resize": "pad",
            "crop": "foreground",
            "normalize": "equalize",
            "gamma": 0.3,
        },
        {"model": "mlp", "hidden": 32, "precision": "bf16"},
    ],
)
def test_training_options_run(eclipse, tmp_path, over):
    summary = fit(_cfg(eclipse, epochs=2, **over), tmp_path / "r", Reporter.quiet())
    assert summary["epochs"] == 2 and 0 <= summary["best_val_f1"] <= 1


def test_save_every_keeps_loadable_epoch_checkpoints(eclipse, tmp_path):
    from cnnlab.evaluation.loading import load_run

    fit(_cfg(eclipse, epochs=4, save_every=2, ema=0.9), tmp_path / "r", Reporter.quiet())
    assert sorted(p.name for p in (tmp_path / "r").glob("epoch-*.pt")) == ["epoch-002.pt", "epoch-004.pt"]
    _, ckpt, _ = load_run(tmp_path / "r", "epoch-004")
    assert ckpt["epoch"] == 4
    assert "save_every must be >= 0" in one_line_error(
        "train", "--data", eclipse, "--set", "save_every=-1", "--out", tmp_path / "x"
    )


def test_early_stopping_keeps_the_best_epoch(eclipse, tmp_path):
    summary = fit(_cfg(eclipse, epochs=30, patience=2, lr=1e-6), tmp_path / "r", Reporter.quiet())
    assert summary["epochs"] < 30 and summary["epochs"] - summary["best_epoch"] == 2
    assert torch.load(tmp_path / "r" / "best.pt", weights_only=True)["epoch"] == summary["best_epoch"]


def test_fixed_size_model_refuses_variable_size_input(eclipse, tmp_path):
    with pytest.raises(UserError, match="needs a fixed input size"):
        fit(_cfg(eclipse, resize="keep"), tmp_path / "r", Reporter.quiet())


@pytest.mark.slow
def test_kill_9_then_resume_gives_the_uninterrupted_history(eclipse, tmp_path):
    args = [
        "train",
        "--data",
        str(eclipse),
        "--model",
        "simple-bn-dropout",
        "--image-size",
        "32",
        "--batch-size",
        "8",
        "--epochs",
        "6",
        "--set",
        "seed=3",
        "-q",
    ]
    run_cli(*args, "--out", tmp_path / "full")
    cut = tmp_path / "cut"
    proc = subprocess.Popen([sys.executable, "-m", "cnnlab.cli", *args, "--out", str(cut)])
    deadline = time.time() + 120
    while time.time() < deadline:
        if (cut / "history.csv").exists() and len(read_history(cut / "history.csv")) >= 2:
            break
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert 2 <= len(read_history(cut / "history.csv")) < 6
    run_cli("train", "--resume", cut, "-q")
    assert _strip_timing(read_history(cut / "history.csv")) == _strip_timing(
        read_history(tmp_path / "full" / "history.csv")
    )


# ------------------------------------------------------------------------------- test and predict


def test_test_once_then_predict(eclipse, tmp_path):
    out = tmp_path / "r"
    run_cli("train", "--data", eclipse, "--epochs", 2, "--out", out, *FAST)
    res = json.loads(run_cli("test", out, "--data", eclipse, "--json").output)
    assert {"macro_f1", "accuracy", "per_class", "confusion_matrix"} <= set(res)
    assert sum(map(sum, res["confusion_matrix"])) == res["n_images"] == 12
    (folder,) = (out / "tests").iterdir()  # RUN/tests/NAME/, NAME from the data set and its images
    assert (folder / "test.json").is_file() and (folder / "test_confusion.png").is_file()
    again = run_cli("test", out, "--data", eclipse)
    assert "already evaluated 1 time" in again.output
    assert len(json.loads((out / "evaluations.json").read_text())) == 2
    assert list((out / "tests").iterdir()) == [folder]  # the same test split again: its own folder reused

    img = next((eclipse / "test").rglob("*.jpeg"))
    rows = json.loads(run_cli("predict", out, img, "--json").output)
    assert rows[0]["path"] == str(img) and abs(sum(rows[0]["probs"].values()) - 1) < 1e-5
    csv_out = run_cli("predict", out, eclipse / "test", "--csv").output.splitlines()
    assert len(csv_out) == 13 and csv_out[0].startswith("path,label,")
    assert "no such image" in one_line_error("predict", out, tmp_path / "nothing.png")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_path_with_amp_and_channels_last(eclipse, tmp_path):
    summary = fit(_cfg(eclipse, device="cuda", epochs=2, hflip=True, rotate=5), tmp_path / "r", Reporter.quiet())
    assert summary["epochs"] == 2
    res = run_cli("test", tmp_path / "r", "--data", eclipse, "--json").output
    assert 0 <= json.loads(res)["macro_f1"] <= 1


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_training_steps_never_wait_for_the_gpu(eclipse, tmp_path):
    # An epoch's steps (augmentation, mixup, class weights, metrics) under torch's sync debug mode, where any
    # operation that makes the host wait for the GPU (a value read back, bincount sizing its output) raises.
    from cnnlab.training.batching import batches
    from cnnlab.training.loops import EpochOrder, train_step
    from cnnlab.training.metrics import confusion
    from cnnlab.training.preparation import prepare_run_data
    from cnnlab.training.trainer import Trainer

    cfg = _cfg(eclipse, device="cuda", hflip=True, rotate=5, brightness=0.1, noise=0.05, mixup=0.2)
    cfg = cfg.update({"imbalance": "weights", "cache_dir": str(tmp_path / "cache")})
    tr = Trainer.build(cfg, prepare_run_data(cfg))
    epoch = EpochOrder.draw(tr.train.labels, len(tr.classes), cfg.data.imbalance, 1)
    cm = torch.zeros(len(tr.classes), len(tr.classes), dtype=torch.long, device="cuda")
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for step, pos in enumerate(batches(tr.train, epoch.order, cfg.train.batch_size)):
            loss, out, y, _, _ = train_step(tr.eng, tr.train, tr.opt, cfg, epoch, pos, step)
            cm += confusion(y, out.detach().argmax(1), len(tr.classes))
    finally:
        torch.cuda.set_sync_debug_mode(0)
    assert int(cm.sum()) == len(epoch.order)


# -------------------------------------------------------------------------------------------- augment


def test_equalize_ignores_monotone_intensity_changes_and_keeps_zeros():
    from cnnlab.training.presets import equalize

    levels = torch.tensor([0, 10, 50, 200]) / 255
    other = torch.tensor([0, 90, 91, 255]) / 255  # brighter, other contrast, same order
    idx = torch.randint(0, 4, (3, 1, 16, 16), generator=torch.Generator().manual_seed(0))
    a, b = equalize(levels[idx]), equalize(other[idx])
    assert torch.equal(a, b)
    assert torch.equal(a == 0, idx == 0)  # zeros (padding) stay zero
    assert torch.allclose(a.flatten(1).amax(1), torch.ones(3))  # the brightest level maps to 1
    assert "unknown normalize policy 'rank'" in one_line_error(
        "train", "--data", "x", "--set", "normalize=rank", "--out", "y"
    )


def test_augmentation_is_seeded_bounded_and_jpeg_touches_only_its_picks():
    import torch

    from cnnlab.config import AugmentConfig
    from cnnlab.training.augment import Augmenter

    x = torch.rand(16, 1, 32, 32)
    full = Augmenter(
        AugmentConfig(
            hflip=True,
            rotate=20,
            translate=0.1,
            scale_min=0.8,
            scale_max=1.2,
            brightness=0.2,
            contrast=0.3,
            gamma=0.3,
            blur=0.5,
            sharpness=1.0,
            jpeg=0.5,
            erase=0.5,
        )
    )
    a = full.pixels(x, torch.Generator().manual_seed(3))
    b = full.pixels(x, torch.Generator().manual_seed(3))
    assert torch.equal(a, b) and not torch.equal(a, x)
    assert a.min() >= 0 and a.max() <= 1
    jpeg = Augmenter(AugmentConfig(jpeg=0.5))
    assert jpeg.active and not Augmenter(AugmentConfig()).active
    y = jpeg.pixels(x, torch.Generator().manual_seed(0))
    changed = (y - x).flatten(1).abs().amax(1) > 0
    assert 0 < int(changed.sum()) < 16  # some re-encoded, the rest untouched
    assert (y[changed] - x[changed]).abs().mean() < 0.2  # re-encoded, not replaced
    erase = Augmenter(AugmentConfig(erase=0.5))
    z = erase.pixels(x + 0.01, torch.Generator().manual_seed(0))
    zeros = (z == 0).flatten(1).float().mean(1)
    assert 0 < int((zeros > 0).sum()) < 16 and zeros.max() <= 0.21  # some erased, by at most 20% of the area
    sharp = Augmenter(AugmentConfig(sharpness=1.0)).pixels(x, torch.Generator().manual_seed(0))
    assert sharp.min() >= 0 and sharp.max() <= 1 and not torch.equal(sharp, x)
    assert "erase must be a probability" in one_line_error("train", "--data", "x", "--set", "erase=2", "--out", "y")


def test_history_logs_validation_recall_per_class_and_tensorboard(eclipse, tmp_path):
    fit(_cfg(eclipse, epochs=2, tensorboard=True), tmp_path / "r", Reporter.quiet())
    history = read_history(tmp_path / "r" / "history.csv")
    classes = sorted(p.name for p in (eclipse / "train").iterdir())
    assert [k for k in history[0] if k.startswith("val_recall_")] == [f"val_recall_{c}" for c in classes]
    assert all(0 <= row[f"val_recall_{c}"] <= 1 for row in history for c in classes)
    events = list((tmp_path / "r" / "tb").glob("events.out.tfevents.*"))
    assert events and events[0].stat().st_size > 0
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(tmp_path / "r" / "tb"))
    acc.Reload()
    assert {"loss/train", "macro_f1/val", "lr", f"recall_val/{classes[0]}"} <= set(acc.Tags()["scalars"])
    assert [e.step for e in acc.Scalars("loss/val")] == [1, 2]
