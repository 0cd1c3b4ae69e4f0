"""training/metrics.py against scikit-learn: the test's and training's figures are the numbers sklearn gives."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.metrics import confusion_matrix, f1_score, precision_recall_fscore_support

from cnnlab.training.metrics import confusion, macro_f1, per_class, recalls, scores

CASES = {  # (true, predicted, number of classes)
    "perfect": ([0, 1, 2, 0, 1, 2], [0, 1, 2, 0, 1, 2], 3),
    "mixed": ([0, 0, 1, 1, 2, 2, 2], [0, 1, 1, 2, 2, 0, 2], 3),
    "never predicted": ([0, 1, 2, 2], [0, 0, 0, 1], 3),  # class 2 has images, no predictions: precision 0/0
    "no images": ([0, 0, 1, 1], [0, 2, 1, 2], 3),  # class 2 predicted, never true: recall 0/0
    "absent": ([0, 1, 0, 1, 1], [0, 1, 1, 1, 0], 4),  # classes 2 and 3: neither images nor predictions
    "one class": ([1, 1, 1], [1, 1, 1], 3),
    "all wrong": ([0, 1, 2], [1, 2, 0], 3),
}


def _sklearn(y, p, n):
    labels = list(range(n))
    prec, rec, f1, sup = precision_recall_fscore_support(y, p, labels=labels, zero_division=0)
    return {
        "cm": confusion_matrix(y, p, labels=labels).tolist(),
        "precision": prec.tolist(),
        "recall": rec.tolist(),
        "f1": f1.tolist(),
        "support": sup.tolist(),
        "macro_all": float(f1_score(y, p, labels=labels, average="macro", zero_division=0)),
        "macro_present": float(f1_score(y, p, average="macro", zero_division=0)),
    }


def _cases():
    rng = np.random.default_rng(0)
    random = {
        f"random {n} classes": (rng.integers(0, n, 200).tolist(), rng.integers(0, n - 1, 200).tolist(), n)
        for n in (2, 5, 9, 17, 40)
    }  # the last class is never predicted
    return {**CASES, **random}


@pytest.mark.parametrize("name", sorted(_cases()))
def test_metrics_are_exactly_sklearns(name):
    y, p, n = _cases()[name]
    ref = _sklearn(y, p, n)
    cm = confusion(torch.tensor(y), torch.tensor(p), n)
    assert cm.tolist() == ref["cm"]
    got = per_class(cm)
    for key in ("precision", "recall", "f1", "support"):
        assert got[key].tolist() == ref[key], key  # to the last bit, not approximately
    assert recalls(cm) == ref["recall"]
    assert macro_f1(cm, every_class=True) == ref["macro_all"]
    assert macro_f1(cm) == scores(cm)["f1"] == pytest.approx(ref["macro_present"], rel=1e-15, abs=0)  # torch's sum
    assert scores(cm)["acc"] == float(np.mean(np.array(y) == np.array(p)))


def test_absent_classes_count_zero_only_when_every_class_is_averaged():
    cm = confusion(torch.tensor([0, 1]), torch.tensor([0, 1]), 4)
    assert per_class(cm)["f1"].tolist() == [1.0, 1.0, 0.0, 0.0]
    assert per_class(cm)["precision"].tolist() == per_class(cm)["recall"].tolist() == [1.0, 1.0, 0.0, 0.0]
    assert macro_f1(cm) == 1.0 and macro_f1(cm, every_class=True) == 0.5
