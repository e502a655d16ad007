"""The sweep's plots, drawn from the study's trials (not Optuna's defaults).

* ``optimization_history.png``: the metric of every trial by trial number, pruned trials too (their
  value at the epoch they were stopped), and the best so far.
* ``intermediate_values.png``: the metric per epoch of every trial; pruned trials end early.
* ``parallel_coordinate.png``: each trial's parameters and metric as one line.
* ``param_importances.png``: Optuna's fANOVA importances, refused with fewer than
  :data:`MIN_IMPORTANCE_TRIALS` complete trials (and marked as a rough guide below
  :data:`FEW_IMPORTANCE_TRIALS`).

Every plot is titled with the study's name and labelled with the metric (in percent for an
accuracy, as runs show it) and, where the axis is epochs or trials, integer ticks. Figures are made
like the runs' plots (:mod:`mnistkit.evaluation.plots`: a bare Figure, saved atomically).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from mnistkit.evaluation.plots import OKABE_ITO, _figure, _save
from mnistkit.recipe.metrics import higher_is_better

if TYPE_CHECKING:
    from matplotlib.figure import Figure

MIN_IMPORTANCE_TRIALS = 5  # fewer complete trials: no importances at all
FEW_IMPORTANCE_TRIALS = 10  # fewer: drawn, with a warning in the title

# Okabe-Ito, colour-blind-safe, as the runs' plots.
_COMPLETE, _PRUNED, _BEST = OKABE_ITO["blue"], OKABE_ITO["orange"], OKABE_ITO["vermillion"]


class TooFewTrials(Exception):
    """A plot that cannot be drawn honestly yet; the message says why (shown to the user)."""


def _metric(study: optuna.Study) -> str:
    return str(study.user_attrs.get("metric", "value"))


def _scale(metric: str) -> float:
    return 100.0 if higher_is_better(metric) else 1.0


def _ylabel(metric: str) -> str:
    return f"{metric} (%)" if higher_is_better(metric) else metric


def _drawn(study: optuna.Study) -> list[FrozenTrial]:
    """Trials with a value: complete ones and pruned ones (their value when they were stopped)."""
    states = (TrialState.COMPLETE, TrialState.PRUNED)
    return [t for t in study.get_trials(deepcopy=False, states=states) if t.value is not None]


def _integer_axis(axis: Any, values: list[float]) -> None:
    from matplotlib.ticker import MaxNLocator

    axis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))
    if values:  # half a step of margin: one or two points would zoom into 0.995, 1.000, ...
        (axis.axes.set_xlim if axis.axis_name == "x" else axis.axes.set_ylim)(
            min(values) - 0.5, max(values) + 0.5
        )


def history(study: optuna.Study) -> Figure:
    metric, trials = _metric(study), _drawn(study)
    k = _scale(metric)
    fig = _figure(8, 4.8)
    ax = fig.subplots()
    for state, colour, marker, label in (
        (TrialState.COMPLETE, _COMPLETE, "o", "complete"),
        (TrialState.PRUNED, _PRUNED, "x", "pruned (value when stopped)"),
    ):
        ts = [t for t in trials if t.state == state]
        if ts:
            xs, ys = [t.number for t in ts], [k * t.value for t in ts]
            ax.scatter(xs, ys, c=colour, marker=marker, label=label)
    complete = sorted((t for t in trials if t.state == TrialState.COMPLETE), key=lambda t: t.number)
    if complete:
        pick = max if study.direction == optuna.study.StudyDirection.MAXIMIZE else min
        best, xs, ys = None, [], []
        for t in complete:
            best = t.value if best is None else pick(best, t.value)
            xs.append(t.number)
            ys.append(k * best)
        last = max(t.number for t in trials)
        ax.step([*xs, last], [*ys, ys[-1]], where="post", color=_BEST, label="best complete so far")
    _integer_axis(ax.xaxis, [t.number for t in trials])
    ax.set_xlabel("trial")
    ax.set_ylabel(_ylabel(metric))
    ax.set_title(f"sweep {study.study_name}: {metric} of each trial")
    ax.grid(alpha=0.3)
    if trials:
        ax.legend(fontsize=8)
    return fig


def intermediate(study: optuna.Study) -> Figure:
    metric, trials = _metric(study), _drawn(study)
    k = _scale(metric)
    fig = _figure(8, 4.8)
    ax = fig.subplots()
    epochs: list[float] = []
    labelled: set[TrialState] = set()
    for t in trials:
        steps = sorted(t.intermediate_values.items())
        if not steps:
            continue
        epochs += [e for e, _ in steps]
        pruned = t.state == TrialState.PRUNED
        label = None
        if t.state not in labelled:
            labelled.add(t.state)
            label = "pruned (stopped early)" if pruned else "complete"
        ax.plot(
            [e for e, _ in steps],
            [k * v for _, v in steps],
            color=_PRUNED if pruned else _COMPLETE,
            linestyle="--" if pruned else "-",
            marker="x" if pruned else "o",
            markersize=4,
            alpha=0.8,
            label=label,
        )
    _integer_axis(ax.xaxis, epochs)
    ax.set_xlabel("epoch")
    ax.set_ylabel(_ylabel(metric))
    ax.set_title(f"sweep {study.study_name}: {metric} per epoch of each trial")
    ax.grid(alpha=0.3)
    if labelled:
        ax.legend(fontsize=8)
    return fig


IMPORTANCE_SEED = 0


def importances(study: optuna.Study) -> Figure:
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    n = len(complete)
    if n < MIN_IMPORTANCE_TRIALS:
        raise TooFewTrials(
            f"param_importances.png not drawn: {n} complete trial{'s' * (n != 1)}, "
            f"parameter importances need at least {MIN_IMPORTANCE_TRIALS}"
        )
    # fANOVA fits a random forest: unseeded, the same study drew different bars on every refresh
    # and in every report. A fixed seed makes the figure a function of the trials alone.
    evaluator = optuna.importance.FanovaImportanceEvaluator(seed=IMPORTANCE_SEED)
    imp = optuna.importance.get_param_importances(study, evaluator=evaluator)
    names = list(reversed(list(imp)))
    fig = _figure(8, max(2.5, 0.5 * len(names) + 1.5))
    ax = fig.subplots()
    ax.barh(names, [imp[n_] for n_ in names], color=_COMPLETE)
    for y, name in enumerate(names):
        ax.text(imp[name], y, f" {imp[name]:.2f}", va="center", fontsize=8)
    ax.set_xlabel(f"importance for {_metric(study)} (fANOVA, shares summing to 1)")
    title = f"sweep {study.study_name}: parameter importances from {n} complete trials"
    if n < FEW_IMPORTANCE_TRIALS:
        title += f"\nonly {n} complete trials (fewer than {FEW_IMPORTANCE_TRIALS}): a rough guide"
    ax.set_title(title, **({"color": _BEST} if n < FEW_IMPORTANCE_TRIALS else {}))
    ax.set_xlim(0, max(imp.values(), default=1.0) * 1.15 or 1.0)
    return fig


def _axis_values(trials: list[FrozenTrial], name: str) -> tuple[list[float], list[str]]:
    """Each trial's ``name`` on a 0..1 axis (log axes on a log scale, choices evenly spaced), and
    the labels of the axis' ends (or of every choice)."""
    dist = next(t.distributions[name] for t in trials if name in t.distributions)
    values = [t.params.get(name) for t in trials]
    if isinstance(dist, optuna.distributions.CategoricalDistribution):
        choices = list(dist.choices)
        pos = [choices.index(v) / max(len(choices) - 1, 1) if v in choices else math.nan for v in values]
        return pos, [str(json.loads(c) if isinstance(c, str) and c[:1] == "[" else c) for c in choices]
    low, high = float(dist.low), float(dist.high)
    log = bool(getattr(dist, "log", False))
    f: Callable[[float], float] = math.log if log else float
    span = (f(high) - f(low)) or 1.0
    pos = [(f(float(v)) - f(low)) / span if v is not None else math.nan for v in values]
    return pos, [f"{low:.4g}", f"{high:.4g}"]


def parallel(study: optuna.Study) -> Figure:
    import matplotlib

    metric, trials = _metric(study), _drawn(study)
    k = _scale(metric)
    names = sorted({n for t in trials for n in t.params})
    fig = _figure(max(8, 1.9 * (len(names) + 1)), 5)
    ax = fig.subplots()
    axes = [*names, metric]
    values = [k * t.value for t in trials]
    lo, hi = (min(values), max(values)) if values else (0.0, 1.0)
    columns = [_axis_values(trials, n) for n in names]
    unit = "%" if higher_is_better(metric) else ""
    columns.append(([(v - lo) / ((hi - lo) or 1.0) for v in values], [f"{lo:.4g}{unit}", f"{hi:.4g}{unit}"]))
    cmap = matplotlib.colormaps["viridis"]
    for i, t in enumerate(trials):
        ys = [col[0][i] for col in columns]
        pruned = t.state == TrialState.PRUNED
        colour = "0.6" if pruned else cmap(columns[-1][0][i])
        ax.plot(range(len(axes)), ys, color=colour, linestyle="--" if pruned else "-", alpha=0.85)
    for x, (_, labels) in enumerate(columns):
        ax.axvline(x, color="0.3", linewidth=0.8)
        for j, label in enumerate(labels):
            y = j / max(len(labels) - 1, 1)
            ax.annotate(label, (x, y), xytext=(4, 0), textcoords="offset points", fontsize=8, va="center")
    bar = fig.colorbar(matplotlib.cm.ScalarMappable(matplotlib.colors.Normalize(lo, hi), cmap), ax=ax)
    bar.set_label(f"{_ylabel(metric)} of a complete trial")
    ax.set_xticks(range(len(axes)), axes, rotation=20, ha="right")
    ax.set_yticks([])
    ax.set_xlim(-0.2, len(axes) - 0.4)
    ax.set_ylim(-0.05, 1.05)
    ax.set_ylabel("low → high (each axis its own range)")
    ax.set_title(
        f"sweep {study.study_name}: parameters of each trial\n"
        f"colour: {metric}, dashed grey: pruned ({_ylabel(metric)} when stopped)"
    )
    return fig


#: file name → what draws it, in the order written.
PLOTS: dict[str, Callable[[optuna.Study], Figure]] = {
    "optimization_history": history,
    "param_importances": importances,
    "parallel_coordinate": parallel,
    "intermediate_values": intermediate,
}


def write_plots(study: optuna.Study, folder: Path) -> tuple[list[Path], list[str]]:
    """The plots (once a trial has a value); returns the files written and notes on plots not
    drawn (too few trials, or a plot that failed: a plot never costs the sweep its results)."""
    if not _drawn(study):
        return [], []
    out, notes = [], []
    for name, draw in PLOTS.items():
        try:
            out.append(_save(draw(study), folder / f"{name}.png"))
        except TooFewTrials as exc:
            notes.append(str(exc))
        except Exception as exc:  # noqa: BLE001
            notes.append(f"{name}.png not drawn: {type(exc).__name__}: {exc}")
    return out, notes
