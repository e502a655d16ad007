"""The rules applied after each epoch: best checkpoint, early stopping, target accuracy.

Pure functions of the metric rows (no torch): the training loop asks :func:`judge_epoch` once
per epoch and applies the verdict; tests drive it with a scripted sequence of metrics.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from mnistkit.recipe.metrics import RunMetrics, improves
from mnistkit.recipe.sections import EarlyStopping


@dataclass(frozen=True)
class Verdict:
    is_best: bool  # this epoch's weights go to best.pt
    best: float | None
    best_epoch: int | None
    bad_epochs: int  # epochs without improvement of the early-stopping metric
    stop_reason: str | None  # why training stops after this epoch (None: it goes on)


def judge_epoch(
    rows: list[dict[str, Any]],
    metrics: RunMetrics,
    best: float | None,
    best_epoch: int | None,
    bad_epochs: int,
    early_stopping: EarlyStopping | None,
    target_accuracy: float | None,
) -> Verdict:
    """The verdict on the last of ``rows`` (every epoch so far, this one last), given the best
    value and the count of bad epochs before it."""
    row = rows[-1]
    epoch = row["epoch"]
    is_best = improves(row[metrics.best], best, metrics.best_mode)  # strict: earliest of equals
    if is_best:
        best, best_epoch = row[metrics.best], epoch
    stop_reason = None
    if early_stopping is not None and metrics.stop is not None:
        before = _best_so_far(rows[:-1], metrics.stop, metrics.stop_mode)
        improved = improves(row[metrics.stop], before, metrics.stop_mode, early_stopping.min_delta)
        bad_epochs = 0 if improved else bad_epochs + 1
        if bad_epochs >= early_stopping.patience:
            stop_reason = (
                f"early stopping: {metrics.stop} has not improved for {early_stopping.patience} epoch(s)"
            )
    target = metrics.target
    if target_accuracy is not None and row[target] >= target_accuracy:
        stop_reason = (
            f"target reached: {target} {row[target]:.2%} >= {target_accuracy:.2%} after epoch {epoch}"
        )
    return Verdict(is_best, best, best_epoch, bad_epochs, stop_reason)


def _best_so_far(rows: list[dict[str, Any]], metric: str, mode: str) -> float | None:
    values = [r[metric] for r in rows if r.get(metric) is not None]
    if not values:
        return None
    return max(values) if mode == "max" else min(values)
