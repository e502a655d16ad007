"""A group of seeds' report (``mnistkit report GROUP_DIR``, a folder ``run --seeds N`` wrote).

The members' learning curves overlaid with their mean ± standard deviation per epoch, the
group's summary (mean ± std, min and max of every final and best metric and of the epoch time:
:func:`mnistkit.runs.group.summarize`, the same figures as its summary.json), and a link to
each member's own report (written first where it is missing).

The band is the sample standard deviation (n - 1), as in the group's summary; at an epoch that
fewer than two members reached (early stopping) there is no band, only the mean.
"""

from __future__ import annotations

import os
import statistics
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mnistkit.errors import RunError
from mnistkit.recipe.metrics import format_metric, higher_is_better
from mnistkit.report.figures import figure_uri
from mnistkit.report.page import Page, Section, render_part

#: (metric kind, y label, scale): loss as recorded, accuracy in percent.
PANELS = (("loss", "loss (per sample)", 1.0), ("acc", "accuracy (%)", 100.0))


def link(target: Path, out: Path) -> str:
    """``target`` as a relative link from the page at ``out`` (the pair can be moved together)."""
    return Path(os.path.relpath(Path(target).resolve(), Path(out).resolve().parent)).as_posix()


def mean_band(
    runs: list[list[dict[str, Any]]], key: str
) -> tuple[list[float], list[float], list[float | None]]:
    """(epochs, mean, sample std or None) of column ``key`` over ``runs`` (metrics.csv rows), at
    every epoch at least one run has a value for."""
    from mnistkit.evaluation.plots import series

    by_epoch: dict[float, list[float]] = {}
    for rows in runs:
        for x, y in zip(*series(rows, key), strict=True):
            by_epoch.setdefault(x, []).append(y)
    xs = sorted(by_epoch)
    means = [statistics.fmean(by_epoch[x]) for x in xs]
    stds = [statistics.stdev(by_epoch[x]) if len(by_epoch[x]) >= 2 else None for x in xs]
    return xs, means, stds


def draw_band(
    ax: Any,
    runs: list[list[dict[str, Any]]],
    key: str,
    scale: float,
    colour: str,
    label: str,
    style: str = "-",
    members: bool = True,
) -> bool:
    """Each run's curve (thin, when ``members``), the mean (thick) and mean ± std (shaded) of
    ``key`` on ``ax``; False when no run has the column."""
    from mnistkit.evaluation.plots import series

    xs, means, stds = mean_band(runs, key)
    if not xs:
        return False
    if members and len(runs) > 1:
        for rows in runs:
            mx, my = series(rows, key)
            ax.plot(mx, [scale * y for y in my], style, color=colour, linewidth=0.8, alpha=0.35)
    ax.plot(
        xs,
        [scale * m for m in means],
        style,
        color=colour,
        linewidth=2,
        marker="o",
        markersize=3,
        label=label + (" (mean)" if len(runs) > 1 else ""),
    )
    band = [(x, m, s) for x, m, s in zip(xs, means, stds, strict=True) if s is not None]
    if band:
        bx = [b[0] for b in band]
        ax.fill_between(
            bx,
            [scale * (m - s) for _, m, s in band],
            [scale * (m + s) for _, m, s in band],
            color=colour,
            alpha=0.18,
            linewidth=0,
            label=f"{label} mean ± std",
        )
    return True


def group_curves_uri(runs: list[list[dict[str, Any]]], title: str) -> str:
    """Loss and accuracy per epoch of every member, each split's mean ± std shaded."""
    from matplotlib.ticker import MaxNLocator

    from mnistkit.evaluation.plots import SPLITS, new_figure

    fig = new_figure(12, 4.2)
    axes = fig.subplots(1, 2)
    for ax, (kind, ylabel, scale) in zip(axes, PANELS, strict=True):
        for split, colour in SPLITS:
            draw_band(ax, runs, f"{split}_{kind}", scale, colour, split, "--" if split == "train" else "-")
        ax.set_xlabel("epoch")
        ax.set_ylabel(ylabel)
        ax.set_title(f"{'accuracy' if kind == 'acc' else 'loss'}: {title}")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    return figure_uri(fig)


def _value(key: str, v: float | None) -> str:
    """A summary figure as runs show it: accuracies in percent, losses to 4 decimals, seconds."""
    if v is None:
        return "-"
    if key == "epoch_seconds":
        return f"{v:.2f} s"
    return format_metric(key.split("_", 1)[1], v)


def _spread(key: str, v: float | None) -> str:
    """A standard deviation in the unit of its mean (points for an accuracy)."""
    if v is None:
        return "-"
    if key == "epoch_seconds":
        return f"{v:.2f} s"
    metric = key.split("_", 1)[1]
    return f"{100 * v:.2f} points" if higher_is_better(metric) else f"{v:.4f}"


def summary_rows(summary: dict[str, Any]) -> list[dict[str, Any]]:
    """The summary table's rows from :func:`mnistkit.runs.group.summarize`'s metrics."""
    rows = []
    for key, st in summary["metrics"].items():
        rows.append(
            {
                "key": key,
                "n": st["n"],
                "mean": st["mean"],
                "std": st["std"],
                "text": f"{_value(key, st['mean'])} ± {_spread(key, st['std'])}"
                if st["std"] is not None
                else _value(key, st["mean"]),
                "min": _value(key, st["min"]),
                "max": _value(key, st["max"]),
            }
        )
    return rows


def group_page(folder: Path, out: Path, run_report: Callable[[Path], Path] | None = None) -> Page:
    """The report of the group of seeds in ``folder`` (written at ``out``; links relative to it).

    ``run_report(run_dir)``: that member's report.html, written if missing."""
    from mnistkit.runs.directory import RunDir
    from mnistkit.runs.group import STD_NOTE, group_info, member_info, read_group, summarize
    from mnistkit.runs.listing import format_seconds, format_started

    group = read_group(folder)
    summary = summarize(folder)
    if not summary["finished"]:
        raise RunError(
            f"{folder}: no member of the group has finished"
            + (
                f" ({', '.join(f'{m} {s}' for m, s in summary['not_finished'].items())})"
                if summary["not_finished"]
                else ""
            )
            + f"; nothing to report yet. Resume it: mnistkit run --resume {folder}"
        )
    members = []
    curves: list[list[dict[str, Any]]] = []
    for name, seed in zip(
        group["members"], group.get("seeds") or [None] * len(group["members"]), strict=True
    ):
        info = member_info(folder, name)
        run = folder / name
        href = note = None
        if info.status == "finished":
            curves.append(RunDir(run).read_metrics())
            if run_report is not None:
                try:
                    href = link(run_report(run), out)
                except RunError as exc:
                    note = f"no report: {exc}"
        members.append(
            {
                "name": name,
                "seed": seed,
                "status": info.status,
                "epochs": f"{info.epochs_done}/{info.epochs_planned or '?'}",
                "best": format_metric(info.best_metric, info.best),
                "best_value": info.best,
                "link": href,
                "note": note,
            }
        )
    name = str(group.get("name") or folder.name)
    n = len(summary["finished"])
    facts = {
        "group": name,
        "recipe": str(group.get("recipe", "-")),
        "seeds": ", ".join(str(s) for s in group.get("seeds") or []) or "-",
        "finished": f"{n} of {len(group['members'])} members",
        "best metric": summary.get("best_metric") or "-",
        "started": format_started(group.get("started")),
        "training time": format_seconds(group_info(folder).seconds) + " (all members together)",
    }
    sections = [
        Section(
            "summary",
            "Summary",
            render_part("parts/group_summary.html.j2", facts=facts, rows=summary_rows(summary), std=STD_NOTE),
        ),
        Section(
            "curves",
            "Learning curves",
            render_part(
                "parts/figure.html.j2",
                uri=group_curves_uri(curves, name),
                alt=f"loss and accuracy per epoch of the {n} finished members, mean ± std shaded",
            ),
            note=f"Thin lines: each of the {n} finished members; thick: their mean; shaded: mean ± "
            "sample standard deviation at each epoch (none where fewer than 2 members reached it).",
        ),
        Section("members", "Members", render_part("parts/group_members.html.j2", members=members)),
    ]
    return Page(title=f"group {name}", subtitle=f"{n} seeds of {facts['recipe']}", sections=sections)
