"""What cnnlab promises about your data, your runs and interrupted work, tried the way things go wrong."""

from __future__ import annotations

import argparse
import errno
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import make_shapes, one_line_error, run_cli, tree_hash

from cnnlab import files
from cnnlab.data.folders import scan
from cnnlab.training import run_folder

FAST = ["--model", "mlp", "--image-size", 16, "--batch-size", 8, "-q"]


def _leftovers(*folders: Path) -> list[str]:
    """Temporary files cnnlab writes on the way to a finished file: none may outlive a command."""
    return [str(p) for f in folders if f.exists() for p in f.rglob("*") if ".tmp" in p.name]


# ------------------------------------------------------------------------------------- your data


def test_no_command_writes_into_a_dataset_whatever_the_output_path(shapes, tmp_path):
    before = tree_hash(shapes)
    inside = [shapes / "runs" / "r", shapes / "train" / "circle" / "out", shapes]
    for out in inside:
        for args in (
            ["train", "--data", shapes, *FAST, "--epochs", 1, "--out", out],
            ["study", "regularization", "--data", shapes, "--epochs", 1, "--out", out],
            ["data", "inspect", shapes, "--out", out],
            ["data", "audit", shapes, "--out", out],
            ["train", "--data", shapes, *FAST, "--cache-dir", out, "--out", tmp_path / "r"],
            ["cv", "--data", shapes, "--folds", tmp_path / "folds.csv", "--out", out],
        ):
            assert "inside the dataset" in one_line_error(*args)
    assert tree_hash(shapes) == before
    # ...and a symlink from elsewhere into the dataset is the dataset too.
    (tmp_path / "link").symlink_to(shapes / "train")
    assert "inside the dataset" in one_line_error("train", "--data", shapes, *FAST, "--out", tmp_path / "link" / "r")
    assert tree_hash(shapes) == before


def test_file_system_oddities_are_skipped_and_recorded(shapes, tmp_path):
    circle = shapes / "train" / "circle"
    (circle / "dangling.png").symlink_to(tmp_path / "gone.png")
    (circle / "loop-a.png").symlink_to(circle / "loop-b.png")
    (circle / "loop-b.png").symlink_to(circle / "loop-a.png")
    bad_name = os.fsencode(circle) + b"/caf\xe9.png"  # Latin-1 bytes: not valid UTF-8
    shutil.copy(circle / "img 000.png", bad_name)
    out = tmp_path / "r"
    result = run_cli("train", "--data", shapes, *FAST, "--epochs", 1, "--out", out)
    assert "skipped 4 unusable file(s)" in result.output
    skipped = (out / "skipped.csv").read_text(encoding="utf-8")
    assert skipped.count("broken link") == 3 and "file name is not valid UTF-8" in skipped
    assert "caf\\xe9.png" in skipped
    line = one_line_error("train", "--data", shapes, *FAST, "--epochs", 1, "--strict", "--out", tmp_path / "s")
    assert "4 unusable file(s) (--strict)" in line
    # predict on a folder says which links it skipped
    assert "broken link" in run_cli("predict", out, circle).output


def test_an_unreadable_sub_folder_is_skipped_with_a_row(shapes, monkeypatch):
    (shapes / "train" / "circle" / "locked").mkdir()
    walk = os.walk

    def walk_denied(top, onerror=None, **kw):  # what a folder without read permission does to os.walk
        for dirpath, dirnames, filenames in walk(top, **kw):
            if Path(dirpath).name == "locked":
                onerror(PermissionError(errno.EACCES, "Permission denied", dirpath))
                continue
            yield dirpath, dirnames, filenames

    monkeypatch.setattr(os, "walk", walk_denied)
    ds = scan(shapes, warn=False)
    assert "cannot read folder: Permission denied" in dict(ds.skipped).get(
        str(shapes / "train" / "circle" / "locked"), ""
    )


# ------------------------------------------------------------------------------------- your runs


def test_two_trainings_on_one_folder_never_mix(shapes, tmp_path):
    out = tmp_path / "r"
    cmd = [
        sys.executable,
        "-m",
        "cnnlab.cli",
        "train",
        "--data",
        str(shapes),
        "--model",
        "simple-bn",
        "--image-size",
        "32",
        "--batch-size",
        "4",
        "--epochs",
        "8",
        "-q",
        "--out",
        str(out),
    ]
    env = {**os.environ, "CNNLAB_CACHE": str(tmp_path / "cache")}
    first = subprocess.Popen([*cmd, "--set", "seed=1"], env=env, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 60
    while not (out / files.LOCK).exists() and time.time() < deadline:
        time.sleep(0.02)
    second = subprocess.run([*cmd, "--set", "seed=2"], env=env, stderr=subprocess.PIPE, text=True)
    first.wait(timeout=300)
    assert first.returncode == 0, first.stderr.read()
    assert second.returncode == 2
    assert "in use by another cnnlab process" in second.stderr or "already holds a run" in second.stderr
    assert "Traceback" not in second.stderr
    seeds = {
        run_folder.read_config(out).train.seed,
        *(torch.load(out / name, weights_only=True)["config"]["train"]["seed"] for name in ("last.pt", "best.pt")),
    }
    assert seeds == {1}


def test_a_folder_that_is_not_a_run_is_refused_unless_forced(shapes, tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "history.csv").write_text("my own numbers\n")
    assert "not empty (history.csv) and holds no cnnlab run" in one_line_error(
        "train", "--data", shapes, *FAST, "--epochs", 1, "--out", out
    )
    assert (out / "history.csv").read_text() == "my own numbers\n"
    run_cli("train", "--data", shapes, *FAST, "--epochs", 1, "--out", out, "--force")
    assert run_folder.is_run(out)


@pytest.mark.parametrize("where", ["a file", "under a file"])
def test_an_output_path_that_is_a_file_is_one_line(shapes, tmp_path, where):
    (tmp_path / "f").write_text("x")
    out = tmp_path / "f" if where == "a file" else tmp_path / "f" / "r"
    for args in (
        ["train", "--data", shapes, *FAST, "--out", out],
        ["optim", "animate", "--out", out],
        ["study", "lr", "--data", shapes, "--out", out],
        ["data", "inspect", shapes, "--out", out],
    ):
        line = one_line_error(*args)
        assert "is a file" in line or "lies under the file" in line or "is a file" in line.lower(), line


def test_resume_from_another_directory_uses_the_run_data_and_checks_it(shapes, tmp_path, monkeypatch):
    monkeypatch.chdir(shapes.parent)
    run_cli("train", "--data", shapes.name, *FAST, "--epochs", 1, "--out", tmp_path / "r")
    assert run_folder.read_config(tmp_path / "r").data.path == str(shapes)  # recorded absolute
    make_shapes(tmp_path / "elsewhere" / shapes.name, splits=(("train", 3),), seed=5)
    monkeypatch.chdir(tmp_path / "elsewhere")
    (tmp_path / "r" / "last.pt").unlink()  # as if killed during epoch 1: resume trains on the recorded split
    run_cli("train", "--resume", tmp_path / "r", "-q")
    assert len(run_folder.read_history(tmp_path / "r" / "history.csv")) == 1
    (tmp_path / "r" / "last.pt").unlink()
    with open(shapes / "train" / "circle" / "img 001.png", "ab") as f:  # the data changed under the run
        f.write(b"\0")
    assert "no longer matches" in one_line_error("train", "--resume", tmp_path / "r")


def test_interrupted_before_the_first_epoch_leaves_nothing_and_says_what_to_do(shapes, tmp_path, monkeypatch):
    from cnnlab.training import trainer

    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(trainer, "prepare_run_data", interrupted)
    result = run_cli("train", "--data", shapes, *FAST, "--out", tmp_path / "r", expect=130)
    assert "nothing was written; run the same command again" in result.output
    assert not (tmp_path / "r").exists()


# ---------------------------------------------------------------------------------- damaged files


def test_damaged_and_foreign_checkpoints_are_one_line(shapes, tmp_path):
    out = tmp_path / "r"
    run_cli("train", "--data", shapes, *FAST, "--epochs", 2, "--out", out)
    (out / "best.pt").rename(tmp_path / "best.pt")
    assert "missing although" in one_line_error("test", out)
    torch.save({"weights": torch.zeros(3)}, out / "best.pt")  # a torch file, not a cnnlab one
    assert "not a cnnlab checkpoint" in one_line_error("predict", out, shapes / "test")
    torch.save(argparse.Namespace(run="crafted"), out / "best.pt")  # a pickle weights_only=True refuses to run
    assert "damaged or not a cnnlab checkpoint" in one_line_error("predict", out, shapes / "test")
    with open(out / "best.pt", "wb") as f:
        f.write((tmp_path / "best.pt").read_bytes()[:1000])
    assert "best.pt is damaged" in one_line_error("test", out)
    shutil.copy(tmp_path / "best.pt", out / "best.pt")
    (out / "evaluations.json").write_text("{not json")
    assert "evaluations.json is damaged" in one_line_error("test", out)


def test_a_copy_of_the_test_folder_is_the_same_test(shapes, tmp_path):
    out = tmp_path / "r"
    run_cli("train", "--data", shapes, *FAST, "--epochs", 1, "--out", out)
    run_cli("test", out)
    copy = shutil.copytree(shapes, tmp_path / "copy")
    assert "already evaluated 1 time" in run_cli("test", out, "--data", copy).output


@pytest.mark.parametrize("victim", [".last.pt.tmp", ".best.pt.tmp", ".index.pt"])  # a checkpoint, the cache index
def test_a_full_disk_ends_in_one_line_and_leaves_no_temporary_file(shapes, tmp_path, monkeypatch, victim):
    real_save = torch.save

    def save_until_full(obj, f, *a, **k):  # the disk fills in the middle of this file
        if Path(f).name.startswith(victim):
            Path(f).write_bytes(b"PK\x03\x04partial")
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(obj, f, *a, **k)

    monkeypatch.setattr(torch, "save", save_until_full)
    out = tmp_path / "r"
    assert "disk is full" in one_line_error("train", "--data", shapes, *FAST, "--epochs", 1, "--out", out)
    assert not _leftovers(out, Path(os.environ["CNNLAB_CACHE"]))


def test_a_really_full_disk(shapes, tmp_path, monkeypatch):
    """A 96 KiB tmpfs where one can be mounted (root); elsewhere the same folder fills at 96 KiB by injection."""
    small = tmp_path / "small"
    small.mkdir()
    try:
        mounted = (
            subprocess.run(
                ["mount", "-t", "tmpfs", "-o", "size=96k", "tmpfs", str(small)], capture_output=True
            ).returncode
            == 0
        )
    except OSError:  # no mount command
        mounted = False
    if not mounted:
        real_save = torch.save

        def save_within_96k(obj, f, *a, **k):
            real_save(obj, f, *a, **k)
            if small in Path(f).parents and sum(p.stat().st_size for p in small.rglob("*") if p.is_file()) > 96 << 10:
                raise OSError(errno.ENOSPC, "No space left on device")

        monkeypatch.setattr(torch, "save", save_within_96k)
    try:
        for args in (
            [
                "train",
                "--data",
                shapes,
                "--model",
                "simple-bn",
                "--image-size",
                32,
                "-q",
                "--epochs",
                1,
                "--out",
                small / "r",
            ],
            [
                "train",
                "--data",
                shapes,
                "--model",
                "mlp",
                "--image-size",
                64,
                "-q",
                "--epochs",
                1,
                "--cache-dir",
                small / "cache",
                "--out",
                tmp_path / "r",
            ],
        ):
            line = one_line_error(*args)
            assert "disk is full" in line, line
            assert not _leftovers(small)
    finally:
        if mounted:
            subprocess.run(["umount", "-l", str(small)], check=False)


def test_a_config_file_that_is_not_utf8_is_one_line(tmp_path):
    cfg = tmp_path / "utf16.toml"
    cfg.write_text("[train]\nepochs = 3\n", encoding="utf-16")
    assert "not UTF-8" in one_line_error("train", "--config", cfg, "--data", tmp_path)
    assert "'abc' is not a valid integer" in one_line_error("train", "--data", tmp_path, "--epochs", "abc")
    line = one_line_error("train", "--resume", tmp_path, "--epochs", "5")
    assert "--resume continues a run exactly as it was configured: --epochs" in line


def test_evaluations_log_is_json_list(shapes, tmp_path):
    out = tmp_path / "r"
    run_cli("train", "--data", shapes, *FAST, "--epochs", 1, "--out", out)
    run_cli("test", out)
    log = json.loads((out / "evaluations.json").read_text())
    assert len(log) == 1 and {"content_id", "split_id"} <= set(log[0])


# --------------------------------------------------------------------------- testing on other data sets


def test_test_on_other_data_sets_judges_the_run_classes(shapes, tmp_path):
    out = tmp_path / "r"
    run_cli("train", "--data", shapes, *FAST, "--epochs", 1, "--out", out)
    # A bare class tree with other names for two of the three classes (and no square at all).
    tree = make_shapes(tmp_path / "tree", splits=(("", 3),), classes=("round", "tri"))
    res = json.loads(run_cli("test", out, "--data", tree, "--class-map", "round=circle,tri=triangle", "--json").output)
    assert res["n_images"] == 6 and res["per_class"]["square"]["support"] == 0
    assert res["per_class"]["circle"]["support"] == 3
    # Unmapped, a folder name the run does not know is one line that says how to map it.
    assert "--class-map THEIRS=OURS" in one_line_error("test", out, "--data", tree)
    # A data set with its own training folder of other class names: only its test folder is read.
    other = make_shapes(tmp_path / "other", splits=(("Training", 2),), classes=("a", "b", "c", "d"))
    make_shapes(other, splits=(("Testing", 2),), classes=("Circle", "Square", "Triangle"))
    res = json.loads(
        run_cli(
            "test", out, "--data", other, "--class-map", "Circle=circle,Square=square,Triangle=triangle", "--json"
        ).output
    )
    assert res["n_images"] == 6 and sum(map(sum, res["confusion_matrix"])) == 6
    # A dataset with only a training folder has nothing to test on.
    only_train = make_shapes(tmp_path / "only", splits=(("train", 2),))
    assert "no test split" in one_line_error("test", out, "--data", only_train)


def test_a_summary_survives_a_history_one_epoch_behind_best_pt():
    from cnnlab.training.run_folder import summarize_history

    history = [
        {
            "epoch": 1,
            "train_loss": 1.0,
            "train_f1": 0.5,
            "train_acc": 0.5,
            "val_loss": 1.0,
            "val_f1": 0.4,
            "val_acc": 0.4,
            "epoch_s": 1.0,
            "images_per_s": 10.0,
        }
    ]
    assert summarize_history(history, best_epoch=2)["best_epoch"] == 1
