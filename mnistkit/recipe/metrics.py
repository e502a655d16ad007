"""The metric vocabulary, written once: column names, which way is better, what "auto" means.

Torch-free (the recipe layer): the training loop, the run directory, ``runs``/``compare``, the
plateau scheduler and the display all read these names from here. "auto" is resolved in one
place, :func:`run_metrics`, from the recipe alone (a run has a validation split exactly when
``data.val_split > 0``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from mnistkit.errors import set_hint

Mode = Literal["min", "max"]

#: metrics.csv, in column order (val_* only in runs with a validation split).
METRIC_COLUMNS = (
    "epoch",
    "train_loss",
    "train_acc",
    "val_loss",
    "val_acc",
    "test_loss",
    "test_acc",
    "lr",
    "seconds",
    "samples_per_s",
)

#: What ``mnistkit compare`` puts side by side (columns neither run has are dropped).
COMPARE_COLUMNS = ("train_loss", "train_acc", "val_loss", "val_acc", "test_loss", "test_acc", "lr")


def higher_is_better(metric: str) -> bool:
    """Accuracies (``*_acc``) are better higher; losses (and anything else) lower."""
    return metric.endswith("_acc")


def metric_mode(metric: str) -> Mode:
    return "max" if higher_is_better(metric) else "min"


def improves(value: float, than: float | None, mode: Mode, min_delta: float = 0.0) -> bool:
    """Whether ``value`` beats ``than`` by more than ``min_delta`` (anything beats None).

    Strict: an equal value is no improvement, so the earliest of equal epochs stays the best.
    """
    if than is None:
        return True
    return value > than + min_delta if mode == "max" else value < than - min_delta


def format_metric(metric: str | None, value: float | None) -> str:
    """An accuracy in percent, a loss to 4 decimals; "-" for none."""
    if value is None or metric is None:
        return "-"
    return f"{value:.2%}" if higher_is_better(metric) else f"{value:.4f}"


def auto_metric(kind: Literal["acc", "loss"], has_val: bool) -> str:
    """What "auto" monitors: the validation split's metric when there is one, else the test split's."""
    return f"{'val' if has_val else 'test'}_{kind}"


def best_metric_name(best_metric: str, has_val: bool) -> str:
    """``train.best_metric`` resolved ("auto": val_acc with a validation split, else test_acc)."""
    return best_metric if best_metric != "auto" else auto_metric("acc", has_val)


@dataclass(frozen=True)
class RunMetrics:
    """The metrics a run watches, "auto" resolved."""

    has_val: bool
    best: str  # picks best.pt (train.best_metric)
    best_mode: Mode
    stop: str | None  # early stopping's metric (None without train.early_stopping)
    stop_mode: Mode
    target: str  # what train.target_accuracy compares with: val_acc, else test_acc
    #: What this run selects on the test set: ("best.pt", "test_acc", explicit?) triples, for the
    #: run header, the summary and status.json (see :func:`selection_on_test_notes`).
    on_test: tuple[tuple[str, str, bool], ...] = ()


def run_metrics(recipe: Any) -> RunMetrics:
    """Resolve every "auto" metric setting of a validated recipe."""
    has_val = recipe.data.val_split > 0
    t = recipe.train
    best = best_metric_name(t.best_metric, has_val)
    es = t.early_stopping
    stop = None if es is None else (es.metric if es.metric != "auto" else auto_metric("loss", has_val))
    stop_mode: Mode = "min"
    if es is not None and stop is not None:
        stop_mode = es.mode if es.mode != "auto" else metric_mode(stop)
    on_test: list[tuple[str, str, bool]] = []
    if t.checkpoint and best.startswith("test_"):
        on_test.append(("best.pt", best, t.best_metric != "auto"))
    if es is not None and stop is not None and stop.startswith("test_"):
        on_test.append(("early stopping", stop, es.metric != "auto"))
    plateau = _plateau_metric(recipe)
    if plateau is not None and plateau[0].startswith("test_"):
        on_test.append(("the plateau scheduler", *plateau))
    return RunMetrics(
        has_val, best, metric_mode(best), stop, stop_mode, auto_metric("acc", has_val), tuple(on_test)
    )


def _plateau_metric(recipe: Any) -> tuple[str, bool] | None:
    """The metric a ``plateau`` scheduler watches, and whether the recipe names it."""
    sched = getattr(recipe, "scheduler", None)
    if sched is None or getattr(sched, "name", None) != "plateau":
        return None
    # The spec carries the registry's default (registry/builtins.py) when the recipe names none.
    metric = sched.model_dump().get("metric") or "test_loss"
    return metric, "metric" in sched.model_fields_set


def selection_on_test_notes(metrics: RunMetrics) -> list[str]:
    """One line per thing chosen on the test set, saying so and how to avoid it.

    A run without ``data.val_split`` still trains as the recipe says (the tutorial evaluates on
    the test set every epoch), but nothing is selected on the test set without a word: the run
    header, the summary and status.json say what was.
    """
    lines = []
    for what, metric, explicit in metrics.on_test:
        chosen = f"{what} is selected on {metric}" if what == "best.pt" else f"{what} watches {metric}"
        why = "as the recipe says" if explicit else "the recipe has no data.val_split"
        lines.append(
            f"{chosen}: the test set ({why}); to select on a validation set, "
            + set_hint("data.val_split", "0.1")
        )
    return lines
