"""Metrics accumulated on tensors (no per-batch host syncs); macro-F1 as scikit-learn defines it."""

from __future__ import annotations

import torch


def confusion(y_true: torch.Tensor, y_pred: torch.Tensor, n_classes: int) -> torch.Tensor:
    """n x n counts, rows = true class, columns = predicted class."""
    idx = y_true.to(torch.long) * n_classes + y_pred.to(torch.long)
    return torch.bincount(idx, minlength=n_classes * n_classes).view(n_classes, n_classes)


def scores(cm: torch.Tensor) -> dict[str, float]:
    """Macro-F1 and accuracy from a confusion matrix.

    Matches sklearn's f1_score(average='macro', zero_division=0) over the classes present in either
    the labels or the predictions.
    """
    cm = cm.to(torch.float64)
    tp = cm.diag()
    support, predicted = cm.sum(1), cm.sum(0)
    denom = support + predicted
    f1 = torch.where(denom > 0, 2 * tp / denom.clamp_min(1), torch.zeros_like(tp))
    present = denom > 0
    total = cm.sum()
    return {
        "f1": float(f1[present].mean()) if present.any() else 0.0,
        "acc": float(tp.sum() / total) if total > 0 else 0.0,
    }


def recalls(cm: torch.Tensor) -> list[float]:
    """Recall of each class (row of the confusion matrix); 0 for a class with no images."""
    cm = cm.to(torch.float64)
    return (cm.diag() / cm.sum(1).clamp_min(1)).tolist()
