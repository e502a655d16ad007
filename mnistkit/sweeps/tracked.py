"""A sweep in MLflow (``train.track: [mlflow]`` in its base recipe, or ``sweep --track mlflow``):
one parent run per study, a nested run per trial, the best trial tagged.

The parent's id is kept in the study's storage (a user attribute), so every worker, on any
machine, and every later continuation of the sweep logs its trials under the same parent.
Tracking never fails a sweep: a problem is said (by the trial's own run, or here) and the
trials go on; each trial's run directory keeps what was not sent (``mnistkit track``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

PARENT_ATTR = "mlflow_parent"


def tracks(sweep: Any) -> bool:
    return "mlflow" in sweep.base.train.track


def open_parent(sweep: Any, study: Any, sweep_dir: Path) -> str:
    """Find or create the study's parent run; returns the line that says where it is."""
    from mnistkit.tracking.mlflow_record import mask, sweep_parent

    try:
        run_id, shown = sweep_parent(
            sweep.base.train.mlflow,
            sweep.study_name,
            study.user_attrs.get(PARENT_ATTR),
            {"mnistkit.sweep_dir": str(sweep_dir.resolve()), "mnistkit.metric": sweep.spec.metric},
        )
    except Exception as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        return mask(f"MLflow: no parent run ({type(exc).__name__}: {first}); trials are logged alone")
    study.set_user_attr(PARENT_ATTR, run_id)
    return f"MLflow parent run {run_id} at {shown}"


def trial_tags(frozen: Any) -> dict[str, str | None]:
    """A finished trial's tags: its number, state, the epoch a pruned one stopped after, and the
    trial a retry continues (None: no such tag)."""
    steps = list(frozen.intermediate_values)
    retry_of = frozen.system_attrs.get("failed_trial")
    return {
        "mnistkit.trial": str(frozen.number),
        "mnistkit.state": frozen.state.name,
        "mnistkit.pruned_after": str(max(steps)) if frozen.state.name == "PRUNED" and steps else None,
        "mnistkit.retry_of": str(retry_of) if retry_of is not None else None,
    }


def tag_trial(sweep: Any, sweep_dir: Path, study: Any, frozen: Any) -> None:
    """Optuna's after-trial callback: the trial's state tags on its MLflow run."""
    if not study.user_attrs.get(PARENT_ATTR) or not frozen.user_attrs.get("run_dir"):
        return
    from mnistkit.runs.directory import RunDir
    from mnistkit.tracking.mlflow_record import run_id_of, tag_runs

    uri = sweep.base.train.mlflow.tracking_uri
    try:
        run_id = run_id_of(RunDir(sweep_dir / frozen.user_attrs["run_dir"]), uri)
        if run_id is not None:
            tag_runs({run_id: trial_tags(frozen)}, uri=uri)
    except Exception:  # the trial's own tracker already said what failed; the sweep goes on
        pass


def end_parent(sweep: Any, sweep_dir: Path, study: Any, interrupted: bool) -> None:
    """The sweep stopped (for now): the best trial tagged, the parent KILLED (Ctrl-C) or
    FINISHED; a continued sweep sets it RUNNING again."""
    parent = study.user_attrs.get(PARENT_ATTR)
    if not parent:
        return
    _tag_best(sweep, sweep_dir, study, parent)
    from mnistkit.tracking.mlflow_record import end_run

    try:
        end_run(parent, "KILLED" if interrupted else "FINISHED", sweep.base.train.mlflow.tracking_uri)
    except Exception:
        pass


def _tag_best(sweep: Any, sweep_dir: Path, study: Any, parent: str) -> None:
    """The best trial's run tagged ``mnistkit.best: true`` (a previous best untagged); the
    parent tagged with the best trial, its run and value."""
    from mnistkit.runs.directory import RunDir
    from mnistkit.tracking.mlflow_record import run_id_of, tag_runs

    try:
        best = study.best_trial
    except ValueError:  # no trial finished
        return
    uri = sweep.base.train.mlflow.tracking_uri
    try:
        run_id = run_id_of(RunDir(sweep_dir / best.user_attrs["run_dir"]), uri)
        if run_id is None:
            return
        old = study.user_attrs.get("mlflow_best_run")
        tags: dict[str, dict[str, str | None]] = {
            parent: {
                "mnistkit.best_trial": str(best.number),
                "mnistkit.best_trial_run": run_id,
                "mnistkit.best_value": repr(best.value),
            },
        }
        if old and old != run_id:
            tags[old] = {"mnistkit.best": None}
        tags[run_id] = {"mnistkit.best": "true"}
        tag_runs(tags, uri=uri)
        study.set_user_attr("mlflow_best_run", run_id)
    except Exception:
        pass
