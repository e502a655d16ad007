"""Is a difference real? The statistics ``mnistkit compare`` prints under its tables.

Two runs (their ``predictions.npz``, see :mod:`mnistkit.runs.predictions`): the test accuracy
difference B - A with a 95 % paired bootstrap interval over the test samples, and McNemar's
exact test on the discordant pairs. Two groups of seeds (:mod:`mnistkit.runs.group`): the
difference of the members' mean final test accuracy with Welch's t interval over seeds, and
Welch's t-test. A difference is called significant when p < 0.05; the interval says how large
it is. Distributions come from numpy and scipy, none is written by hand here. Torch-free.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mnistkit.runs.directory import RunDir
from mnistkit.runs.predictions import Predictions, load_predictions, test_set_difference

LEVEL = 0.95
ALPHA = 0.05
RESAMPLES = 10_000
SEED = 0


# ------------------------------------------------------------------------------ statistics
def paired_bootstrap_ci(
    correct_a: np.ndarray,
    correct_b: np.ndarray,
    resamples: int = RESAMPLES,
    seed: int = SEED,
    level: float = LEVEL,
) -> tuple[float, float]:
    """Percentile interval of accuracy(B) - accuracy(A) over paired resamples of the samples.

    Each resample draws n samples with replacement and keeps both runs' answers on each. Only
    how many of the drawn samples are "B right, A wrong" and "A right, B wrong" changes the
    difference, and those counts are multinomial with the observed proportions: drawing them
    (``Generator.multinomial``) is the same bootstrap distribution as drawing n indices, in
    O(resamples) time and memory instead of O(resamples x n).
    """
    a, b = np.asarray(correct_a, dtype=bool), np.asarray(correct_b, dtype=bool)
    n = len(a)
    if n == 0:
        return 0.0, 0.0
    only_b, only_a = int(np.sum(b & ~a)), int(np.sum(a & ~b))
    pvals = [only_b / n, only_a / n, (n - only_b - only_a) / n]
    counts = np.random.default_rng(seed).multinomial(n, pvals, size=resamples)
    diffs = (counts[:, 0] - counts[:, 1]) / n
    tail = (1 - level) / 2 * 100
    lo, hi = np.percentile(diffs, [tail, 100 - tail])
    return float(lo), float(hi)


def mcnemar_exact(correct_a: np.ndarray, correct_b: np.ndarray) -> tuple[int, int, float]:
    """McNemar's exact test: (A right & B wrong, A wrong & B right, two-sided p).

    Under "no difference" each discordant sample is equally likely to favour either run, so the
    count favouring B is Binomial(discordant, 1/2) (``scipy.stats.binomtest``).
    """
    from scipy.stats import binomtest

    a, b = np.asarray(correct_a, dtype=bool), np.asarray(correct_b, dtype=bool)
    only_a, only_b = int(np.sum(a & ~b)), int(np.sum(b & ~a))
    if only_a + only_b == 0:
        return 0, 0, 1.0
    return only_a, only_b, float(binomtest(only_b, only_a + only_b, 0.5).pvalue)


@dataclass
class WelchResult:
    diff: float  # mean(B) - mean(A)
    low: float
    high: float
    p: float
    df: float


def welch(acc_a: list[float], acc_b: list[float], level: float = LEVEL) -> WelchResult | None:
    """Welch's t-test and t interval for mean(B) - mean(A) (``scipy.stats.ttest_ind``,
    ``equal_var=False``); None where it is undefined (fewer than 2 per side, or no spread)."""
    from scipy.stats import ttest_ind

    if len(acc_a) < 2 or len(acc_b) < 2 or (np.std(acc_a) == 0 and np.std(acc_b) == 0):
        return None
    res = ttest_ind(acc_b, acc_a, equal_var=False)
    ci = res.confidence_interval(level)
    diff = float(np.mean(acc_b) - np.mean(acc_a))
    return WelchResult(diff, float(ci.low), float(ci.high), float(res.pvalue), float(res.df))


# ------------------------------------------------------------------------------ words
def points(x: float, sign: bool = False) -> str:
    """An accuracy difference (a fraction) in percentage points, 2 decimals."""
    v = x * 100
    if abs(v) < 0.005:
        v = 0.0  # no "-0.00"
    return f"{v:+.2f}" if sign else f"{v:.2f}"


def p_value(p: float) -> str:
    return f"p = {p:.3f}" if p >= 0.001 else f"p = {p:.1e}"


def verdict(diff: float, low: float, high: float, p: float) -> str:
    """'B is better: +0.42 points, 95 % CI [0.15, 0.69], p = 0.002', or 'no significant difference
    (...)'. Significant means p < 0.05; a note where the interval and the test disagree."""
    figures = f"{points(diff, True)} points, 95 % CI [{points(low)}, {points(high)}], {p_value(p)}"
    if p < ALPHA and diff != 0:
        said = f"{'B' if diff > 0 else 'A'} is better: {figures}"
    else:
        said = f"no significant difference ({figures})"
    if (p < ALPHA) == (low <= 0 <= high):
        said += "; the interval and the test disagree: a borderline case"
    return said


# ------------------------------------------------------------------------------ compare's section
def runs_section(a: RunDir, b: RunDir, command: str) -> list[str]:
    """The lines for two runs (their final models' predictions.npz)."""
    head = "is the difference real? (test set, final models, B - A)"
    missing = [(label, r) for label, r in (("A", a), ("B", b)) if not r.predictions_path.is_file()]
    if missing:
        return [head] + [
            f"  {label} has no {RunDir.PREDICTIONS} (a run made before mnistkit saved it, or not "
            f"finished): write it with `{command} eval {r.path} --checkpoint last`"
            for label, r in missing
        ]
    pa, pb = load_predictions(a.predictions_path), load_predictions(b.predictions_path)
    lines = [head, f"  A: {_described(pa)}", f"  B: {_described(pb)}"]
    why = test_set_difference(pa.test_set, pb.test_set)
    if why is not None:
        return lines + [f"  not compared: the runs predicted different test sets: {why}"]
    ca, cb = pa.correct, pb.correct
    diff = pb.accuracy - pa.accuracy
    low, high = paired_bootstrap_ci(ca, cb)
    only_a, only_b, p = mcnemar_exact(ca, cb)
    n = len(ca)
    return lines + [
        f"  difference: {points(diff, True)} points, 95 % CI [{points(low)}, {points(high)}]"
        f" (paired bootstrap over the {n:,} test samples, {RESAMPLES:,} resamples, seed {SEED})",
        f"  McNemar's exact test: A right & B wrong {only_a:,}, A wrong & B right {only_b:,}, {p_value(p)}",
        f"  verdict: {verdict(diff, low, high, p)}",
    ]


def _described(pred: Predictions) -> str:
    n, right = len(pred.labels), int(pred.correct.sum())
    m = pred.model
    epoch, step = m.get("epoch"), m.get("step")
    when = f"after epoch {epoch}" if not step else f"epoch {epoch}, step {step}"
    return f"{pred.accuracy:.2%} ({right:,} of {n:,} right), {m.get('checkpoint', '?')} {when}"


def final_test_accuracy(run: RunDir) -> float | None:
    """The last row's test_acc in metrics.csv (the final model's), None without one."""
    rows = run.read_metrics()
    value = rows[-1].get("test_acc") if rows else None
    return None if value is None else float(value)


def finished_accuracies(
    runs: list[RunDir], label: str
) -> tuple[list[float], list[tuple[RunDir, str, float | None]], list[str]]:
    """The final test accuracies that count (finished runs with one), every run's (run, status,
    value), and a note for each run left out."""
    from mnistkit.runs.listing import effective_status

    accs: list[float] = []
    shown: list[tuple[RunDir, str, float | None]] = []
    notes: list[str] = []
    for r in runs:
        status, value = effective_status(r.read_status()), final_test_accuracy(r)
        if status == "finished" and value is not None:
            accs.append(value)
        else:
            notes.append(f"{label}: {r.path} left out: {status}, not finished")
        shown.append((r, status, value))
    return accs, shown, notes


def section(a: Path, b: Path, command: str) -> list[str]:
    """compare's "is the difference real?" lines for two runs or groups of seeds at ``a``, ``b``."""
    from mnistkit.runs.group import is_group, open_group

    if not is_group(a) and not is_group(b):
        return runs_section(RunDir.open(a), RunDir.open(b), command)
    sides = [open_group(p) if is_group(p) else None for p in (a, b)]
    accs: list[list[float]] = []
    notes: list[str] = []
    for label, path, group in zip(("A", "B"), (a, b), sides, strict=True):
        runs = group.members if group is not None else [RunDir.open(path)]
        acc, _, left_out = finished_accuracies(runs, label)
        accs.append(acc)
        notes += left_out
    ga, gb = sides
    if ga is not None and gb is not None:
        lines = groups_section((ga.name, gb.name), (accs[0], accs[1]))
    else:
        lines = run_vs_group_section("A" if ga is None else "B")
    return [*lines[:1], *(f"  {n}" for n in notes), *lines[1:]]


def groups_section(names: tuple[str, str], accs: tuple[list[float], list[float]]) -> list[str]:
    """The lines for two groups of seeds: the members' final test accuracies."""
    head = "is the difference real? (test set, mean over seeds, B - A)"
    lines = [head]
    for label, name, acc in zip(("A", "B"), names, accs, strict=True):
        sd = f", sd {points(float(np.std(acc, ddof=1)))} points" if len(acc) > 1 else ""
        lines.append(f"  {label}: {name}: {len(acc)} runs, mean final test acc {np.mean(acc):.2%}{sd}")
    res = welch(*accs)
    if res is None:
        return lines + [
            "  not tested: Welch's t-test needs 2 or more finished runs on each side, and "
            "accuracies that vary"
        ]
    df = f"{res.df:.1f}" if not math.isnan(res.df) else "?"
    return lines + [
        f"  difference of the means: {points(res.diff, True)} points, 95 % CI "
        f"[{points(res.low)}, {points(res.high)}] (Welch's t interval over seeds, {df} degrees "
        "of freedom)",
        f"  Welch's t-test: {p_value(res.p)}",
        f"  verdict: {verdict(res.diff, res.low, res.high, res.p)}",
        "  (no per-sample test: the predictions of different seeds are not paired samples)",
    ]


def run_vs_group_section(run_label: str) -> list[str]:
    group_label = "B" if run_label == "A" else "A"
    return [
        "is the difference real?",
        f"  not tested: {run_label} is one run, {group_label} a group of seeds; one run says "
        "nothing about how much its accuracy varies from seed to seed. Compare two groups "
        "(train both recipes with several seeds)",
    ]
