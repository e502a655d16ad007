"""training/rules.py: best checkpoint, early stopping and target accuracy on scripted metrics."""

from __future__ import annotations

from typing import Any

from mnistkit.recipe.metrics import run_metrics
from mnistkit.recipe.schema import load_recipe_text
from mnistkit.training.rules import Verdict, judge_epoch

BASE = "data: {dataset: digits}\nmodel: {hidden: [8]}\nepochs: 20\n"


def play(train: str, script: list[dict[str, float]]) -> list[Verdict]:
    """Feed one row per epoch to judge_epoch as the loop does; stop where it says stop."""
    recipe = load_recipe_text(BASE + f"train: {train}\n")
    metrics, t = run_metrics(recipe), recipe.train
    rows: list[dict[str, Any]] = []
    best = best_epoch = None
    bad = 0
    verdicts = []
    for epoch, values in enumerate(script, start=1):
        rows.append({"epoch": epoch, **values})
        v = judge_epoch(rows, metrics, best, best_epoch, bad, t.early_stopping, t.target_accuracy)
        best, best_epoch, bad = v.best, v.best_epoch, v.bad_epochs
        verdicts.append(v)
        if v.stop_reason:
            break
    return verdicts


def acc(*values: float) -> list[dict[str, float]]:
    return [{"test_acc": a, "test_loss": 1 - a} for a in values]


def test_best_is_the_earliest_of_equal_values() -> None:
    vs = play("{}", acc(0.5, 0.7, 0.7, 0.6))
    assert [v.is_best for v in vs] == [True, True, False, False]
    assert (vs[-1].best, vs[-1].best_epoch) == (0.7, 2) and vs[-1].stop_reason is None


def test_best_by_a_loss_is_the_lowest() -> None:
    vs = play("{best_metric: test_loss}", acc(0.5, 0.4, 0.8))
    assert [v.is_best for v in vs] == [True, False, True] and vs[-1].best == 1 - 0.8


def test_early_stopping_counts_epochs_without_improvement_and_stops_at_patience() -> None:
    # auto: test_loss, min; 0.6 -> loss 0.4 is the best, then three epochs no better.
    vs = play("{early_stopping: {patience: 3}}", acc(0.5, 0.6, 0.55, 0.6, 0.58, 0.9))
    assert [v.bad_epochs for v in vs] == [0, 0, 1, 2, 3]
    assert vs[-1].stop_reason == "early stopping: test_loss has not improved for 3 epoch(s)"


def test_min_delta_and_an_improvement_resets_the_count() -> None:
    vs = play(
        "{early_stopping: {patience: 2, metric: test_acc, min_delta: 0.05}}", acc(0.5, 0.53, 0.6, 0.62, 0.64)
    )
    assert [v.bad_epochs for v in vs] == [0, 1, 0, 1, 2]
    assert vs[-1].stop_reason is not None and "test_acc" in vs[-1].stop_reason


def test_target_accuracy_stops_after_the_epoch_that_reaches_it() -> None:
    vs = play("{target_accuracy: 0.8}", acc(0.5, 0.79, 0.8, 0.95))
    assert len(vs) == 3
    assert vs[-1].stop_reason == "target reached: test_acc 80.00% >= 80.00% after epoch 3"
