"""Several runs or groups of seeds side by side (``mnistkit report RUN_A RUN_B ... -o FILE``).

What ``mnistkit compare`` prints, as a page, for two or more: the learning curves overlaid (a
group as its mean ± std), a table of every final and best metric (a group's mean ± std, from
:func:`mnistkit.runs.group.summarize`'s statistics), the recipe keys that differ (compare's
:func:`mnistkit.runs.listing.recipe_diff`, each side against the first), and, for exactly two,
compare's own "is the difference real?" lines (:func:`mnistkit.runs.significance.section`:
the paired bootstrap and McNemar's test for two runs, Welch's for two groups), verdict included.

The page has no default place (it belongs to no one folder): ``-o FILE`` is required.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mnistkit.errors import Problem, RecipeError, RunError
from mnistkit.recipe.metrics import higher_is_better
from mnistkit.report.figures import figure_uri
from mnistkit.report.group import PANELS, draw_band, link
from mnistkit.report.page import Page, Section, render_part

#: Splits drawn over each other (train curves are in each run's own report): style per split.
SPLIT_STYLES = (("val", "--"), ("test", "-"))


@dataclass
class Side:
    """One column of the comparison: a run, or a group of seeds (its members)."""

    label: str  # A, B, C, ...
    name: str
    path: Path
    runs: list[Any]  # RunDir
    group: bool


def open_sides(paths: list[Path]) -> list[Side]:
    """Each path as a run or a group (a RunError for anything else, a sweep included)."""
    from mnistkit.runs.directory import RunDir
    from mnistkit.runs.group import is_group, open_group
    from mnistkit.sweeps.outputs import is_sweep

    sides = []
    for i, path in enumerate(paths):
        label = chr(ord("A") + i) if i < 26 else f"#{i + 1}"
        if is_sweep(path):
            raise RecipeError(
                [
                    Problem(
                        "usage",
                        "",
                        f"{path} is a sweep: its report is a page of its own, not a side of a comparison",
                        f"mnistkit report {path}; to set its best trial beside runs, give that trial's "
                        f"run folder ({path}/trials/NNNN)",
                    )
                ]
            )
        if is_group(path):
            g = open_group(path)
            if not g.members:
                raise RunError(f"{path}: the group has no members (group.json lists none)")
            sides.append(Side(label, g.name, path, g.members, True))
        else:
            run = RunDir.open(path)
            sides.append(Side(label, path.resolve().name, path, [run], False))
    return sides


def _results(side: Side) -> tuple[dict[str, dict[str, Any]], list[str]]:
    """Per metric key: n, mean, std (groups), min, max over the side's finished runs; and notes
    on runs left out."""
    from mnistkit.runs.group import member_results, stats
    from mnistkit.runs.listing import effective_status

    per_run, notes = [], []
    for r in side.runs:
        status = effective_status(r.read_status())
        if status == "finished":
            per_run.append(member_results(r.path))
        else:
            notes.append(f"{side.label}: {r.path} left out: {status}, not finished")
    keys: list[str] = []
    for res in per_run:
        keys += [k for k in res if k not in keys]
    return {k: stats([res[k] for res in per_run if k in res]) for k in keys}, notes


def _cell(key: str, st: dict[str, Any], group: bool) -> str:
    from mnistkit.report.group import _spread, _value

    if st["mean"] is None:
        return "-"
    if group and st["std"] is not None:
        return f"{_value(key, st['mean'])} ± {_spread(key, st['std'])}"
    return _value(key, st["mean"])


def metrics_table(sides: list[Side]) -> tuple[list[dict[str, Any]], list[str]]:
    """Rows: metric key, then per side its text and value (the better ones marked)."""
    from mnistkit.runs.group import EPOCH_SECONDS, SUMMARIZED

    results, notes = [], []
    for side in sides:
        res, left_out = _results(side)
        results.append(res)
        notes += left_out
    order = [f"{kind}_{c}" for c in SUMMARIZED for kind in ("final", "best")] + [EPOCH_SECONDS]
    keys = [k for k in order if any(k in res for res in results)]
    rows = []
    for key in keys:
        means = [res[key]["mean"] if key in res else None for res in results]
        present = [m for m in means if m is not None]
        best = None
        if key != EPOCH_SECONDS and len(present) > 1 and len(set(present)) > 1:
            best = (max if higher_is_better(key.split("_", 1)[1]) else min)(present)
        cells = []
        for side, res, mean in zip(sides, results, means, strict=True):
            st = res.get(key)
            cells.append(
                {
                    "text": _cell(key, st, side.group) if st else "-",
                    "value": mean,
                    "best": mean is not None and mean == best,
                }
            )
        rows.append({"key": key, "cells": cells})
    return rows, notes


def _shown(v: Any) -> str:
    """A recipe value as ``compare`` shows it: text as is, the rest as JSON."""
    return v if isinstance(v, str) else json.dumps(v, default=str)


def recipe_rows(sides: list[Side]) -> list[tuple[str, list[str]]]:
    """The recipe keys that differ between any side and the first, with every side's value (the
    seed left out where a group is involved: its members differ by seed by design)."""
    from mnistkit.runs.listing import recipe_diff

    recipes = [s.runs[0].read_recipe_dict() for s in sides]
    diffs = [dict((k, (a, b)) for k, a, b in recipe_diff(recipes[0], r)) for r in recipes[1:]]
    keys: list[str] = []
    for d in diffs:
        keys += [k for k in d if k not in keys]
    if any(s.group for s in sides):
        keys = [k for k in keys if k != "seed"]
    rows = []
    for key in keys:
        first = next(d[key][0] for d in diffs if key in d)
        rows.append((key, [_shown(first)] + [_shown(d[key][1] if key in d else first) for d in diffs]))
    return rows


def curves_uri(sides: list[Side]) -> str:
    """Loss and accuracy per epoch of every side (a group: its mean ± std), val dashed, test solid."""
    from matplotlib.ticker import MaxNLocator

    from mnistkit.evaluation.plots import OKABE_ITO, new_figure

    order = ("blue", "orange", "bluish green", "vermillion", "reddish purple", "sky blue", "black")
    colours = [OKABE_ITO[name] for name in order]  # yellow left out: too pale on white
    fig = new_figure(12, 4.6)
    axes = fig.subplots(1, 2)
    for ax, (kind, ylabel, scale) in zip(axes, PANELS, strict=True):
        for i, side in enumerate(sides):
            rows = [r.read_metrics() for r in side.runs]
            for split, style in SPLIT_STYLES:
                draw_band(
                    ax,
                    rows,
                    f"{split}_{kind}",
                    scale,
                    colours[i % len(colours)],
                    f"{side.label} {split}",
                    style,
                    members=False,
                )
        ax.set_xlabel("epoch")
        ax.set_ylabel(ylabel)
        ax.set_title("accuracy" if kind == "acc" else "loss")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    return figure_uri(fig)


def compare_page(paths: list[Path], out: Path) -> Page:
    """The comparison of the runs or groups at ``paths``, to be written at ``out``."""
    from mnistkit.runs.significance import section

    sides = open_sides(paths)
    table, notes = metrics_table(sides)
    heads = [
        {
            "label": s.label,
            "name": s.name,
            "path": str(s.path),
            "kind": f"group of {len(s.runs)} runs" if s.group else "one run",
            "report": link(s.path / "report.html", out) if (s.path / "report.html").is_file() else None,
        }
        for s in sides
    ]
    if len(sides) == 2:
        lines = section(sides[0].path, sides[1].path, "mnistkit")
        verdict = next(
            (ln.strip().removeprefix("verdict: ") for ln in lines if ln.strip().startswith("verdict:")), None
        )
    else:
        lines, verdict = [], None
    recipe = recipe_rows(sides)
    groups = any(s.group for s in sides)
    sections = [
        Section("sides", "Runs compared", render_part("parts/compare_sides.html.j2", sides=heads)),
        Section(
            "curves",
            "Learning curves",
            render_part(
                "parts/figure.html.j2",
                uri=curves_uri(sides),
                alt="loss and accuracy per epoch of every run or group, overlaid",
            ),
            note="Dashed: validation split, solid: test split (train curves are in each run's own "
            "report)" + ("; a group: the mean of its members, mean ± std shaded." if groups else "."),
        ),
        Section(
            "metrics",
            "Metrics",
            render_part("parts/compare_metrics.html.j2", sides=heads, rows=table, notes=notes),
            note="final_*: the last epoch's value; best_*: the best epoch's; a group: the mean ± "
            "sample standard deviation of its finished members. Bold: the better side.",
        ),
        Section(
            "recipe",
            "Recipe differences",
            render_part("parts/compare_recipe.html.j2", sides=heads, rows=recipe, seed=groups),
        ),
        Section(
            "significance",
            "Is the difference real?",
            render_part("parts/compare_significance.html.j2", lines=lines, verdict=verdict, n=len(sides)),
        ),
    ]
    names = ", ".join(f"{s.label}: {s.name}" for s in sides)
    return Page(
        title=f"{len(sides)} {'groups and runs' if groups else 'runs'} compared",
        subtitle=names,
        sections=sections,
    )
