"""Classification metrics from predictions: confusion matrix and per-class report (numpy only).

Definitions match ``sklearn.metrics`` with ``labels=range(C)`` and ``zero_division=0``:
a class never predicted has precision 0.0, a class with no examples has recall 0.0, and macro
averages are unweighted means over all C classes.
"""

from __future__ import annotations

from typing import Any

import numpy as np


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int) -> np.ndarray:
    """Counts ``cm[t, p]`` of examples of true class t predicted as p: int64 ``[C, C]``."""
    t = np.asarray(y_true).reshape(-1)
    p = np.asarray(y_pred).reshape(-1)
    if t.shape != p.shape:
        raise ValueError(f"y_true has {t.size} labels but y_pred has {p.size}")
    if num_classes < 1:
        raise ValueError(f"num_classes must be at least 1, got {num_classes}")
    t = t.astype(np.int64, copy=False)
    p = p.astype(np.int64, copy=False)
    for name, arr in (("y_true", t), ("y_pred", p)):
        if arr.size and (arr.min() < 0 or arr.max() >= num_classes):
            raise ValueError(
                f"{name} holds labels outside 0..{num_classes - 1}: "
                f"min {int(arr.min())}, max {int(arr.max())}"
            )
    # One bincount over flattened (true, pred) pairs: O(N), no Python loop.
    counts = np.bincount(t * num_classes + p, minlength=num_classes * num_classes)
    return counts.reshape(num_classes, num_classes).astype(np.int64)


def _safe_div(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    out = np.zeros(num.shape, dtype=np.float64)
    np.divide(num, den, out=out, where=den != 0)
    return out


def per_class_report(cm: np.ndarray, classes: list[str]) -> dict[str, Any]:
    """Accuracy, macro precision/recall/F1 and per-class scores from a confusion matrix.

    Returns plain Python floats/ints/strs (JSON-serialisable)::

        {"accuracy": float,
         "macro": {"precision": float, "recall": float, "f1": float},
         "classes": [{"name", "precision", "recall", "f1", "support"}, ...]}
    """
    cm = np.asarray(cm)
    if cm.ndim != 2 or cm.shape[0] != cm.shape[1]:
        raise ValueError(f"confusion matrix must be square [C, C], got shape {cm.shape}")
    if len(classes) != cm.shape[0]:
        raise ValueError(f"{len(classes)} class names for a {cm.shape[0]}-class matrix")
    cm = cm.astype(np.float64)
    tp = np.diag(cm)
    support = cm.sum(axis=1)
    predicted = cm.sum(axis=0)
    precision = _safe_div(tp, predicted)
    recall = _safe_div(tp, support)
    f1 = _safe_div(2 * precision * recall, precision + recall)
    total = cm.sum()
    return {
        "accuracy": float(tp.sum() / total) if total else 0.0,
        "macro": {
            "precision": float(precision.mean()),
            "recall": float(recall.mean()),
            "f1": float(f1.mean()),
        },
        "classes": [
            {
                "name": str(name),
                "precision": float(precision[i]),
                "recall": float(recall[i]),
                "f1": float(f1[i]),
                "support": int(support[i]),
            }
            for i, name in enumerate(classes)
        ],
    }
