"""The recipe's ``expect:`` block: conditions a finished run must meet (a recipe as a regression test).

Torch-free (the recipe layer). ``expect: {test_acc: ">= 0.97", train_seconds: "<= 60"}`` is
checked three times over: :func:`check_expectations` at validation (names, forms, units, with
``file:line:col``), :func:`evaluate` after a finished run (each condition against what the run
recorded), and :func:`outcome_line` to show the result. A missed expectation makes ``mnistkit
run`` and ``mnistkit check`` exit with :data:`EXIT_MISSED`.

What a name means (:data:`NAMES`): a metrics.csv column (``test_acc``) is its value at the last
epoch; ``best_<column>`` is its best over all epochs (highest accuracy, lowest loss); a few come
from status.json (``best_epoch``, ``epochs_done``, ``train_seconds``) and ``epoch_seconds`` is
the mean time per epoch. Accuracies are fractions, as in metrics.csv and
``train.target_accuracy`` (``>= 0.97``), or percentages written with ``%`` (``>= 97%``).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from mnistkit.errors import Problem, set_hint
from mnistkit.recipe.metrics import higher_is_better
from mnistkit.registry.core import did_you_mean

#: Exit code of ``run`` and ``check`` when a finished run missed an expectation (docs/cli.md).
EXIT_MISSED = 4

#: metrics.csv columns an expectation may name (their value at the last epoch).
FINAL = ("train_loss", "train_acc", "val_loss", "val_acc", "test_loss", "test_acc", "lr", "samples_per_s")
#: ``best_<column>``: the best value over all epochs (highest accuracy, lowest loss).
BEST = tuple(f"best_{c}" for c in FINAL if c.endswith(("_acc", "_loss")))
#: From the run's status (status.json), and the mean epoch time.
STATUS = ("best_epoch", "epochs_done", "train_seconds", "epoch_seconds")
NAMES = FINAL + BEST + STATUS

#: What each name means, for docs and messages.
MEANING = {
    **{c: f"{c} at the last epoch (metrics.csv)" for c in FINAL},
    **{f"best_{c}": f"best {c} over all epochs" for c in FINAL if c.endswith(("_acc", "_loss"))},
    "best_epoch": "the epoch of best.pt (train.best_metric; status.json)",
    "epochs_done": "epochs trained (status.json)",
    "train_seconds": "training time in seconds, evaluation included (status.json)",
    "epoch_seconds": "mean seconds per epoch (metrics.csv)",
}

#: Words from elsewhere that mean one of the names (did-you-mean by meaning).
_MEANT = {
    "acc": "test_acc",
    "accuracy": "test_acc",
    "test_accuracy": "test_acc",
    "val_accuracy": "val_acc",
    "loss": "test_loss",
    "duration": "train_seconds",
    "time": "train_seconds",
    "seconds": "train_seconds",
    "training_time": "train_seconds",
    "epoch_time": "epoch_seconds",
    "epochs": "epochs_done",
}

FORMS = '">= X", "<= X", "> X", "< X", "== X" or "between X and Y"'
_NUM = r"[-+]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?"
_UNIT = r"\s*(%|s)?"
_COMPARE = re.compile(rf"^\s*(>=|<=|==|>|<)\s*({_NUM}){_UNIT}\s*$")
_BETWEEN = re.compile(rf"^\s*between\s+({_NUM}){_UNIT}\s+and\s+({_NUM}){_UNIT}\s*$", re.IGNORECASE)


@dataclass(frozen=True)
class Condition:
    """``op`` one of >=, <=, >, <, ==, between; bounds in the unit the run records (fractions)."""

    op: str
    low: float
    high: float | None = None  # between only

    def holds(self, value: float) -> bool:
        lo = self.low
        if self.op == "between":
            return lo <= value <= (self.high if self.high is not None else lo)
        return {
            ">=": value >= lo,
            "<=": value <= lo,
            ">": value > lo,
            "<": value < lo,
            "==": value == lo,
        }[self.op]

    def describe(self, name: str) -> str:
        """``>= 97%`` for an accuracy, ``<= 60 s`` for a time, ``between 2 and 4`` for an epoch."""
        if self.op == "between":
            return f"between {_bound(name, self.low)} and {_bound(name, self.high or 0.0)}"
        return f"{self.op} {_bound(name, self.low)}"


class ConditionError(ValueError):
    """A condition that cannot be read: the message says what is wrong, the hint what is allowed."""

    def __init__(self, message: str, hint: str, fix: str | None = None) -> None:
        super().__init__(message)
        self.hint = hint
        self.fix = fix  # the condition the user most likely meant, when there is one


def parse_condition(name: str, text: Any) -> Condition:
    """``">= 0.97"`` -> Condition(">=", 0.97); ``">= 97%"`` too (accuracies only)."""
    example = _example(name)
    if isinstance(text, bool) or not isinstance(text, str | int | float):
        raise ConditionError(f"{text!r} is not a condition", f"write one of {FORMS}, e.g. {example}")
    if not isinstance(text, str):
        raise ConditionError(
            f"{text!r} has no comparison: at least, at most or exactly?",
            f"write one of {FORMS}, quoted, e.g. {example}",
        )
    m = _COMPARE.match(text)
    b = _BETWEEN.match(text)
    if m:
        op, bounds = m.group(1), [(m.group(2), m.group(3))]
    elif b:
        op, bounds = "between", [(b.group(1), b.group(2)), (b.group(3), b.group(4))]
    else:
        fix = _respelled(text)
        if fix is not None and (_COMPARE.match(fix) or _BETWEEN.match(fix)):
            raise ConditionError(f"cannot read condition {text!r}", f"did you mean {fix!r}? ({FORMS})", fix)
        raise ConditionError(f"cannot read condition {text!r}", f"write one of {FORMS}, e.g. {example}")
    try:
        values = [_value(name, num, unit, text) for num, unit in bounds]
    except ConditionError as exc:
        if exc.fix is not None and op != "between":
            exc.fix = f"{op} {exc.fix}"
        elif op == "between":
            exc.fix = None
        raise
    if op == "between" and values[0] > values[1]:
        fix = f"between {bounds[1][0]}{bounds[1][1] or ''} and {bounds[0][0]}{bounds[0][1] or ''}"
        raise ConditionError(f"{text!r}: the lower bound comes first", f"write {fix}", fix)
    return Condition(op, values[0], values[1] if op == "between" else None)


#: Operators from other notations, and the one each means here.
_RESPELL = (("=>", ">="), ("=<", "<="), ("≥", ">="), ("≤", "<="), ("==", "=="), ("=", "=="))


def _respelled(text: str) -> str | None:
    """``=> 0.2`` -> ``>= 0.2``: the condition with a leading operator from another notation."""
    head = text.strip()
    for other, ours in _RESPELL:
        if head.startswith(other):
            return f"{ours} {head[len(other) :].strip()}"
    return None


def _value(name: str, num: str, unit: str | None, text: str) -> float:
    value = float(num)
    is_acc = name.endswith("_acc")
    if unit == "%" and not is_acc:
        raise ConditionError(
            f"{text!r}: % applies to accuracies only", f"write the number alone, e.g. {_example(name)}"
        )
    if unit == "s" and not name.endswith("_seconds"):
        raise ConditionError(
            f"{text!r}: s applies to times only", f"write the number alone, e.g. {_example(name)}"
        )
    if unit == "%":
        value /= 100
    if is_acc and not 0 <= value <= 1:
        percent = unit is None and 1 < value <= 100
        raise ConditionError(
            f"{text!r}: an accuracy is a fraction from 0 to 1 (as in metrics.csv)",
            f"write {num} as a fraction ({value / 100:g}) or with % ({num}%)"
            if percent
            else "e.g. >= 0.97 or >= 97%",
            f"{value / 100:g}" if percent else None,
        )
    return value


def example(name: str) -> str:
    """A condition that reads well for ``name`` (for messages)."""
    if name.endswith("_acc"):
        return ">= 0.97"
    if name.endswith("_seconds"):
        return "<= 60"
    if name in ("best_epoch", "epochs_done"):
        return "<= 8"
    return "<= 0.1" if name.endswith("_loss") else ">= 0.001"


def _example(name: str) -> str:
    more = ' (or ">= 97%")' if name.endswith("_acc") else ""
    return f'"{example(name)}"{more}'


def _bound(name: str, value: float) -> str:
    if name.endswith("_acc"):
        return f"{value * 100:g}%"
    if name.endswith("_seconds"):
        return f"{value:g} s"
    return f"{value:g}"


def format_value(name: str, value: float | None) -> str:
    """A recorded value as the run shows it: accuracies in percent, times in seconds."""
    if value is None:
        return "no value"
    if name.endswith("_acc"):
        return f"{value:.2%}"
    if name.endswith("_loss"):
        return f"{value:.4f}"
    if name.endswith("_seconds"):
        return f"{value:.1f} s"
    if name in ("best_epoch", "epochs_done"):
        return str(int(value))
    if name == "samples_per_s":
        return f"{value:,.0f}"
    return f"{value:.3g}"


# ----------------------------------------------------------------------------- validation
def check_expectations(recipe: Any, where: Callable[..., str]) -> list[Problem]:
    """Every problem of ``recipe.expect``: unknown names, unreadable conditions, val_* without a
    validation split. ``where(*loc, key=...)`` gives a position."""
    problems: list[Problem] = []
    has_val = recipe.data.val_split > 0
    for name, text in recipe.expect.items():
        field = f"expect.{name}"
        if name not in NAMES:
            meant = _MEANT.get(name.lower())
            close = repr(meant) if meant else did_you_mean(name, list(NAMES))
            problems.append(
                Problem(
                    where("expect", name, key=True),
                    field,
                    f"unknown metric {name!r}: not something a run records",
                    (f"did you mean {close}? " if close else "")
                    + f"allowed: {', '.join(NAMES)} (docs/recipe.md, expect)",
                )
            )
            continue
        try:
            parse_condition(name, text)
        except ConditionError as exc:
            hint = exc.hint + f"; on the command line: --set '{field}={exc.fix or example(name)}'"
            problems.append(Problem(where("expect", name), field, str(exc), hint))
            continue
        if "val_" in name and not has_val:
            problems.append(
                Problem(
                    where("expect", name, key=True),
                    field,
                    f"{name} needs a validation split (the run records no val_* columns)",
                    set_hint("data.val_split", "0.1") + ", or expect a test_* metric",
                )
            )
    return problems


# ----------------------------------------------------------------------------- after a run
@dataclass(frozen=True)
class Outcome:
    """One expectation checked: what was expected, what the run recorded, whether it holds."""

    name: str
    condition: str  # as the recipe wrote it
    shown: str  # the condition in the run's units (">= 97%")
    value: float | None
    met: bool

    def record(self) -> dict[str, Any]:
        """status.json's entry."""
        value = self.value
        if value is not None and self.name in ("best_epoch", "epochs_done"):
            value = int(value)  # a count, as status.json's other epoch fields
        return {"name": self.name, "condition": self.condition, "value": value, "met": self.met}


def recorded_value(name: str, rows: list[dict[str, Any]], best_epoch: int | None) -> float | None:
    """What the run recorded for ``name``: ``rows`` are metrics.csv's (one dict per epoch)."""
    if name == "best_epoch":
        return None if best_epoch is None else float(best_epoch)
    if name == "epochs_done":
        return float(len(rows))
    seconds = [float(r["seconds"]) for r in rows if r.get("seconds") is not None]
    if name == "train_seconds":
        return sum(seconds)
    if name == "epoch_seconds":
        return sum(seconds) / len(seconds) if seconds else None
    column = name.removeprefix("best_")
    values = [
        float(r[column]) for r in rows if r.get(column) is not None and not math.isnan(float(r[column]))
    ]
    if not values:
        return None
    if name.startswith("best_"):
        return max(values) if higher_is_better(column) else min(values)
    return float(rows[-1][column]) if rows[-1].get(column) is not None else None


def evaluate(expect: dict[str, Any], rows: list[dict[str, Any]], best_epoch: int | None) -> list[Outcome]:
    """Each expectation of a validated recipe against the run's records (a missing value misses)."""
    out = []
    for name, text in expect.items():
        cond = parse_condition(name, text)
        value = recorded_value(name, rows, best_epoch)
        met = value is not None and cond.holds(value)
        out.append(Outcome(name, " ".join(str(text).split()), cond.describe(name), value, met))
    return out


def outcome_line(o: Outcome, markup: bool = True) -> str:
    """``test_acc >= 97%: met (97.82%)``; ``missed`` in red where markup is wanted."""
    word = "met" if o.met else "missed"
    if markup:
        word = f"[green]{word}[/]" if o.met else f"[bold red]{word}[/]"
    return f"{o.name} {o.shown}: {word} ({format_value(o.name, o.value)})"


def missed(outcomes: list[Outcome]) -> int:
    return sum(not o.met for o in outcomes)


def summary_lines(outcomes: list[Outcome]) -> list[tuple[str, str]]:
    """The run summary's ``expect:`` lines, one per expectation."""
    return [("expect", outcome_line(o)) for o in outcomes]
