"""Numbers that must not change by accident: histories and test scores recorded by cnnlab 0.4.0 (before it, by 0.3.0,
0.2.0 and the code before the redesign; see make_golden.py and CHANGELOG.md).

tests/training/golden/make_golden.py wrote them, one folder per kernel set (see its docstring). Two comparisons:

- everywhere, the figures that do not amplify rounding: the train/validation split and the labels of every
  training batch of every epoch (order, oversampling, mixup pairs), exactly; the first optimizer
  step's loss (a forward pass from the initial weights, through the data order, augmentation, mixup and loss),
  the first epoch's losses and every scheduled learning rate, closely;
- where this process runs a recorded kernel set (its fingerprint: torch version, ATen's, oneDNN's and MKL's
  kernel levels, oneDNN's extensions, the CPU vendor), every figure of every epoch to the last digit.

Not the later epochs elsewhere: three epochs on a dozen images amplify last-bit differences past any tolerance
(seen: 3% on a validation loss, a flipped prediction, between AVX2 and AVX-512 kernels). Every run uses one
thread (its config says so), so the thread count of the machine changes nothing; the CI runs the suite a second
time under `ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 MKL_ENABLE_INSTRUCTIONS=AVX2`, the recorded AVX2 set.
"""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

import pytest
import torch

from cnnlab.evaluation import prediction
from cnnlab.training.run_folder import TIMING_COLUMNS, read_history

GOLDEN = Path(__file__).parent / "golden"
sys.path.insert(0, str(GOLDEN))
from make_golden import (  # noqa: E402
    CONFIGS,
    KERNELS,
    code,
    dataset,
    fingerprint,
    matching_set,
    one_thread,
    read_split,
    recorded_sets,
    scores,
    train,
)

SETS = [KERNELS / name for name in recorded_sets()]
HERE = matching_set()  # the recorded kernel set this process runs, or None
# where legacy-run/predict.json was written: there its predictions match to the last digit
LEGACY_CPU = json.loads((GOLDEN / "legacy-run" / "fingerprint.json").read_text())
# Across kernel sets (AVX2, AVX-512, no SIMD, oneDNN at SSE4.1) seen at most: 2e-7 relative on the first step's
# loss, 2e-7 on the first epoch's training loss and 4e-6 on its validation loss (1e-4 with two threads instead
# of one). A changed default moves them by 1e-3 and more.
STEP_TOLERANCE = 1e-5
EPOCH_TOLERANCE = 1e-3
FORWARD_TOLERANCE = 1e-5  # a prediction from fixed weights: a forward pass only


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return dataset(tmp_path_factory.mktemp("golden") / "data")


def _strip(rows: list[dict], columns) -> list[dict]:
    return [{k: r[k] for k in columns if k not in TIMING_COLUMNS} for r in rows]


def _close(ours: float, ref: float, tolerance: float, what: str) -> None:
    assert ours == pytest.approx(ref, rel=tolerance), f"{what}: {ours!r}, recorded {ref!r}"


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_history_matches_the_golden_figures(data, tmp_path, name):
    fit, config, test_run, predict = code()
    seen = train(fit, config, name, data, tmp_path / name)
    losses, run = seen["losses"], tmp_path / name
    assert read_split(run / "split.csv") == read_split(GOLDEN / f"split-{name}.csv"), "another train/val split"
    labels = json.loads((GOLDEN / f"labels-{name}.json").read_text())
    assert len(seen["labels"]) == len(labels), f"{name}: {len(seen['labels'])} training losses, recorded {len(labels)}"
    for i, (ours, ref) in enumerate(zip(seen["labels"], labels, strict=True)):
        assert ours == ref, f"{name}: the labels of training loss {i + 1} (another order, oversampling or mixup?)"
    ours = read_history(run / "history.csv")
    for ref_set in SETS:
        golden = read_history(ref_set / f"{name}.csv")
        where = f"{name}, against {ref_set.name}"
        # Same columns in the same order; later versions only add columns after them (per-class recall).
        assert [list(r)[: len(golden[0])] for r in ours] == [list(r) for r in golden], where
        _close(ours[0]["train_loss"], golden[0]["train_loss"], EPOCH_TOLERANCE, f"{where}: epoch 1 train_loss")
        _close(ours[0]["val_loss"], golden[0]["val_loss"], EPOCH_TOLERANCE, f"{where}: epoch 1 val_loss")
        # The schedule; a plateau's depends on the validation loss, so only its first epoch is independent of it.
        scheduled = 1 if CONFIGS[name].get("scheduler") == "plateau" else len(golden)
        assert [r["lr"] for r in ours[:scheduled]] == pytest.approx([r["lr"] for r in golden[:scheduled]], rel=1e-9), (
            f"{where}: learning rates"
        )
        if (ref_set / f"{name}-steps.json").is_file():
            steps = json.loads((ref_set / f"{name}-steps.json").read_text())
            assert len(losses) == len(steps), f"{where}: optimizer steps"
            _close(losses[0], steps[0], STEP_TOLERANCE, f"{where}: first step's loss")
    if HERE is None:
        return
    # On a recorded kernel set: everything, to the last digit.
    golden = read_history(HERE / f"{name}.csv")
    assert _strip(ours, golden[0]) == _strip(golden, golden[0]), f"{name}: history differs from {HERE.name}"
    if (HERE / f"{name}-steps.json").is_file():
        assert losses == json.loads((HERE / f"{name}-steps.json").read_text()), f"{name}: step losses"
    if name == "fixed":
        assert scores(run, data, test_run, predict) == json.loads((HERE / "fixed_test.json").read_text())


def test_a_checkpoint_of_the_first_format_still_predicts(data):
    """A run written before the redesign (checkpoint format 1, with `prep` and `model_name`) still loads."""
    legacy = GOLDEN / "legacy-run"
    ref = json.loads((legacy / "predict.json").read_text())
    assert "prep" in torch.load(legacy / "best.pt", weights_only=True)
    with one_thread():
        rows = prediction.predict_files(legacy, [str(data / p) for p in ref["images"]])
    ours, theirs = [list(r["probs"].values()) for r in rows], [list(p.values()) for p in ref["probs"]]
    if fingerprint() == LEGACY_CPU:
        assert ours == theirs
    else:
        assert sum(ours, []) == pytest.approx(sum(theirs, []), rel=FORWARD_TOLERANCE)


def test_golden_files_are_complete():
    # an AVX2 set (what the CI's second pass runs) and at least one other
    assert any(s.name.endswith("-avx2") for s in SETS) and len(SETS) >= 2, [s.name for s in SETS]
    for ref_set in SETS:
        assert set(json.loads((ref_set / "fingerprint.json").read_text())) == set(fingerprint()), ref_set.name
        assert (ref_set / "fixed_test.json").is_file(), ref_set.name
        for name in CONFIGS:
            with open(ref_set / f"{name}.csv", newline="") as f:
                assert len(list(csv.DictReader(f))) == CONFIGS[name]["epochs"], (ref_set.name, name)
    for name in CONFIGS:
        assert read_split(GOLDEN / f"split-{name}.csv") and json.loads((GOLDEN / f"labels-{name}.json").read_text())
