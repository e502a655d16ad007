"""recipe/metrics.py: "auto" resolved once, from the recipe; which way each metric is better."""

from __future__ import annotations

import subprocess
import sys

import pytest

from mnistkit.recipe.metrics import format_metric, improves, metric_mode, run_metrics
from mnistkit.recipe.schema import load_recipe_text

BASE = "data: {dataset: digits}\nmodel: {hidden: [8]}\n"


@pytest.mark.parametrize(
    ("extra", "best", "stop", "stop_mode", "target"),
    [
        ("", "test_acc", None, "min", "test_acc"),
        ("data: {dataset: digits, val_split: 0.1}\n", "val_acc", None, "min", "val_acc"),
        ("train: {early_stopping: {patience: 2}}\n", "test_acc", "test_loss", "min", "test_acc"),
        (
            "data: {dataset: digits, val_split: 0.2}\ntrain: {early_stopping: {patience: 2}}\n",
            "val_acc",
            "val_loss",
            "min",
            "val_acc",
        ),
        (
            "train: {best_metric: test_loss, early_stopping: {metric: test_acc}}\n",
            "test_loss",
            "test_acc",
            "max",
            "test_acc",
        ),
        (
            "train: {early_stopping: {metric: test_acc, mode: min}}\n",
            "test_acc",
            "test_acc",
            "min",
            "test_acc",
        ),
    ],
)
def test_auto_metrics_resolve_from_the_recipe(
    extra: str, best: str, stop: str | None, stop_mode: str, target: str
) -> None:
    text = (
        BASE + extra
        if not extra.startswith("data:")
        else extra.replace("\n", "\n", 1) + BASE.split("\n", 1)[1]
    )
    m = run_metrics(load_recipe_text(text))
    assert (m.best, m.stop, m.stop_mode, m.target) == (best, stop, stop_mode, target)
    assert m.best_mode == metric_mode(best)


def test_direction_and_format() -> None:
    assert metric_mode("val_acc") == "max" and metric_mode("test_loss") == "min"
    assert improves(0.9, None, "max") and improves(0.91, 0.9, "max") and not improves(0.9, 0.9, "max")
    assert improves(0.4, 0.5, "min") and not improves(0.45, 0.5, "min", min_delta=0.1)
    assert format_metric("test_acc", 0.875) == "87.50%" and format_metric("val_loss", 0.5) == "0.5000"
    assert format_metric("test_acc", None) == "-"


def test_the_vocabulary_imports_no_torch() -> None:
    code = "import sys, mnistkit.recipe.metrics; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
