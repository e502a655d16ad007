"""Per-class scores and the most-confused class pairs from a run's test predictions (numpy).

The scores are :func:`mnistkit.evaluation.metrics.per_class_report`'s (the same definitions as
``mnistkit eval``: scikit-learn's with ``zero_division=0``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from mnistkit.evaluation.metrics import confusion_matrix, per_class_report


@dataclass
class ClassScores:
    classes: list[str]
    confusion: np.ndarray  # [C, C] counts, rows true class
    accuracy: float
    macro: dict[str, float]
    rows: list[dict[str, Any]]  # per class: index, name, precision, recall, f1, support


@dataclass
class Pair:
    true: str
    predicted: str
    count: int
    share: float  # of the true class's samples


def class_scores(labels: np.ndarray, predicted: np.ndarray, classes: list[str]) -> ClassScores:
    cm = confusion_matrix(labels, predicted, len(classes))
    report = per_class_report(cm, classes)
    rows = [{"index": i, **c} for i, c in enumerate(report["classes"])]
    return ClassScores(classes, cm, report["accuracy"], report["macro"], rows)


def confused_pairs(cm: np.ndarray, classes: list[str], limit: int = 10) -> list[Pair]:
    """The off-diagonal cells with the most samples (true A taken for B), largest first; ties
    in class order."""
    cm = np.asarray(cm)
    off = cm.copy()
    np.fill_diagonal(off, 0)
    flat = np.argsort(-off.reshape(-1), kind="stable")[:limit]
    support = cm.sum(axis=1)
    pairs = []
    for k in flat:
        t, p = divmod(int(k), cm.shape[1])
        if off[t, p] == 0:
            break
        pairs.append(Pair(classes[t], classes[p], int(off[t, p]), float(off[t, p] / support[t])))
    return pairs
