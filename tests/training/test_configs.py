"""Config checks run before any work; recipes; the run folder as the record that resume reads back."""

from __future__ import annotations

import shutil

import pytest
from conftest import one_line_error, tree_hash

from cnnlab.config import Config, load_recipe
from cnnlab.errors import UserError
from cnnlab.reporting.reporter import Reporter
from cnnlab.training import run_folder
from cnnlab.training.checks import check_config
from cnnlab.training.trainer import fit, resume


@pytest.mark.parametrize(
    "setting, message",
    [
        ("lr=nan", "lr must be positive and finite"),
        ("lr=inf", "lr must be positive and finite"),
        ("lr=0", "lr must be positive and finite"),
        ("eval_batch_size=0", "eval_batch_size must be at least 1"),
        ("threads=-1", "threads must be >= 0"),
        ("dropout=1.5", "dropout must be in [0, 1)"),
        ("image_size=12", "image_size 12 is too small for model simple-bn-dropout"),
        ("image_size=5000", "image_size must be in [8, 4096]"),
        ("model=resnett", "did you mean 'resnet'"),
        ("activation=rleu", "did you mean 'relu'"),
        ("optimizer=adm", "did you mean 'adam'"),
        ("scheduler=cosin", "did you mean 'cosine'"),
        ("precision=bf32", "unknown precision 'bf32'"),
        ("monitor=val_f2", "unknown monitor 'val_f2'"),
        ("device=tpu", "unknown device 'tpu'"),
        ("resize=crop", "unknown resize policy 'crop'"),
        ("val_fraction=1", "val_fraction must be in [0, 1)"),
        ("scale_max=0.5", "scale_max must be in [1, 4]"),
        ("nesterov=true", "nesterov needs optimizer sgd"),
    ],
)
def test_every_bad_value_is_one_line_before_anything_is_read_or_written(eclipse, tmp_path, setting, message):
    cache, out, before = tmp_path / "cache", tmp_path / "run", tree_hash(eclipse)
    cache.mkdir()
    line = one_line_error("train", "--data", eclipse, "--set", setting, "--cache-dir", cache, "--out", out)
    assert message in line
    assert not any(cache.iterdir()) and not out.exists() and tree_hash(eclipse) == before


def test_a_mistyped_model_fails_before_the_dataset_is_even_scanned(tmp_path):
    # The dataset does not exist: had anything looked at it first, the error would be about the path.
    line = one_line_error("train", "--data", tmp_path / "nowhere", "--model", "resnett", "--out", tmp_path / "r")
    assert "unknown model 'resnett'; did you mean 'resnet'?" in line


def test_the_defaults_and_every_shipped_recipe_are_valid():
    check_config(Config())
    for name in ("assignment", "mri"):
        check_config(load_recipe(name))
    with pytest.raises(UserError, match="did you mean 'assignment'"):
        load_recipe("assigment")


def test_the_assignment_recipe_differs_from_the_train_defaults_only_in_imbalance():
    study, train = load_recipe("assignment"), Config()
    assert [k for k in Config.keys() if study.get(k) != train.get(k)] == ["imbalance"]
    assert study.data.imbalance == "weights"


def test_resume_reads_the_run_split_and_never_splits_again(shapes, tmp_path, monkeypatch):
    cfg = Config().update(
        {
            "path": str(shapes),
            "model": "simple-bn",
            "image_size": 32,
            "batch_size": 8,
            "epochs": 3,
            "seed": 2,
            "precision": "fp32",
            "threads": 1,
        }
    )
    fit(cfg.copy(), tmp_path / "whole", Reporter.quiet())

    real_write = run_folder.write_history

    def interrupt_after_two(history, path):  # as Ctrl-C would, once epoch 2 is on disk
        real_write(history, path)
        if len(history) == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr(run_folder, "write_history", interrupt_after_two)
    with pytest.raises(KeyboardInterrupt):
        fit(cfg.copy(), tmp_path / "cut", Reporter.quiet())
    monkeypatch.setattr(run_folder, "write_history", real_write)
    assert len(run_folder.read_history(tmp_path / "cut" / "history.csv")) == 2
    split = (tmp_path / "cut" / "split.csv").read_text()
    # New files arrive in the dataset: a fresh split would differ, the run's own split does not.
    for d in (shapes / "train").iterdir():
        for f in sorted(d.iterdir())[:3]:
            shutil.copy(f, d / f"new {f.name}")
    resume(tmp_path / "cut", Reporter.quiet())
    assert (tmp_path / "cut" / "split.csv").read_text() == split
    strip = [
        {k: v for k, v in r.items() if k not in run_folder.TIMING_COLUMNS}
        for r in run_folder.read_history(tmp_path / "whole" / "history.csv")
    ]
    assert [
        {k: v for k, v in r.items() if k not in run_folder.TIMING_COLUMNS}
        for r in run_folder.read_history(tmp_path / "cut" / "history.csv")
    ] == strip


def test_resume_says_which_checkpoint_is_damaged(eclipse, tmp_path):
    cfg = Config().update({"path": str(eclipse), "image_size": 32, "batch_size": 8, "epochs": 1})
    fit(cfg, tmp_path / "r", Reporter.quiet())
    last = tmp_path / "r" / "last.pt"
    last.write_bytes(last.read_bytes()[:200])
    line = one_line_error("train", "--resume", tmp_path / "r")
    assert "last.pt is damaged" in line and "best.pt" in line
