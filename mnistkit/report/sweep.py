"""A sweep's report (``mnistkit report SWEEP_DIR``): what was tried, what won, what pruning saved.

Everything is read from the study in the sweep's storage through the readers ``sweep status``
uses (:func:`mnistkit.sweeps.outputs.open_sweep`, :func:`~mnistkit.sweeps.outputs.summary`,
:func:`~mnistkit.sweeps.outputs.trial_rows`), and the plots are the sweep's own
(:data:`mnistkit.sweeps.plots.PLOTS`: optimization history, Optuna's fANOVA importances with
their minimum trial count, parallel coordinates, the metric per epoch), inlined as PNGs.

Pruning savings count only what the pruner stopped: for each PRUNED trial, the epochs it was
planned to run minus the epochs it ran. A trial that failed, or that early stopping ended, did
not stop because of the pruner and saves nothing here.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mnistkit.errors import RunError
from mnistkit.recipe.metrics import format_metric
from mnistkit.report.figures import figure_uri
from mnistkit.report.group import link
from mnistkit.report.page import Page, Section, render_part
from mnistkit.runs.listing import format_seconds

#: plots.PLOTS name → (section id, title, what the picture shows)
FIGURES = {
    "optimization_history": (
        "history",
        "Optimization history",
        "The metric of every trial by trial number (pruned trials at the epoch they were stopped) "
        "and the best complete trial so far.",
    ),
    "param_importances": (
        "importances",
        "Parameter importances",
        "Optuna's fANOVA importances: how much of the metric's variation each parameter explains "
        "(shares summing to 1), from the complete trials.",
    ),
    "parallel_coordinate": (
        "parallel",
        "Parallel coordinates",
        "Each trial as one line through its parameters and its metric; colour: the metric of a "
        "complete trial, dashed grey: pruned.",
    ),
    "intermediate_values": (
        "intermediate",
        "Metric per epoch",
        "The metric after each epoch of every trial; pruned trials end early.",
    ),
}


@dataclass
class Savings:
    """Epochs the pruner saved: planned minus run, over the pruned trials."""

    pruned: int  # pruned trials
    epochs_saved: int
    epochs_run: int  # by all finished trials
    epochs_unpruned: int  # had every finished trial run its planned epochs
    seconds_per_epoch: float | None  # mean over the finished trials' epochs

    @property
    def share(self) -> float:
        return self.epochs_saved / self.epochs_unpruned if self.epochs_unpruned else 0.0


def savings(study: Any) -> Savings:
    """What pruning saved, from each finished trial's recorded epochs and planned epochs."""
    from optuna.trial import TrialState

    from mnistkit.sweeps.trials import counted

    finished = counted(study.get_trials(deepcopy=False))
    pruned = [t for t in finished if t.state == TrialState.PRUNED]
    run = sum(int(t.user_attrs.get("epochs", 0)) for t in finished)
    saved = sum(
        max(int(t.user_attrs.get("epochs_planned", 0)) - int(t.user_attrs.get("epochs", 0)), 0)
        for t in pruned
    )
    seconds = sum(float(t.user_attrs.get("seconds", 0.0)) for t in finished)
    return Savings(
        pruned=len(pruned),
        epochs_saved=saved,
        epochs_run=run,
        epochs_unpruned=run + saved,
        seconds_per_epoch=seconds / run if run and seconds else None,
    )


def _trials(study: Any, metric: str, best: int | None) -> dict[str, Any]:
    """The trials table: one row per trial, each cell its text and the value it sorts by."""
    from mnistkit.sweeps.table import NOT_PARAMS, format_param

    planned = {t.number: t.user_attrs.get("epochs_planned") for t in study.get_trials(deepcopy=False)}
    rows = []
    from mnistkit.sweeps.outputs import trial_rows

    raw = trial_rows(study)
    params = [k for k in (raw[0] if raw else {}) if k not in NOT_PARAMS]
    for r in raw:
        value = r["value"]
        rows.append(
            {
                "number": r["number"],
                "best": r["number"] == best,
                "state": r["state"],
                "value": value,
                "value_text": format_metric(metric, value) if value is not None else "-",
                "params": [
                    (format_param(r[p]), r[p] if isinstance(r[p], int | float) else None) for p in params
                ],
                "epochs": r["epochs"],
                "planned": planned.get(r["number"]),
                "pruned_after": r["epochs"] if r["state"] == "PRUNED" else None,
                "seconds": r["seconds"],
                "time": format_seconds(r["seconds"]),
                "reason": r["reason"] if r["state"] != "PRUNED" else None,
            }
        )
    return {"params": params, "rows": rows, "metric": metric, "notes": any(r["reason"] for r in rows)}


def _best(
    folder: Path, out: Path, s: dict[str, Any], run_report: Callable[[Path], Path] | None
) -> dict[str, Any] | None:
    """The best trial: its figures, its run folder and the link to its run's report (written
    first where it is missing), or why there is no link."""
    from mnistkit.runs.directory import RunDir
    from mnistkit.sweeps.table import format_params

    b = s["best"]
    if b is None:
        return None
    run = folder / b["run_dir"] if b.get("run_dir") else None
    href = note = None
    if run is None or not RunDir.looks_like(run):
        note = f"its run folder {run} is not here (a trial run on another machine?): no report to link"
    elif run_report is None:
        note = "the run's report is not written by this command"
    else:
        try:
            href = link(run_report(run), out)
        except RunError as exc:
            note = f"its report could not be written: {exc}"
    return {
        "number": b["number"],
        "value_text": format_metric(s["metric"], b["value"]),
        "value": b["value"],
        "params": format_params(b["params"]),
        "epochs": b.get("epochs"),
        "run_dir": str(run) if run is not None else None,
        "link": href,
        "note": note,
    }


def _figures(study: Any) -> list[Section]:
    from mnistkit.sweeps.plots import PLOTS, TooFewTrials

    sections = []
    for name, draw in PLOTS.items():
        sid, title, caption = FIGURES[name]
        try:
            body = render_part("parts/figure.html.j2", uri=figure_uri(draw(study)), alt=f"{title}: {caption}")
        except TooFewTrials as exc:
            text = str(exc).replace(f"{name}.png not drawn: ", "not drawn: ")
            body = render_part("parts/missing.html.j2", text=text)
        sections.append(Section(sid, title, body, note=caption))
    return sections


def sweep_page(folder: Path, out: Path, run_report: Callable[[Path], Path] | None = None) -> Page:
    """The report of the sweep in ``folder`` (to be written at ``out``; links are relative to it).

    ``run_report(run_dir)``: the path of that run's report.html, written if missing (the best
    trial's report is linked)."""
    from mnistkit.sweeps.outputs import open_sweep, summary
    from mnistkit.sweeps.storage import redact

    opened = open_sweep(folder)
    study, budget = opened.study, opened.budget
    s = summary(study, budget)
    if s["finished"] == 0:
        running = s["states"].get("RUNNING", 0)
        raise RunError(
            f"{folder}: sweep {s['study']} has no finished trial yet"
            + (f" ({running} running)" if running else "")
            + f"; nothing to report. Watch it with: mnistkit sweep status {folder}"
        )
    best = s["best"]["number"] if s["best"] else None
    trials = _trials(study, s["metric"], best)
    saved = savings(study)
    facts = {
        "study": s["study"],
        "metric": f"{s['metric']} ({'higher' if s['direction'] == 'maximize' else 'lower'} is better)",
        "trials": f"{s['finished']}" + (f" of {budget}" if budget else "") + " finished",
        "states": ", ".join(f"{n} {k.lower()}" for k, n in s["states"].items() if n),
        "training time": format_seconds(s["trial_seconds"]) + " (all trials together)",
        "storage": redact(str(opened.meta.get("storage", ""))),
        "sweep file": str(opened.meta.get("sweep_file", "-")),
    }
    best_info = _best(folder, out, s, run_report)
    head = render_part(
        "parts/sweep_summary.html.j2", facts=facts, states=s["states"], best=best_info, metric=s["metric"]
    )
    sections = [Section("summary", "Summary", head)]
    sections += _figures(study)
    sections.append(Section("trials", "Trials", render_part("parts/sweep_trials.html.j2", **trials)))
    sections.append(Section("best", "Best trial", render_part("parts/sweep_best.html.j2", best=best_info)))
    sections.append(
        Section(
            "savings", "Pruning savings", render_part("parts/sweep_savings.html.j2", s=saved, per=saved.share)
        )
    )
    subtitle = f"{s['finished']} trials, {s['direction']} {s['metric']}"
    if best_info:
        subtitle += f", best {best_info['value_text']} (trial {best_info['number']})"
    return Page(title=f"sweep {s['study']}", subtitle=subtitle, sections=sections)
