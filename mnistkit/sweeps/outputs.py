"""What a sweep leaves, regenerated from the storage at any time (``mnistkit sweep status``).

``trials.csv`` (one row per trial), ``best.yaml`` (the best trial's exact recipe, runnable as is),
``summary.json`` (counts by state, the best trial, epochs run vs. an unpruned sweep) and
``plots/`` (:mod:`mnistkit.sweeps.plots`). Everything comes from the study in the storage, so a
sweep run by workers on several machines is summarized the same way on any of them.
"""

from __future__ import annotations

import copy
import csv
import io
import json
import shlex
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
import yaml
from optuna.trial import FrozenTrial, TrialState

from mnistkit.errors import RunError
from mnistkit.fsutil import atomic_write_text
from mnistkit.sweeps.trials import counted, retried_numbers

META_FILE = "sweep.json"
STATES = ("COMPLETE", "PRUNED", "FAIL", "RUNNING", "WAITING")


def is_sweep(path: Path) -> bool:
    return (Path(path) / META_FILE).is_file()


@dataclass
class OpenedSweep:
    """A sweep folder's study, read from its storage (``sweep status``, ``report``)."""

    folder: Path
    study: optuna.Study
    budget: int | None
    meta: dict[str, Any]


def open_sweep(folder: Path, storage: str | None = None, study_name: str | None = None) -> OpenedSweep:
    """The study of the sweep in ``folder`` (its sweep.json names the storage and the study;
    ``storage`` and ``study_name`` override them). Reads only: never creates a storage."""
    meta_path = Path(folder) / META_FILE
    if not meta_path.is_file():
        raise RunError(f"{folder}: not a sweep folder (no {META_FILE})")
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        url, name = storage or meta["storage"], study_name or meta["study"]
    except (OSError, ValueError, TypeError, KeyError) as exc:
        raise RunError(f"{meta_path}: unreadable ({type(exc).__name__}: {exc})") from None
    study = load_study(url, name, storage)
    return OpenedSweep(Path(folder), study, meta.get("budget"), meta)


def load_study(url: str, study_name: str, given: str | None = None) -> optuna.Study:
    """Study ``study_name`` in the storage at ``url`` (``given``: the --storage URL, checked)."""
    from mnistkit.sweeps.storage import check_url, open_storage, redact
    from mnistkit.sweeps.trials import quiet_optuna

    if given:
        check_url(given, "--storage")
    if url.startswith("sqlite:///") and not Path(url.removeprefix("sqlite:///")).is_file():
        raise RunError(f"no sweep storage at {url.removeprefix('sqlite:///')}")  # do not create one
    quiet_optuna()
    try:
        return optuna.load_study(study_name=study_name, storage=open_storage(url))
    except KeyError:
        raise RunError(f"no study {study_name!r} in {redact(url)}") from None


def trial_rows(study: optuna.Study) -> list[dict[str, Any]]:
    """One plain row per trial: number, state, value, parameters, epochs, seconds, run dir, reason."""
    trials = study.get_trials(deepcopy=False)
    retried = retried_numbers(trials)
    names: list[str] = []
    for t in trials:
        names += [n for n in t.params if n not in names]
    rows = []
    for t in trials:
        a = t.user_attrs
        state = t.state.name
        reason = a.get("reason") if state in ("FAIL", "PRUNED") else None
        if state == "FAIL" and t.number in retried:
            reason = f"{reason or 'worker died (heartbeat stale)'}; retried"
        row: dict[str, Any] = {"number": t.number, "state": state, "value": t.value}
        row.update({n: t.params.get(n) for n in names})
        row.update(
            {
                "epochs": a.get("epochs", 0 if state != "WAITING" else None),
                "seconds": round(a["seconds"], 2) if "seconds" in a else None,
                "run_dir": a.get("run_dir"),
                "retry_of": t.system_attrs.get("failed_trial"),
                "reason": reason,
            }
        )
        rows.append(row)
    return rows


def best_trial(study: optuna.Study) -> FrozenTrial | None:
    done = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)) if t.value is not None]
    if not done:
        return None
    pick = max if study.direction == optuna.study.StudyDirection.MAXIMIZE else min
    return pick(done, key=lambda t: t.value)


def summary(study: optuna.Study, budget: int | None = None) -> dict[str, Any]:
    trials = study.get_trials(deepcopy=False)
    states = Counter(t.state.name for t in trials)
    finished = counted(trials)
    best = best_trial(study)
    metric = study.user_attrs.get("metric", "value")
    epochs_run = sum(int(t.user_attrs.get("epochs", 0)) for t in finished)
    epochs_full = sum(int(t.user_attrs.get("epochs_planned", 0)) for t in finished)
    return {
        "study": study.study_name,
        "metric": metric,
        "direction": study.direction.name.lower(),
        "budget": budget,
        "finished": len(finished),
        "states": {s: states.get(s, 0) for s in STATES},
        "best": None
        if best is None
        else {
            "number": best.number,
            "value": best.value,
            "params": best.params,
            "run_dir": best.user_attrs.get("run_dir"),
            "epochs": best.user_attrs.get("epochs"),
        },
        "epochs_run": epochs_run,
        "epochs_unpruned": epochs_full,
        "trial_seconds": round(sum(float(t.user_attrs.get("seconds", 0)) for t in trials), 2),
        "written": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def best_yaml(study: optuna.Study, path: Path | None = None) -> str | None:
    """The best trial's exact recipe as YAML, with plots on, and a header naming the trial, its
    value and the command that reruns it (``path``: where the file is written)."""
    from mnistkit.recipe.metrics import format_metric

    best = best_trial(study)
    if best is None or "recipe" not in best.user_attrs:
        return None
    metric = study.user_attrs.get("metric", "value")
    recipe = copy.deepcopy(best.user_attrs["recipe"])
    # The trials ran without plots (the sweep files set train.plots: false); the rerun draws them.
    plots_off = recipe.get("train", {}).get("plots") is False
    recipe.setdefault("train", {})["plots"] = True
    params = ", ".join(f"{k}={v}" for k, v in best.params.items())
    where = shlex.quote(str(path.resolve())) if path is not None else "best.yaml"
    head = (
        f"# Best trial of sweep study {study.study_name!r}: trial {best.number} "
        f"({best.user_attrs.get('run_dir')}), {metric} {format_metric(metric, best.value)} "
        f"({study.direction.name.lower()}).\n"
        f"# Parameters: {params}\n"
        f"# Its exact recipe (seed = base seed + trial number)"
        + (", with train.plots: true (the trials ran without plots)" if plots_off else "")
        + f".\n# Rerun it: mnistkit run {where}\n"
    )
    return head + yaml.safe_dump(recipe, sort_keys=False, default_flow_style=None, width=100)


@dataclass
class Written:
    """What :func:`write_outputs` wrote, and notes on what it did not (plots not drawn yet)."""

    paths: list[Path] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def write_outputs(study: optuna.Study, sweep_dir: Path, budget: int | None = None) -> Written:
    """trials.csv, best.yaml, summary.json and plots/ in ``sweep_dir`` (atomically, each)."""
    from mnistkit.sweeps.plots import write_plots

    sweep_dir.mkdir(parents=True, exist_ok=True)
    written = Written()
    rows = trial_rows(study)
    buf = io.StringIO()
    cols = list(rows[0]) if rows else ["number", "state", "value"]
    writer = csv.DictWriter(buf, fieldnames=cols, lineterminator="\n")
    writer.writeheader()
    for r in rows:
        writer.writerow(
            {k: ("" if v is None else json.dumps(v) if isinstance(v, list) else v) for k, v in r.items()}
        )
    atomic_write_text(sweep_dir / "trials.csv", buf.getvalue())
    written.paths.append(sweep_dir / "trials.csv")
    text = best_yaml(study, sweep_dir / "best.yaml")
    if text is not None:
        atomic_write_text(sweep_dir / "best.yaml", text)
        written.paths.append(sweep_dir / "best.yaml")
    atomic_write_text(sweep_dir / "summary.json", json.dumps(summary(study, budget), indent=2) + "\n")
    written.paths.append(sweep_dir / "summary.json")
    plots, written.notes = write_plots(study, sweep_dir / "plots")
    written.paths += plots
    return written
