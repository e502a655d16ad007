"""Which trials count, read from a study: what the workers, ``sweep status`` and the report share.

Torch-free and light (Optuna only), unlike :mod:`mnistkit.sweeps.worker`, whose objective trains:
the report and the sweep's summaries import this, never the worker.
"""

from __future__ import annotations

import warnings

import optuna
from optuna.trial import FrozenTrial, TrialState

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)


def quiet_optuna() -> None:
    """Optuna logs every trial (with a traceback for failures) and warns about experimental
    features; mnistkit shows trials in its own table and records failure reasons instead."""
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    warnings.filterwarnings("ignore", module="optuna")


def retried_numbers(trials: list[FrozenTrial]) -> set[int]:
    return {n for t in trials for n in t.system_attrs.get("retry_history", [])}


def counted(trials: list[FrozenTrial]) -> list[FrozenTrial]:
    """The finished trials the budget counts: a FAIL that was retried is counted by its retry."""
    retried = retried_numbers(trials)
    return [
        t for t in trials if t.state in FINISHED and not (t.state == TrialState.FAIL and t.number in retried)
    ]
