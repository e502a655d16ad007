"""Tests for mnistkit.evaluation.metrics against sklearn.metrics."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from sklearn import metrics as skm

from mnistkit.evaluation.metrics import confusion_matrix, per_class_report

REPO = Path(__file__).resolve().parents[1]


def _random_labels(
    seed: int, n: int, c: int, never_predicted: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y_true = rng.integers(0, c, size=n)
    # Mostly right, some noise, so scores are neither 0 nor 1.
    y_pred = np.where(rng.random(n) < 0.7, y_true, rng.integers(0, c, size=n))
    if never_predicted is not None:
        y_pred = np.where(y_pred == never_predicted, (never_predicted + 1) % c, y_pred)
    return y_true, y_pred


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_sklearn_with_a_class_never_predicted(seed: int) -> None:
    c = 6
    y_true, y_pred = _random_labels(seed, 500, c, never_predicted=3)
    assert 3 in y_true and 3 not in y_pred
    cm = confusion_matrix(y_true, y_pred, c)
    assert cm.dtype == np.int64 and cm.shape == (c, c)
    np.testing.assert_array_equal(cm, skm.confusion_matrix(y_true, y_pred, labels=range(c)))

    names = [f"c{i}" for i in range(c)]
    rep = per_class_report(cm, names)
    p, r, f, s = skm.precision_recall_fscore_support(y_true, y_pred, labels=range(c), zero_division=0)
    for i, row in enumerate(rep["classes"]):
        assert row["name"] == names[i]
        assert row["precision"] == pytest.approx(p[i])
        assert row["recall"] == pytest.approx(r[i])
        assert row["f1"] == pytest.approx(f[i])
        assert row["support"] == s[i]
    assert rep["classes"][3]["precision"] == 0.0 and rep["classes"][3]["f1"] == 0.0
    mp, mr, mf, _ = skm.precision_recall_fscore_support(
        y_true, y_pred, labels=range(c), average="macro", zero_division=0
    )
    assert rep["macro"] == pytest.approx({"precision": mp, "recall": mr, "f1": mf})
    assert rep["accuracy"] == pytest.approx(skm.accuracy_score(y_true, y_pred))


def test_class_absent_from_both_true_and_pred() -> None:
    y_true = np.array([0, 0, 1, 1, 2])
    y_pred = np.array([0, 1, 1, 1, 2])
    cm = confusion_matrix(y_true, y_pred, 4)
    rep = per_class_report(cm, ["a", "b", "c", "d"])
    d = rep["classes"][3]
    assert d == {"name": "d", "precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0}
    p, r, f, _ = skm.precision_recall_fscore_support(
        y_true, y_pred, labels=range(4), average="macro", zero_division=0
    )
    assert rep["macro"] == pytest.approx({"precision": p, "recall": r, "f1": f})


def test_report_is_json_serialisable_plain_types() -> None:
    y_true, y_pred = _random_labels(5, 100, 3)
    rep = per_class_report(confusion_matrix(y_true, y_pred, 3), ["x", "y", "z"])
    assert json.loads(json.dumps(rep)) == rep
    assert type(rep["accuracy"]) is float
    assert all(type(v) is float for v in rep["macro"].values())
    for row in rep["classes"]:
        assert type(row["support"]) is int and type(row["precision"]) is float


def test_empty_inputs() -> None:
    cm = confusion_matrix(np.array([], dtype=int), np.array([], dtype=int), 3)
    assert cm.shape == (3, 3) and cm.sum() == 0
    rep = per_class_report(cm, ["a", "b", "c"])
    assert rep["accuracy"] == 0.0 and rep["macro"]["f1"] == 0.0


def test_accepts_torch_like_int_inputs_and_2d_shapes() -> None:
    cm = confusion_matrix(np.array([[0], [1]], dtype=np.int32), np.array([0, 0], np.uint8), 2)
    np.testing.assert_array_equal(cm, [[1, 0], [1, 0]])


@pytest.mark.parametrize(
    ("y_true", "y_pred", "match"),
    [
        ([0, 1], [0], "2 labels"),
        ([0, 3], [0, 1], "y_true holds labels outside 0..2"),
        ([0, 1], [-1, 1], "y_pred holds labels outside"),
    ],
)
def test_bad_inputs(y_true: list[int], y_pred: list[int], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        confusion_matrix(np.array(y_true), np.array(y_pred), 3)


def test_report_checks_class_names() -> None:
    with pytest.raises(ValueError, match="2 class names"):
        per_class_report(np.eye(3, dtype=np.int64), ["a", "b"])


def test_module_does_not_import_torch_or_matplotlib() -> None:
    code = (
        "import sys, mnistkit.evaluation.metrics; "
        "print(any(m in sys.modules for m in ('torch', 'matplotlib', 'sklearn')))"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
