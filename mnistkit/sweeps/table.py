"""How a sweep is shown: the trials table (live and ``sweep status``) and the summary lines.

Tables fit the console the way ``runs`` and ``compare`` do (:mod:`mnistkit.runs.tables`): the
widest shape that fits, else the parameters in tables of their own; no number and no header is
split over two lines. Figures follow one rule everywhere: the metric as the runs show it
(:func:`mnistkit.recipe.metrics.format_metric`: an accuracy in percent, a loss to 4 decimals),
parameters to 4 significant digits (the stored values, in trials.csv, summary.json and best.yaml,
stay exact), times as ``mnistkit runs`` shows them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import optuna

from mnistkit.recipe.metrics import format_metric
from mnistkit.runs.listing import format_seconds
from mnistkit.runs.tables import column_chunks, fit, table
from mnistkit.sweeps.outputs import summary, trial_rows

#: trial_rows() keys that are not parameters.
NOT_PARAMS = ("number", "state", "value", "epochs", "seconds", "run_dir", "retry_of", "reason")
STYLES = {"COMPLETE": "green", "PRUNED": "yellow", "FAIL": "red", "RUNNING": "cyan", "WAITING": "dim"}
PARAM_DIGITS = 4  # significant digits of a float parameter on screen
NOTE_WIDTH = 40  # the most columns the note takes (a failed trial's reason wraps)


def format_param(value: Any) -> str:
    """A parameter's value on screen: floats to 4 significant digits, the rest as written."""
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{PARAM_DIGITS}g}"
    return str(value)


def format_params(params: dict[str, Any]) -> list[str]:
    return [f"{k}={format_param(v)}" for k, v in params.items()]


def _note(row: dict[str, Any]) -> str:
    """The table's note: why a trial failed, or what it retries. A pruned trial needs none: its
    state, epochs run of planned and metric say it all (the full reason is in trials.csv)."""
    if row["state"] == "PRUNED":
        return ""
    if row["reason"]:
        return str(row["reason"])
    return f"retry of {row['retry_of']}" if row["retry_of"] is not None else ""


def _header(name: str, split: bool) -> str:
    """A parameter's column header; ``split``: one line per dotted part (``optimizer.`` / ``lr``)."""
    return name.replace(".", ".\n") if split else name


class TrialsTable:
    """The latest ``last`` trials of a study, ready to be shaped to a console's width."""

    def __init__(self, study: optuna.Study, budget: int | None = None, last: int = 20) -> None:
        from rich.markup import escape

        s = summary(study, budget)
        self.metric: str = s["metric"]
        best = (s["best"] or {}).get("number")
        best_text = ""
        if best is not None:
            value = format_metric(self.metric, s["best"]["value"])
            best_text = f", best {self.metric} {value} (trial {best})"
        done = f"{s['finished']}" + (f" of {budget}" if budget else "")
        self.title = escape(f"study {s['study']}: {done} finished{best_text}")
        planned = {t.number: t.user_attrs.get("epochs_planned") for t in study.get_trials(deepcopy=False)}
        rows = trial_rows(study)
        self.params = [k for k in (rows[0] if rows else {}) if k not in NOT_PARAMS]
        self.rows = []
        for r in rows[-last:]:
            epochs = "-" if r["epochs"] is None else str(r["epochs"])
            if planned.get(r["number"]) is not None:
                epochs += f"/{planned[r['number']]}"
            self.rows.append(
                {
                    "#": str(r["number"]) + (" *" if r["number"] == best else ""),
                    "state": f"[{STYLES.get(r['state'], '')}]{r['state']}[/]",
                    "metric": format_metric(self.metric, r["value"]) if r["value"] is not None else "-",
                    "params": {p: escape(format_param(r[p])) for p in self.params},
                    "epochs": epochs,
                    "time": format_seconds(r["seconds"]),
                    "note": escape(_note(r)),
                }
            )
        self.has_note = any(r["note"] for r in self.rows)

    def fitted(self, con: Any) -> Any:
        """The widest shape that fits ``con``'s width: boxed, borderless, the parameter headers
        on one line per dotted part, and at last the parameters in tables of their own."""
        return fit(
            con,
            [
                lambda: self.table(self.params, box=True, split=False),
                lambda: self.table(self.params, box=False, split=False),
                lambda: self.table(self.params, box=False, split=True),
                lambda: self.split(con),
            ],
        )

    def table(self, params: list[str], box: bool, split: bool, main: bool = True, title: bool = True) -> Any:
        """One table: # and, with ``main``, state, metric, epochs, time and note; ``params``."""
        # Borderless: collapsed padding, 2 spaces between columns (3 otherwise).
        t = table(box, title=self.title if title else None, **({} if box else {"collapse_padding": True}))
        # Only the note (words) may wrap; every figure stays on one line ("fold" only should
        # even the narrowest shape not fit).
        t.add_column("#", no_wrap=True, overflow="fold")
        if main:
            t.add_column("state", no_wrap=True, overflow="fold")
            t.add_column(self.metric, justify="right", no_wrap=True, overflow="fold")
        for p in params:
            t.add_column(_header(p, split), no_wrap=True, overflow="fold")
        if main:
            t.add_column("epochs", justify="right", no_wrap=True, overflow="fold")
            t.add_column("time", justify="right", no_wrap=True, overflow="fold")
            if self.has_note:
                # A long reason wraps (between words) rather than pushing the table to its narrowest.
                t.add_column("note", min_width=10, max_width=NOTE_WIDTH, overflow="fold")
        for r in self.rows:
            cells = [r["#"]]
            if main:
                cells += [r["state"], r["metric"]]
            cells += [r["params"][p] for p in params]
            if main:
                cells += [r["epochs"], r["time"]] + ([r["note"]] if self.has_note else [])
            t.add_row(*cells)
        return t

    def split(self, con: Any) -> Any:
        """The trials, then their parameters in as few tables as fit (each with the # column)."""
        from rich.console import Group

        chunks = column_chunks(con, self.params, lambda c: self.table(c, False, True, main=False))
        parts = [self.table([], box=False, split=True)]
        parts += [self.table(c, box=False, split=True, main=False, title=False) for c in chunks]
        return Group(*parts)


def fitted_table(con: Any, study: optuna.Study, budget: int | None = None, last: int = 20) -> Any:
    """The trials table shaped to ``con``'s width (the live display and ``sweep status``)."""
    return TrialsTable(study, budget, last).fitted(con)


def status_lines(
    study: optuna.Study, budget: int | None = None, sweep_dir: Path | None = None
) -> list[tuple[str, list[str]]]:
    """The summary under the table: (key, parts); a value's parts are joined by ", " and wrapped
    between parts (:func:`print_lines`). Run folders are shown under ``sweep_dir`` as given (so
    the path works from the current folder)."""
    s = summary(study, budget)
    st = s["states"]
    states = [f"{n} {k}" for k, n in st.items() if n] or ["none yet"]
    done = f"{s['finished']}" + (f" of {budget}" if budget else "")
    lines = [
        ("study", [f"{s['study']} ({s['direction']} {s['metric']})"]),
        ("trials", [f"{done} finished: {states[0]}", *states[1:]]),
    ]
    if s["best"] is not None:
        b = s["best"]
        value = format_metric(s["metric"], b["value"])
        lines.append(
            (
                "best",
                [f"trial {b['number']}: {s['metric']} {value} in {Path(sweep_dir or '') / b['run_dir']}"],
            )
        )
        lines.append(("params", format_params(b["params"])))
    if s["epochs_unpruned"]:
        ratio = s["epochs_run"] / s["epochs_unpruned"]
        lines.append(("epochs", [f"{s['epochs_run']} run of {s['epochs_unpruned']} unpruned ({ratio:.0%})"]))
    return lines


KEY_WIDTH = 11  # "continuing:" and the values after it line up


def wrap_parts(parts: list[str], width: int, indent: int = KEY_WIDTH) -> list[str]:
    """``parts`` joined by ", " in lines of at most ``width`` (after ``indent``), broken only
    between parts, then between words of a part too long for a line of its own."""
    import textwrap

    room = max(width - indent, 20)
    lines: list[str] = []
    for i, part in enumerate(parts):
        text = part + ("," if i < len(parts) - 1 else "")
        if lines and len(lines[-1]) + 1 + len(text) <= room:
            lines[-1] += " " + text
        else:
            lines += textwrap.wrap(text, room, break_long_words=False, break_on_hyphens=False) or [""]
    return lines


def print_lines(con: Any, lines: list[tuple[str, list[str]]]) -> None:
    """``key:  value`` lines, values wrapped between parts at the console's width."""
    from rich.markup import escape

    for key, parts in lines:
        for i, text in enumerate(wrap_parts(parts, con.width)):
            con.print(escape(f"{key + ':' if i == 0 else '':<{KEY_WIDTH}}{text}"))
