"""Metrics accumulated on tensors (no per-batch host syncs); macro-F1 as scikit-learn defines it.

The one home of the confusion matrix and the scores read from it, for training (`scores`, `recalls`) and for the
test (`per_class`, `macro_f1`): each ratio as scikit-learn's precision_recall_fscore_support(zero_division=0)
computes it, 0 where it is 0/0.
"""

from __future__ import annotations

import torch


def confusion(y_true: torch.Tensor, y_pred: torch.Tensor, n_classes: int) -> torch.Tensor:
    """n x n counts, rows = true class, columns = predicted class. Counted where the labels are, without a host
    sync (on a GPU, `bincount` first reads the largest index back to size its output)."""
    idx = y_true.to(torch.long) * n_classes + y_pred.to(torch.long)
    counts = torch.zeros(n_classes * n_classes, dtype=torch.long, device=idx.device)
    return counts.scatter_add_(0, idx, torch.ones_like(idx)).view(n_classes, n_classes)


def scores(cm: torch.Tensor) -> dict[str, float]:
    """Macro-F1 and accuracy from a confusion matrix.

    Matches sklearn's f1_score(average='macro', zero_division=0) over the classes present in either
    the labels or the predictions.
    """
    cm = cm.to(torch.float64)
    tp = cm.diag()
    total = cm.sum()
    return {
        "f1": macro_f1(cm),
        "acc": float(tp.sum() / total) if total > 0 else 0.0,
    }


def recalls(cm: torch.Tensor) -> list[float]:
    """Recall of each class (row of the confusion matrix); 0 for a class with no images."""
    return per_class(cm)["recall"].tolist()


def _ratio(num: torch.Tensor, den: torch.Tensor) -> torch.Tensor:
    """num / den, 0 where den is 0 (scikit-learn's zero_division=0)."""
    return torch.where(den > 0, num / den.clamp_min(1), torch.zeros_like(num))


def per_class(cm: torch.Tensor) -> dict[str, torch.Tensor]:
    """Each class's precision (its column), recall (its row), F1 and support (float64; support int64), as
    precision_recall_fscore_support(labels=every class, zero_division=0) gives them: a class never predicted has
    precision 0, one with no images recall 0, one with neither F1 0."""
    cm = cm.to(torch.float64)
    tp = cm.diag()
    support, predicted = cm.sum(1), cm.sum(0)
    return {
        "precision": _ratio(tp, predicted),
        "recall": _ratio(tp, support),
        "f1": _ratio(2 * tp, support + predicted),
        "support": support.to(torch.int64),
    }


def macro_f1(cm: torch.Tensor, every_class: bool = False) -> float:
    """The mean of the classes' F1. By default over the classes with images or predictions, as f1_score(
    average='macro', zero_division=0) without labels (training's figure); `every_class`: over every class of the
    matrix, an absent one counting 0, as f1_score(labels=every class, average='macro', zero_division=0) (the
    test's figure). The test's mean is numpy's, as scikit-learn takes it (np.average), to the last bit; training's
    stays torch's, which can differ from it in the last bit from about 10 classes on."""
    cm = cm.to(torch.float64)
    f1 = per_class(cm)["f1"]
    if every_class:
        return float(f1.cpu().numpy().mean())
    f1 = f1[(cm.sum(1) + cm.sum(0)) > 0]
    return float(f1.mean()) if len(f1) else 0.0
