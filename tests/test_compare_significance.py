"""`mnistkit compare`: is a difference real? predictions.npz, the paired bootstrap, McNemar, Welch
(issue 22).

The statistics are checked against independent computations written here (exact binomial
tails by enumeration, a brute-force bootstrap loop with Python's own random module, Welch's
formula spelled out); the saved predictions against `mnistkit predict` of PNG files and
metrics.csv. The runs are quickstart-sized (8x8 digits, 3 epochs) and trained once per module.
"""

from __future__ import annotations

import json
import math
import random
import re
import shutil
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from mnistkit.cli.app import app
from mnistkit.runs.predictions import load_predictions
from mnistkit.runs.significance import RESAMPLES, mcnemar_exact, paired_bootstrap_ci, verdict

RECIPE = """name: {name}
seed: {seed}
data: {{dataset: digits, batch_size: 32{data}}}
model: {{hidden: [32], activation: relu}}
optimizer: {{name: adam, lr: {lr}}}
epochs: 3
train: {{progress: none, threads: 1, plots: false}}
"""


def invoke(*args: Any, columns: int = 200) -> Any:
    return CliRunner().invoke(app, [str(a) for a in args], env={"COLUMNS": str(columns)})


def train(folder: Path, name: str, seed: int = 0, lr: float = 0.003, data: str = "") -> Path:
    recipe = folder / f"{name}.yaml"
    recipe.write_text(RECIPE.format(name=name, seed=seed, lr=lr, data=data), encoding="utf-8")
    out = folder / name
    res = invoke("run", recipe, "--out", out)
    assert res.exit_code == 0, res.output
    return out


def make_group(folder: Path, name: str, members: list[Path]) -> Path:
    """A group of seeds in the agreed format: group.json beside member run folders."""
    group = folder / name
    group.mkdir()
    for i, run in enumerate(members):
        shutil.copytree(run, group / f"seed-{i}")
    meta = {
        "kind": "seeds",
        "name": name,
        "recipe": "r.yaml",
        "members": [f"seed-{i}" for i in range(len(members))],
    }
    (group / "group.json").write_text(json.dumps(meta), encoding="utf-8")
    return group


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("cmp")
    out = {
        "a": train(root, "a"),
        # another lr, and no normalization: other model inputs, yet the same test set
        "b": train(root, "b", lr=0.0003, data=", normalize: none"),
        "a1": train(root, "a1", seed=1),
        "b1": train(root, "b1", seed=1, lr=0.0003),
        "short": train(root, "short", data=", test_limit: 200"),
    }
    out["ga"] = make_group(root, "ga", [out["a"], out["a1"]])
    out["gb"] = make_group(root, "gb", [out["b"], out["b1"]])
    return out


# ------------------------------------------------------------------------------ predictions.npz
def test_predictions_npz_holds_the_final_models_test_predictions(
    runs: dict[str, Path], tmp_path: Path
) -> None:
    from mnistkit.data.vision import load_sklearn_digits

    run = runs["a"]
    pred = load_predictions(run / "predictions.npz")
    test = load_sklearn_digits().test
    assert np.array_equal(pred.labels, test.y.numpy())  # the dataset's test labels, in order
    assert pred.probabilities.dtype == np.float32 and pred.probabilities.shape == (359, 10)
    assert np.allclose(pred.probabilities.sum(1), 1, atol=1e-5)
    assert np.array_equal(pred.predicted, pred.probabilities.argmax(1))
    # the final model: its accuracy is the last row of metrics.csv, written by the training loop
    last = (run / "metrics.csv").read_text().splitlines()[-1].split(",")
    header = (run / "metrics.csv").read_text().splitlines()[0].split(",")
    assert pred.accuracy == float(last[header.index("test_acc")])
    assert pred.model["checkpoint"] == "last.pt" and pred.model["epoch"] == 3

    # `mnistkit predict` of the test images as PNG files (another input path) agrees
    files = []
    for i in range(25):
        path = tmp_path / f"t{i:02d}.png"
        Image.fromarray(test.x[i, 0].numpy()).save(path)
        files.append(path)
    res = invoke("predict", run, *files, "--checkpoint", "last", "--json")
    assert res.exit_code == 0, res.output
    predicted = [p["index"] for p in json.loads(res.output)["predictions"]]
    assert predicted == pred.predicted[:25].tolist()


def test_a_run_without_predictions_is_told_which_command_writes_them(
    runs: dict[str, Path], tmp_path: Path
) -> None:
    old = tmp_path / "old-run"
    shutil.copytree(runs["a"], old)
    (old / "predictions.npz").unlink()  # as a run made before predictions were saved
    res = invoke("compare", old, runs["b"])
    assert res.exit_code == 0, res.output
    flat = " ".join(res.output.split())
    assert "A has no predictions.npz" in flat and f"eval {old} --checkpoint last" in flat
    assert "McNemar" not in flat

    res = invoke("eval", old, "--checkpoint", "last")
    assert res.exit_code == 0, res.output
    again, original = (
        load_predictions(old / "predictions.npz"),
        load_predictions(runs["a"] / "predictions.npz"),
    )
    assert np.array_equal(again.predicted, original.predicted)
    assert np.array_equal(again.probabilities, original.probabilities)
    assert again.test_set == original.test_set
    # eval's own confusion matrix (eval-last.json) is the one of the predictions
    cm = np.zeros((10, 10), dtype=int)
    np.add.at(cm, (again.labels, again.predicted), 1)
    assert cm.tolist() == json.loads((old / "eval-last.json").read_text())["confusion_matrix"]
    assert "McNemar" in invoke("compare", old, runs["b"]).output


def test_runs_on_different_test_sets_are_not_tested(runs: dict[str, Path]) -> None:
    res = invoke("compare", runs["a"], runs["short"])
    assert res.exit_code == 0, res.output
    flat = " ".join(res.output.split())
    assert "not compared: the runs predicted different test sets: different sizes (359 vs 200 samples" in flat
    assert "McNemar" not in flat and "verdict" not in flat


# ------------------------------------------------------------------------------ two runs
def exact_mcnemar_p(only_a: int, only_b: int) -> float:
    """Two-sided exact binomial p by enumeration: twice the smaller tail of Binomial(n, 1/2)."""
    n = only_a + only_b
    if n == 0:
        return 1.0
    tail = sum(Fraction(math.comb(n, k), 2**n) for k in range(min(only_a, only_b) + 1))
    return float(min(Fraction(1), 2 * tail))


def test_compare_two_runs_reports_difference_ci_and_mcnemar(runs: dict[str, Path]) -> None:
    a_dir, b_dir = runs["a"], runs["b"]
    assert (
        json.loads((a_dir / "data.json").read_text())["mean"]
        != json.loads((b_dir / "data.json").read_text())["mean"]
    )
    res = invoke("compare", a_dir, b_dir)
    assert res.exit_code == 0, res.output
    flat = " ".join(res.output.split())
    a, b = load_predictions(a_dir / "predictions.npz"), load_predictions(b_dir / "predictions.npz")
    only_a = int(np.sum((a.labels == a.predicted) & (b.labels != b.predicted)))
    only_b = int(np.sum((a.labels != a.predicted) & (b.labels == b.predicted)))
    diff = (np.mean(b.labels == b.predicted) - np.mean(a.labels == a.predicted)) * 100
    m = re.search(r"difference: ([+-]\d+\.\d\d) points, 95 % CI \[(-?\d+\.\d\d), (-?\d+\.\d\d)\]", flat)
    assert m, flat
    assert float(m[1]) == pytest.approx(diff, abs=0.006)
    assert float(m[2]) <= float(m[1]) <= float(m[3])
    assert f"{RESAMPLES:,} resamples" in flat and "359 test samples" in flat
    m = re.search(r"A right & B wrong (\d+), A wrong & B right (\d+), p = ([\d.e+-]+)", flat)
    assert m, flat
    assert (int(m[1]), int(m[2])) == (only_a, only_b)
    p = exact_mcnemar_p(only_a, only_b)
    assert float(m[3]) == pytest.approx(p, rel=0.01, abs=0.0006)
    if p < 0.05:
        assert f"verdict: {'B' if diff > 0 else 'A'} is better" in flat
    else:
        assert "verdict: no significant difference" in flat


@pytest.mark.parametrize(
    "only_a,only_b", [(0, 0), (1, 6), (6, 1), (0, 5), (10, 10), (2, 12), (30, 45), (3, 4)]
)
def test_mcnemar_p_is_the_exact_binomial_tail(only_a: int, only_b: int) -> None:
    # both right 50, both wrong 7: concordant pairs must not change anything
    a = np.array([1] * only_a + [0] * only_b + [1] * 50 + [0] * 7, dtype=bool)
    b = np.array([0] * only_a + [1] * only_b + [1] * 50 + [0] * 7, dtype=bool)
    got_a, got_b, p = mcnemar_exact(a, b)
    assert (got_a, got_b) == (only_a, only_b)
    assert p == pytest.approx(exact_mcnemar_p(only_a, only_b), rel=1e-9)


def brute_force_bootstrap(a: list[bool], b: list[bool], resamples: int, seed: int) -> tuple[float, float]:
    """The textbook paired bootstrap: draw n indices with replacement, one resample at a time."""
    rng = random.Random(seed)
    n = len(a)
    diffs = []
    for _ in range(resamples):
        idx = [rng.randrange(n) for _ in range(n)]
        diffs.append((sum(b[i] for i in idx) - sum(a[i] for i in idx)) / n)
    diffs.sort()
    return diffs[int(0.025 * resamples)], diffs[int(0.975 * resamples) - 1]


def test_bootstrap_ci_agrees_with_a_brute_force_bootstrap() -> None:
    # 60 paired samples: 40 both right, 10 both wrong, 7 only B right, 3 only A right. Strongly
    # paired: an unpaired bootstrap would be about 1.5x wider.
    a = [True] * 40 + [False] * 10 + [False] * 7 + [True] * 3
    b = [True] * 40 + [False] * 10 + [True] * 7 + [False] * 3
    low, high = paired_bootstrap_ci(np.array(a), np.array(b))
    ref_low, ref_high = brute_force_bootstrap(a, b, 10_000, seed=1)
    step = 1 / 60  # the bootstrap differences are multiples of 1/n: agree to within one
    assert abs(low - ref_low) <= step + 1e-9 and abs(high - ref_high) <= step + 1e-9, (
        low,
        high,
        ref_low,
        ref_high,
    )
    assert paired_bootstrap_ci(np.array(a), np.array(b)) == (low, high)  # seeded: the same every time


def test_bootstrap_ci_is_the_normal_interval_for_many_samples() -> None:
    # 10,000 samples: 300 only B right, 200 only A right. The interval is then ~ the normal one,
    # diff +- 1.96 sd(d)/sqrt(n) with d in {-1, 0, 1} per sample.
    n, only_b, only_a = 10_000, 300, 200
    a = np.zeros(n, dtype=bool)
    b = np.zeros(n, dtype=bool)
    b[:only_b] = True
    a[only_b : only_b + only_a] = True
    a[1000:9000] = b[1000:9000] = True
    d = b.astype(int) - a.astype(int)
    half = 1.959964 * d.std() / math.sqrt(n)
    low, high = paired_bootstrap_ci(a, b)
    assert low == pytest.approx(d.mean() - half, abs=0.1 * half)
    assert high == pytest.approx(d.mean() + half, abs=0.1 * half)


def test_verdict_in_words() -> None:
    assert (
        verdict(0.0042, 0.0015, 0.0069, 0.002) == "B is better: +0.42 points, 95 % CI [0.15, 0.69], p = 0.002"
    )
    assert verdict(-0.0139, -0.0306, -0.0028, 0.0313) == (
        "A is better: -1.39 points, 95 % CI [-3.06, -0.28], p = 0.031"
    )
    assert verdict(0.001, -0.002, 0.004, 0.41) == (
        "no significant difference (+0.10 points, 95 % CI [-0.20, 0.40], p = 0.410)"
    )


# ------------------------------------------------------------------------------ groups
def welch_by_hand(x: list[float], y: list[float]) -> tuple[float, float, float, float]:
    """mean(y) - mean(x), Welch's 95 % interval and two-sided p, from the formulas."""
    from scipy.stats import t

    vx, vy = np.var(x, ddof=1) / len(x), np.var(y, ddof=1) / len(y)
    df = (vx + vy) ** 2 / (vx**2 / (len(x) - 1) + vy**2 / (len(y) - 1))
    diff, se = float(np.mean(y) - np.mean(x)), math.sqrt(vx + vy)
    q = t.ppf(0.975, df)
    return diff, diff - q * se, diff + q * se, 2 * t.sf(abs(diff / se), df)


def final_acc(run: Path) -> float:
    lines = (run / "metrics.csv").read_text().splitlines()
    return float(lines[-1].split(",")[lines[0].split(",").index("test_acc")])


def test_compare_two_groups_reports_welchs_interval_over_seeds(runs: dict[str, Path]) -> None:
    res = invoke("compare", runs["ga"], runs["gb"])
    assert res.exit_code == 0, res.output
    flat = " ".join(res.output.split())
    acc_a = [final_acc(runs["a"]), final_acc(runs["a1"])]
    acc_b = [final_acc(runs["b"]), final_acc(runs["b1"])]
    diff, low, high, p = welch_by_hand(acc_a, acc_b)
    m = re.search(
        r"difference of the means: ([+-]\d+\.\d\d) points, 95 % CI \[(-?\d+\.\d\d), (-?\d+\.\d\d)\] "
        r"\(Welch's t interval over seeds",
        flat,
    )
    assert m, flat
    for shown, expected in zip(m.groups(), (diff, low, high), strict=True):
        assert float(shown) == pytest.approx(expected * 100, abs=0.006)
    m = re.search(r"Welch's t-test: p = ([\d.e+-]+)", flat)
    assert m and float(m[1]) == pytest.approx(p, rel=0.01, abs=0.0006), flat
    assert f"{acc_a[0]:.2%}" in flat and f"{acc_b[1]:.2%}" in flat  # every member's accuracy
    assert "no per-sample test" in flat and "McNemar" not in flat

    one = invoke("compare", runs["a"], runs["gb"])
    assert one.exit_code == 0, one.output
    assert "not tested: A is one run, B a group of seeds" in " ".join(one.output.split())


def test_a_group_with_a_missing_member_is_named(runs: dict[str, Path], tmp_path: Path) -> None:
    group = tmp_path / "g"
    group.mkdir()
    (group / "group.json").write_text(json.dumps({"kind": "seeds", "members": ["seed-0"]}))
    res = invoke("compare", group, runs["gb"])
    assert res.exit_code == 1
    assert f"member {group / 'seed-0'}: no such folder" in " ".join(res.output.split())


@pytest.mark.parametrize("pair", [("a", "b"), ("ga", "gb"), ("a", "short")])
def test_compare_fits_80_columns(runs: dict[str, Path], pair: tuple[str, str]) -> None:
    res = invoke("compare", runs[pair[0]], runs[pair[1]], columns=80)
    assert res.exit_code == 0, res.output
    assert "…" not in res.output
    # A lone word longer than the line (a tmp path) cannot be wrapped; every other line fits.
    lines = [
        line
        for line in res.output.splitlines()
        if not line.startswith(("A: ", "B: ")) and " " in line.strip()
    ]
    assert max(len(line) for line in lines) <= 80, res.output


def test_a_damaged_predictions_file_is_named_with_the_fix(runs: dict[str, Path], tmp_path: Path) -> None:
    damaged = tmp_path / "damaged"
    shutil.copytree(runs["a"], damaged)
    (damaged / "predictions.npz").write_bytes(b"not a zip")
    res = invoke("compare", damaged, runs["b"])
    assert res.exit_code == 1
    flat = " ".join(res.output.split())
    assert f"{damaged / 'predictions.npz'}: damaged" in flat and f"eval {damaged} --checkpoint last" in flat
    assert "Traceback" not in res.output
