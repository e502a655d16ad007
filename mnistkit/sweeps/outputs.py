"""What a sweep leaves, regenerated from the storage at any time (``mnistkit sweep status``).

``trials.csv`` (one row per trial), ``best.yaml`` (the best trial's exact recipe, runnable as is),
``summary.json`` (counts by state, the best trial, epochs run vs. an unpruned sweep) and
``plots/`` (Optuna's matplotlib plots). Everything comes from the study in the storage, so a
sweep run by workers on several machines is summarized the same way on any of them.
"""

from __future__ import annotations

import csv
import io
import json
import math
import time
import warnings
from collections import Counter
from pathlib import Path
from typing import Any

import optuna
import yaml
from optuna.trial import FrozenTrial, TrialState

from mnistkit.fsutil import atomic_write_text
from mnistkit.sweeps.worker import counted, retried_numbers

META_FILE = "sweep.json"
STATES = ("COMPLETE", "PRUNED", "FAIL", "RUNNING", "WAITING")


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


def best_yaml(study: optuna.Study) -> str | None:
    """The best trial's exact recipe as YAML, with a header naming the trial and its value."""
    best = best_trial(study)
    if best is None or "recipe" not in best.user_attrs:
        return None
    metric = study.user_attrs.get("metric", "value")
    params = ", ".join(f"{k}={v}" for k, v in best.params.items())
    head = (
        f"# Best trial of sweep study {study.study_name!r}: trial {best.number} "
        f"({best.user_attrs.get('run_dir')}), {metric} = {best.value:.6g} ({study.direction.name.lower()}).\n"
        f"# Parameters: {params}\n"
        f"# Its exact recipe (seed = base seed + trial number): rerun with `mnistkit run best.yaml`.\n"
    )
    return head + yaml.safe_dump(
        best.user_attrs["recipe"], sort_keys=False, default_flow_style=None, width=100
    )


def write_outputs(study: optuna.Study, sweep_dir: Path, budget: int | None = None) -> list[Path]:
    """trials.csv, best.yaml, summary.json and plots/ in ``sweep_dir`` (atomically, each)."""
    sweep_dir.mkdir(parents=True, exist_ok=True)
    written = []
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
    written.append(sweep_dir / "trials.csv")
    text = best_yaml(study)
    if text is not None:
        atomic_write_text(sweep_dir / "best.yaml", text)
        written.append(sweep_dir / "best.yaml")
    atomic_write_text(sweep_dir / "summary.json", json.dumps(summary(study, budget), indent=2) + "\n")
    written.append(sweep_dir / "summary.json")
    written += write_plots(study, sweep_dir / "plots")
    return written


PLOTS = (
    ("optimization_history", "plot_optimization_history"),
    ("param_importances", "plot_param_importances"),
    ("parallel_coordinate", "plot_parallel_coordinate"),
    ("intermediate_values", "plot_intermediate_values"),
)


def write_plots(study: optuna.Study, folder: Path) -> list[Path]:
    """Optuna's matplotlib plots; one that cannot be drawn yet (too few trials) is skipped."""
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if not complete:
        return []
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from optuna.visualization import matplotlib as ovm

    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for name, fn in PLOTS:
        if name == "param_importances" and len(complete) < 2:
            continue
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                ax = getattr(ovm, fn)(study)
            fig = (ax.flat[0] if hasattr(ax, "flat") else ax).get_figure()
            fig.set_size_inches(8, 5)
            fig.tight_layout()
            tmp = folder / f".{name}.tmp.png"
            fig.savefig(tmp, dpi=100)
            tmp.replace(folder / f"{name}.png")
            out.append(folder / f"{name}.png")
        except Exception:  # a plot must never cost the sweep its results  # noqa: S112
            continue
        finally:
            plt.close("all")
    return out


def _fmt(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.4g}" if math.isfinite(value) else str(value)
    return str(value)


def trials_table(study: optuna.Study, budget: int | None = None, last: int = 20) -> Any:
    """A Rich table of the latest trials (the live display and `sweep status`)."""
    from rich.table import Table

    rows = trial_rows(study)
    s = summary(study, budget)
    best = (s["best"] or {}).get("number")
    title = (
        f"study {s['study']}: {s['finished']}"
        + (f" of {budget}" if budget else "")
        + " finished"
        + (f", best {s['metric']} {s['best']['value']:.4g} (trial {best})" if best is not None else "")
    )
    table = Table(title=title, title_justify="left", show_edge=False, pad_edge=False)
    params = [
        k
        for k in (rows[0] if rows else {})
        if k not in ("number", "state", "value", "epochs", "seconds", "run_dir", "retry_of", "reason")
    ]
    for col in ("#", "state", s["metric"], *params, "epochs", "s", "note"):
        table.add_column(col, overflow="fold")
    styles = {"COMPLETE": "green", "PRUNED": "yellow", "FAIL": "red", "RUNNING": "cyan", "WAITING": "dim"}
    for r in rows[-last:]:
        note = r["reason"] or (f"retry of {r['retry_of']}" if r["retry_of"] is not None else "")
        table.add_row(
            str(r["number"]) + (" *" if r["number"] == best else ""),
            f"[{styles.get(r['state'], '')}]{r['state']}[/]",
            _fmt(r["value"]),
            *(_fmt(r[p]) for p in params),
            _fmt(r["epochs"]),
            _fmt(r["seconds"]),
            note,
            end_section=False,
        )
    return table


def status_lines(study: optuna.Study, budget: int | None = None) -> list[tuple[str, str]]:
    s = summary(study, budget)
    st = s["states"]
    lines = [
        ("study", f"{s['study']} ({s['direction']} {s['metric']})"),
        (
            "trials",
            f"{s['finished']}"
            + (f" of {budget}" if budget else "")
            + " finished: "
            + ", ".join(f"{n} {k}" for k, n in st.items() if n),
        ),
    ]
    if s["best"] is not None:
        b = s["best"]
        params = ", ".join(f"{k}={v}" for k, v in b["params"].items())
        lines.append(
            ("best", f"trial {b['number']}: {s['metric']} {b['value']:.4g} ({params}) in {b['run_dir']}")
        )
    if s["epochs_unpruned"]:
        ratio = s["epochs_run"] / s["epochs_unpruned"]
        lines.append(("epochs", f"{s['epochs_run']} run of {s['epochs_unpruned']} unpruned ({ratio:.0%})"))
    return lines
