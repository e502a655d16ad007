"""One trial = one ordinary run: parameters from Optuna → the trial's recipe → the runner.

There is no training loop here: the trial runs through :func:`mnistkit.session.run` exactly like
``mnistkit run``, into ``trials/NNNN/`` of the sweep folder, with a per-epoch hook that reports
the metric to Optuna and stops the run when the pruner says so. A retried trial (its worker died,
or was stopped with Ctrl-C) continues in the same run directory from its last checkpoint, with
``--resume``'s machinery.
"""

from __future__ import annotations

import json
import math
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import optuna

from mnistkit.errors import RecipeError, RunError
from mnistkit.recipe.metrics import format_metric
from mnistkit.sweeps.spec import ParamSpec, Sweep

TRIALS_DIR = "trials"


class TrialFailed(Exception):
    """A trial that failed at run time; its reason is in the trial's ``reason`` attribute."""


class SweepInterrupted(Exception):
    """Ctrl-C: the trial stopped at a safe point (checkpoint written); the worker stops."""


def trial_dir_name(number: int) -> str:
    return f"{TRIALS_DIR}/{number:04d}"


def _scalar(value: Any) -> bool:
    return value is None or isinstance(value, bool | int | float | str)


def encoded_choices(ps: ParamSpec) -> list[Any]:
    """Optuna's categorical values are scalars: a list-valued choice is stored as its JSON text."""
    assert ps.choice is not None
    return [v if _scalar(v) else json.dumps(v) for v in ps.choice]


def suggest(trial: optuna.Trial, sweep: Sweep) -> dict[str, Any]:
    """The trial's value of every parameter (the same values again for a retried trial)."""
    params: dict[str, Any] = {}
    for name, ps in sweep.spec.params.items():
        if ps.float is not None:
            params[name] = trial.suggest_float(name, *ps.float, log=ps.log, step=ps.step)
        elif ps.int is not None:
            params[name] = trial.suggest_int(name, *ps.int, step=int(ps.step or 1), log=ps.log)
        else:
            assert ps.choice is not None
            enc = encoded_choices(ps)
            params[name] = ps.choice[enc.index(trial.suggest_categorical(name, enc))]
    return params


def original_number(trial: optuna.Trial | optuna.trial.FrozenTrial) -> int:
    """The trial a retry continues (its run directory and seed), else the trial itself.

    Retries carry Optuna's ``failed_trial`` system attribute (RetryHeartbeatStaleTrialCallback);
    a live Trial exposes system attributes only through its storage.
    """
    if isinstance(trial, optuna.trial.FrozenTrial):
        attrs = trial.system_attrs
    else:
        attrs = trial.storage.get_trial_system_attrs(trial._trial_id)
    first = attrs.get("failed_trial")
    return int(first) if first is not None else trial.number


def say_takeover(trial: optuna.Trial, number: int, run_dir: Path, started: bool, ran: bool) -> None:
    """One line on stderr when this worker takes over a stopped trial: resumed, or restarted and
    why (the run directory is written where the trial ran; only a shared folder lets another
    machine continue it). ``ran``: whether the stopped trial was ever started by a worker."""
    epochs = trial.user_attrs.get("resumed_from_epoch") if (run_dir / "last.pt").exists() else None
    if not ran:
        how = "started afresh: it never began (its storage connection or worker was lost first)"
    elif epochs is not None:
        how = f"resumed from its epoch-{epochs} checkpoint in {run_dir}"
    elif started:
        how = f"restarted: it stopped before its first checkpoint in {run_dir}"
    else:
        how = (
            f"restarted: {run_dir} is not reachable from this host; share the sweep folder "
            "(--out) between hosts to resume"
        )
    print(f"trial {trial.number} continues trial {number}: {how}", file=sys.stderr, flush=True)


class Objective:
    """Optuna objective: runs one trial through the runner; remembers the trial it is running."""

    def __init__(
        self,
        sweep: Sweep,
        sweep_dir: Path,
        data_dir: Path | None,
        on_epoch: Callable[[], None] | None = None,
    ) -> None:
        self.sweep, self.sweep_dir, self.data_dir = sweep, sweep_dir, data_dir
        self.on_epoch_display = on_epoch
        self.current: int | None = None  # number of the trial in progress

    def __call__(self, trial: optuna.Trial) -> float:
        from mnistkit.recipe.schema import resolved_dict

        self.current = trial.number
        sweep = self.sweep
        metric = sweep.spec.metric
        number = original_number(trial)
        rel = trial_dir_name(number)
        run_dir = self.sweep_dir / rel
        ran = "run_dir" in trial.user_attrs  # a retry inherits its predecessor's attributes: it ran
        trial.set_user_attr("reason", None)
        trial.set_user_attr("run_dir", rel)
        params = suggest(trial, sweep)
        try:
            recipe, origins = sweep.trial_recipe_located(params, number)
        except RecipeError as exc:
            p = exc.problems[0]
            raise self._fail(trial, f"invalid combination: {p.field}: {p.message}") from None
        trial.set_user_attr("recipe", resolved_dict(recipe))
        trial.set_user_attr("epochs_planned", recipe.epochs)

        resume = run_dir if (run_dir / "last.pt").exists() else None
        started = run_dir.exists() and any(run_dir.iterdir())
        if resume is None and started:
            # Died before its first checkpoint: nothing to continue. Keep it aside, never delete.
            run_dir.rename(run_dir.with_name(f"{run_dir.name}.incomplete-{int(time.time())}"))
        if resume is not None:
            from mnistkit.runs.directory import RunDir

            trial.set_user_attr("resumed_from_epoch", len(RunDir(run_dir).read_metrics()))
        if number != trial.number:
            say_takeover(trial, number, run_dir, started, ran)

        pruned: list[str] = []

        def on_epoch(row: dict[str, Any]) -> str | None:
            value = row.get(metric)
            if value is not None and math.isfinite(value):
                trial.report(float(value), int(row["epoch"]))
                trial.set_user_attr("epochs", int(row["epoch"]))
            if self.on_epoch_display is not None:
                self.on_epoch_display()
            # A trial that ran all its epochs is finished, whatever the pruner would say now.
            if value is not None and row["epoch"] < recipe.epochs and trial.should_prune():
                pruned.append(
                    f"pruned after epoch {row['epoch']}: {metric} {format_metric(metric, value)} "
                    f"({sweep.spec.pruner.name} pruner)"
                )
                return pruned[-1]
            return None

        from mnistkit.session import RunOptions, run

        opts = RunOptions(
            data_dir=self.data_dir,
            out=None if resume else run_dir,
            resume=resume,
            progress="silent",  # not even "saved:": the sweep's own display reports each trial
            on_epoch=on_epoch,
            origins=origins,  # the trial's report names the sweep as the source of its values
            mlflow_parent=trial.study.user_attrs.get("mlflow_parent"),  # sweeps/tracked.py
            owner_dead=number != trial.number,  # a retry: its worker's heartbeat went stale
        )
        t0 = time.perf_counter()
        try:
            result = run(recipe, opts)
        except KeyboardInterrupt:  # a second Ctrl-C, or one while the data was loading
            trial.set_user_attr("seconds", time.perf_counter() - t0)
            trial.set_user_attr("reason", "interrupted (Ctrl-C)")
            raise SweepInterrupted() from None
        except RunError as exc:
            raise self._fail(trial, str(exc), t0) from None
        except RecipeError as exc:
            raise self._fail(trial, f"invalid: {exc.problems[0].format()}", t0) from None
        except Exception as exc:  # out of memory, a plugin's bug: this trial fails, the sweep goes on
            raise self._fail(trial, f"{type(exc).__name__}: {exc}", t0) from None
        trial.set_user_attr("seconds", time.perf_counter() - t0)
        trial.set_user_attr("train_seconds", result.train_seconds)
        trial.set_user_attr("epochs", len(result.rows))
        if result.status == "interrupted":
            trial.set_user_attr("reason", "interrupted (Ctrl-C)")
            raise SweepInterrupted()
        if pruned:
            trial.set_user_attr("reason", pruned[-1])
            raise optuna.TrialPruned(pruned[-1])
        value = result.rows[-1].get(metric) if result.rows else None
        if value is None or not math.isfinite(value):
            raise self._fail(trial, f"no finite {metric} after {len(result.rows)} epoch(s)", t0)
        return float(value)

    def _fail(self, trial: optuna.Trial, reason: str, t0: float | None = None) -> TrialFailed:
        trial.set_user_attr("reason", reason)
        if t0 is not None:
            trial.set_user_attr("seconds", time.perf_counter() - t0)
        return TrialFailed(reason)
