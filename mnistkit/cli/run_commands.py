"""Commands that work on finished (or running) runs: ``eval``, ``predict``, ``runs``, ``compare``.

Registered onto the main app by :func:`register` (called from :mod:`mnistkit.cli.app`). Like the
rest of the CLI, nothing heavy is imported here: ``eval`` and ``predict`` import torch inside
their bodies; ``runs`` and ``compare`` never do.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable
from enum import Enum
from pathlib import Path
from typing import Annotated, Any

import typer

from mnistkit.errors import RunError
from mnistkit.runs.tables import column_chunks
from mnistkit.runs.tables import fit as _fit
from mnistkit.runs.tables import table as _table


class Checkpoint(str, Enum):
    best = "best"
    last = "last"


CheckpointOpt = Annotated[
    Checkpoint,
    typer.Option(
        "--checkpoint",
        "-c",
        help="Which checkpoint: best (by train.best_metric) or last (latest epoch or Ctrl-C point).",
        metavar="best|last",
    ),
]
RunDirArg = Annotated[Path, typer.Argument(help="A run directory.", show_default=False, metavar="RUN_DIR")]
RunOrModelArg = Annotated[
    Path,
    typer.Argument(
        help="A run directory, or a model.onnx written by `mnistkit export`.",
        show_default=False,
        metavar="RUN_DIR|MODEL.onnx",
    ),
]


def _console(stderr: bool = False) -> Any:
    from rich.console import Console

    return Console(stderr=stderr, highlight=False, soft_wrap=True)


def register(app: typer.Typer, guarded: Callable[[Callable[[], Any]], Any]) -> None:
    """Add eval, predict, runs and compare to ``app``; ``guarded`` maps errors to exit codes."""
    for name, command in (("eval", eval_), ("predict", predict), ("runs", runs), ("compare", compare)):
        app.command(name)(_guard(command, guarded))


def _guard(command: Callable[..., None], guarded: Callable[[Callable[[], Any]], Any]) -> Callable[..., None]:
    """``command`` run through ``guarded``; its signature and help (what typer reads) unchanged."""

    @functools.wraps(command)
    def run(*args: Any, **kwargs: Any) -> None:
        guarded(lambda: command(*args, **kwargs))

    return run


def eval_(
    run_dir: RunOrModelArg,
    checkpoint: CheckpointOpt = Checkpoint.best,
    data_dir: Annotated[
        Path | None,
        typer.Option(
            "--data-dir",
            "-d",
            help="Folder with the dataset files (default: the run's own --data-dir, if any).",
            metavar="DIR",
        ),
    ] = None,
) -> None:
    """Evaluate a run's checkpoint on the test set: loss, accuracy, per-class scores.

    Prints loss, accuracy, per-class precision, recall and F1, and the confusion matrix.
    Saves them as RUN_DIR/eval-CHECKPOINT.json and RUN_DIR/eval-CHECKPOINT-confusion.png.
    The model is rebuilt from the run's recipe.yaml and the checkpoint's weights.
    Given a model.onnx instead, runs it in ONNX Runtime on the same test set and compares
    its accuracy with the checkpoint's (nothing is saved)."""
    from mnistkit.export.runtime import is_onnx_path

    if is_onnx_path(run_dir):
        from mnistkit.export.evaluate import evaluate_onnx, print_onnx_eval

        print_onnx_eval(evaluate_onnx(run_dir, data_dir), _console())
        return
    from mnistkit.evaluation.evaluate import evaluate_run, print_eval

    result = evaluate_run(run_dir, checkpoint.value, data_dir)
    print_eval(result, _console())


def predict(
    run_dir: RunOrModelArg,
    files: Annotated[
        list[Path],
        typer.Argument(
            help="Image files (PNG, JPG, ...) or, for audio runs, WAV files; "
            "a folder stands for the files inside it (recursively).",
            show_default=False,
            metavar="FILE|FOLDER...",
        ),
    ],
    checkpoint: CheckpointOpt = Checkpoint.best,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print machine-readable JSON instead of a table.")
    ] = False,
    top: Annotated[
        int, typer.Option("--top", "-k", min=1, help="Show the K most probable classes.", metavar="K")
    ] = 1,
    invert: Annotated[
        bool,
        typer.Option(
            "--invert",
            help="Invert image brightness first: for dark drawings on a light background "
            "(MNIST-like training data is light on black).",
        ),
    ] = False,
) -> None:
    """Classify files (or every file in folders) with a trained run: the class and its probability.

    Images are converted to grey, resized to the run's input size (e.g. 28x28) and
    normalized exactly as in training.
    MNIST-family data is a light digit or garment on a black background:
    give images that way round, or pass --invert.
    A note (on stderr) flags inputs far from the training data: resized by more than 2x,
    colour given to a grey model (or the reverse), audio much longer than the training clips.
    Given a model.onnx from `mnistkit export`, runs it in ONNX Runtime without torch."""
    from mnistkit.evaluation.inputs import print_predictions
    from mnistkit.evaluation.predict import predict_files
    from mnistkit.export.runtime import is_onnx_path, predict_onnx

    if is_onnx_path(run_dir):  # --checkpoint is the one the model was exported from
        result = predict_onnx(run_dir, list(files), top, invert)
    else:
        result = predict_files(run_dir, list(files), checkpoint.value, top, invert)
    if as_json:
        typer.echo(json.dumps(result, indent=2))
    else:
        print_predictions(result, _console(), _console(stderr=True))


def runs(
    root: Annotated[
        Path,
        typer.Argument(
            help="Folder holding run directories (or one run directory, or a group of seeds).",
            metavar="RUNS_DIR",
        ),
    ] = Path("runs"),
    members: Annotated[
        bool,
        typer.Option("--members", help="Also list each group's runs (one per seed) among the runs."),
    ] = False,
) -> None:
    """List runs: name, start, epochs done/planned, best metric, training time, status.

    A group of seeds (`run --seeds N`) is one line of its own table: seeds finished, mean ± std
    of the best metric, status; --members lists its runs too (or give the group's folder)."""

    import textwrap

    from rich.markup import escape

    from mnistkit.runs.group import scan_groups
    from mnistkit.runs.listing import scan_runs

    infos = scan_runs(root)
    groups = scan_groups(root)
    con = _console()
    if not infos and not groups:
        con.print(f"no runs in {root}" + ("" if root.exists() else " (no such folder yet)"))
        return
    shown = infos + (_group_members(groups) if members else [])
    if shown:
        con.print(_fit(con, [lambda s=s: _runs_table(shown, root, s) for s in range(len(_RUNS_SHAPES))]))
    if groups:
        con.print(_fit(con, [lambda s=s: _groups_table(groups, root, s) for s in range(len(_GROUP_SHAPES))]))
    # Why a run stopped early, and how to continue one, under the table: a sentence in a table
    # cell would wrap to a word per line at 80 columns.
    for note in _runs_notes(infos) + _groups_notes(groups):
        wrapped = textwrap.fill(
            note, width=con.width, subsequent_indent="    ", break_long_words=False, break_on_hyphens=False
        )
        con.print(escape(wrapped))


def _runs_notes(infos: list[Any]) -> list[str]:
    import shlex

    from mnistkit.cli.invocation import invoked_as

    notes = []
    for i in infos:
        if i.status == "finished" and i.stop_reason and i.stop_reason != "finished":
            notes.append(f"{i.name}: {i.stop_reason}")
        if i.resumable:
            notes.append(f"{i.name}: continue with {invoked_as()} run --resume {shlex.quote(str(i.path))}")
    return notes


def _group_members(groups: list[Any]) -> list[Any]:
    """Each group's runs, named GROUP/seed-K (their notes are the group's: resume the group)."""
    import dataclasses

    return [
        dataclasses.replace(m, name=f"{g.name}/{m.name}", resumable=False)
        for g in groups
        for m in g.members
        if m.status != "not started"
    ]


def _groups_notes(groups: list[Any]) -> list[str]:
    import shlex

    from mnistkit.cli.invocation import invoked_as

    notes = []
    for g in groups:
        if g.status == "interrupted":
            notes.append(f"{g.name}: continue with {invoked_as()} run --resume {shlex.quote(str(g.path))}")
    return notes


# Widest first: boxed, then borderless; the best metric's name moves into the header when every
# group shares it.
_GROUP_SHAPES = ({"box": True, "metric_in_header": False}, {"box": False, "metric_in_header": True})


# The colour of a run's or a group's status in `runs`; any other status (failed, ...) is red.
_STATUS_COLOURS = {"finished": "green", "running": "cyan", "interrupted": "yellow"}


def _groups_table(groups: list[Any], root: Path, shape: int) -> Any:
    from rich.markup import escape

    from mnistkit.recipe.metrics import format_metric
    from mnistkit.runs.listing import format_seconds

    opts = _GROUP_SHAPES[shape]
    metrics = {g.best_metric for g in groups if g.best_metric}
    one_metric = next(iter(metrics)) if len(metrics) == 1 and opts["metric_in_header"] else None
    table = _table(bool(opts["box"]), title=f"groups of seeds in {escape(str(root))}")
    table.add_column("name", no_wrap=True, overflow="fold")
    table.add_column("seeds", justify="right", no_wrap=True, overflow="fold")
    best_header = f"best {one_metric}\nmean ± std" if one_metric else "best: mean ± std"
    table.add_column(best_header, justify="right", no_wrap=True, overflow="fold")
    table.add_column("time", justify="right", no_wrap=True, overflow="fold")
    table.add_column("status", no_wrap=True, overflow="fold")
    for g in groups:
        best = "-"
        if g.best["n"]:
            std = "-" if g.best["std"] is None else format_metric(g.best_metric, g.best["std"])
            best = f"{format_metric(g.best_metric, g.best['mean'])} ± {std}"
            if not one_metric:
                best = f"{g.best_metric} {best}"
        status = f"[{_STATUS_COLOURS.get(g.status, 'red')}]{escape(g.status)}[/]"
        seeds = f"{g.finished}/{len(g.members)}"
        table.add_row(escape(g.name), seeds, best, format_seconds(g.seconds), status)
    return table


# From widest to narrowest: the start time loses its year, then goes; the best metric's name
# moves into the header when every run shares it; last, the best epoch goes. Names, epochs,
# figures and status always stay.
_RUNS_SHAPES = (
    {"started": "%Y-%m-%d %H:%M", "box": True, "metric_in_header": False, "best_epoch": True},
    {"started": "%m-%d %H:%M", "box": True, "metric_in_header": False, "best_epoch": True},
    {"started": "%m-%d %H:%M", "box": False, "metric_in_header": True, "best_epoch": True},
    {"started": None, "box": False, "metric_in_header": True, "best_epoch": True},
    {"started": None, "box": False, "metric_in_header": True, "best_epoch": False},
)


def _runs_table(infos: list[Any], root: Path, shape: int) -> Any:
    import datetime as dt

    from rich.markup import escape

    from mnistkit.recipe.metrics import format_metric
    from mnistkit.runs.listing import format_seconds

    opts = _RUNS_SHAPES[shape]
    metrics = {i.best_metric for i in infos if i.best is not None}
    one_metric = next(iter(metrics)) if len(metrics) == 1 and opts["metric_in_header"] else None
    table = _table(bool(opts["box"]), title=f"runs in {escape(str(root))}")
    # Only status may wrap (it is words); every other cell keeps its digits on one line, folded
    # rather than cut with "…" should even the narrowest shape not fit.
    table.add_column("name", no_wrap=True, overflow="fold")
    if opts["started"]:
        table.add_column("started", no_wrap=True, overflow="fold")
    table.add_column("epochs", justify="right", no_wrap=True, overflow="fold")
    best_header = f"best {one_metric}" if one_metric else "best"
    table.add_column(best_header, justify="right", no_wrap=True, overflow="fold")
    table.add_column("time", justify="right", no_wrap=True, overflow="fold")
    # One or two words ("failed (killed)"); why a run stopped early is said under the table.
    table.add_column("status", no_wrap=True, overflow="fold")
    for i in infos:
        planned = "?" if i.epochs_planned is None else str(i.epochs_planned)
        best = format_metric(i.best_metric, i.best)
        if i.best is not None:
            if opts["best_epoch"]:
                best = f"{best} (ep {i.best_epoch})"
            if not one_metric:
                best = f"{i.best_metric} {best}"
        status = f"[{_STATUS_COLOURS.get(i.status, 'red')}]{escape(i.status)}[/]"
        cells = [escape(i.name)]
        if opts["started"]:
            started = i.started and dt.datetime.fromtimestamp(float(i.started)).strftime(str(opts["started"]))
            cells.append(started or "-")
        cells += [f"{i.epochs_done}/{planned}", best, format_seconds(i.seconds), status]
        table.add_row(*cells)
    return table


def compare(
    run_a: Annotated[
        Path,
        typer.Argument(help="First run directory, or group of seeds.", show_default=False, metavar="RUN_A"),
    ],
    run_b: Annotated[
        Path,
        typer.Argument(help="Second run directory, or group of seeds.", show_default=False, metavar="RUN_B"),
    ],
) -> None:
    """Two runs (or groups of seeds) side by side: is their difference real?

    Prints the recipe keys that differ and the metrics of every epoch,
    then the test accuracy difference B - A with a 95 % confidence interval
    and a significance test, and a verdict in words.
    Two runs: a paired bootstrap over the test samples and McNemar's exact
    test, on the predictions.npz each run saves at its end.
    Two groups (folders with a group.json): Welch's t interval and test over seeds."""
    from rich.markup import escape

    from mnistkit.cli.invocation import invoked_as
    from mnistkit.runs.directory import RunDir
    from mnistkit.runs.group import is_group
    from mnistkit.runs.listing import effective_status, recipe_diff
    from mnistkit.runs.significance import runs_section

    con = _console()
    if is_group(run_a) or is_group(run_b):
        _compare_groups(con, run_a, run_b)
        return
    a, b = RunDir.open(run_a), RunDir.open(run_b)
    a_name, b_name = run_a.name or str(run_a), run_b.name or str(run_b)
    if run_a.resolve() == run_b.resolve():
        b_name += " (same)"
    _print_diff(con, recipe_diff(a.read_recipe_dict(), b.read_recipe_dict()), a_name, b_name)
    for table in _metrics_tables(con, a.read_metrics(), b.read_metrics()):
        con.print(table)
    for label, d in (("A", a), ("B", b)):
        con.print(f"{label}: {escape(str(d.path))}  status {escape(effective_status(d.read_status()))}")
    con.print()
    _print_lines(con, runs_section(a, b, invoked_as()))


def _print_diff(con: Any, diff: list[tuple[str, Any, Any]], a_name: str, b_name: str, but: str = "") -> None:
    if diff:
        shapes = [lambda box=box: _diff_table(diff, a_name, b_name, box) for box in (True, False)]
        con.print(_fit(con, shapes))
    else:
        con.print(f"recipe: identical (apart from the name{but})")


def _print_lines(con: Any, lines: list[str]) -> None:
    """Sentences wrapped to the console's width, continuation lines indented under their start."""
    import textwrap

    from rich.markup import escape

    for line in lines:
        indent = " " * (len(line) - len(line.lstrip()) + 2)
        # "p = 0.002" and "95 % CI" stay on one line (textwrap does not break at a no-break space)
        kept = line.replace("p = ", "p\xa0=\xa0").replace("95 % CI", "95\xa0%\xa0CI")
        wrapped = textwrap.fill(
            kept, width=con.width, subsequent_indent=indent, break_long_words=False, break_on_hyphens=False
        )
        con.print(escape(wrapped.replace("\xa0", " ")))


def _compare_groups(con: Any, path_a: Path, path_b: Path) -> None:
    """compare where A or B is a group of seeds: the recipes, every member's final test accuracy,
    and Welch's t interval and test over the seeds (two groups)."""
    from rich.markup import escape

    from mnistkit.cli.invocation import invoked_as
    from mnistkit.runs.directory import RunDir
    from mnistkit.runs.group import is_group, open_group
    from mnistkit.runs.listing import recipe_diff
    from mnistkit.runs.significance import finished_accuracies, section

    sides = []  # (name, members, is a group)
    for path in (path_a, path_b):
        if is_group(path):
            g = open_group(path)
            sides.append((g.name, g.members, True))
        else:
            sides.append((path.name or str(path), [RunDir.open(path)], False))
    (a_name, a_runs, a_group), (b_name, b_runs, b_group) = sides
    if not a_runs or not b_runs:
        empty = path_a if not a_runs else path_b
        raise RunError(f"{empty}: the group has no members (group.json lists none)")
    diff = recipe_diff(a_runs[0].read_recipe_dict(), b_runs[0].read_recipe_dict())
    _print_diff(con, [d for d in diff if d[0] != "seed"], a_name, b_name, " and the seed")
    t = _table(True, title="final test accuracy of each run")
    for col in ("", "run", "test_acc", "status"):
        t.add_column(col, no_wrap=True, overflow="fold", justify="right" if col == "test_acc" else "left")
    for label, runs_ in (("A", a_runs), ("B", b_runs)):
        for r, status, value in finished_accuracies(runs_, label)[1]:
            t.add_row(label, escape(r.name), "-" if value is None else f"{value:.2%}", escape(status))
    con.print(t)
    for label, path, is_grp, n in (("A", path_a, a_group, len(a_runs)), ("B", path_b, b_group, len(b_runs))):
        con.print(f"{label}: {escape(str(path))}  " + (f"group of {n} runs" if is_grp else "one run"))
    con.print()
    _print_lines(con, section(path_a, path_b, invoked_as()))


def _diff_table(diff: list[tuple[str, Any, Any]], a_name: str, b_name: str, box: bool = True) -> Any:
    from rich.markup import escape

    t = _table(box, title="recipe: keys that differ")
    t.add_column("key", style="cyan", no_wrap=True, overflow="fold")
    # Values wrap at their spaces (a layer list is long); "fold", never "…": no digit is cut.
    t.add_column(escape(a_name), overflow="fold")
    t.add_column(escape(b_name), overflow="fold")
    for key, va, vb in diff:
        t.add_row(escape(key), escape(_show(va)), escape(_show(vb)))
    return t


def _metrics_tables(con: Any, rows_a: list[dict[str, Any]], rows_b: list[dict[str, Any]]) -> list[Any]:
    """The metrics of every epoch, A and B side by side; split into several tables (each with the
    epoch column) where all of them would not fit the console's width."""

    from mnistkit.runs.listing import metric_columns

    cols = metric_columns(rows_a, rows_b)
    # The names are in the A:/B: lines below; in the title they would push it past 80 columns.
    title = "metrics per epoch (A, B: the runs named below)"
    chunks = column_chunks(con, cols, lambda chunk: _metrics_table(rows_a, rows_b, chunk, ""))
    return [_metrics_table(rows_a, rows_b, chunk, title if i == 0 else "") for i, chunk in enumerate(chunks)]


def _metrics_table(
    rows_a: list[dict[str, Any]], rows_b: list[dict[str, Any]], cols: list[str], title: str
) -> Any:
    from mnistkit.runs.listing import side_by_side

    m = _table(True, title=title or None)
    m.add_column("epoch", justify="right", no_wrap=True)
    for c in cols:
        # The header on two lines (metric, then run) so it is no wider than its figures.
        m.add_column(f"{c}\nA", justify="right", no_wrap=True, overflow="fold")
        m.add_column(f"{c}\nB", justify="right", no_wrap=True, overflow="fold")
    for epoch, ra, rb in side_by_side(rows_a, rows_b):
        cells = [str(epoch)]
        for c in cols:
            va = ra.get(c) if ra else None
            vb = rb.get(c) if rb else None
            fa, fb = _metric(c, va), _metric(c, vb)
            better = _better(c, va, vb)
            cells += [f"[bold]{fa}[/]" if better == "a" else fa, f"[bold]{fb}[/]" if better == "b" else fb]
        m.add_row(*cells)
    return m


def _show(v: Any) -> str:
    if isinstance(v, str):
        return v
    return json.dumps(v, default=str)


def _metric(col: str, v: float | None) -> str:
    if col == "lr" and v is not None:
        return f"{v:.3g}"
    from mnistkit.recipe.metrics import format_metric

    return format_metric(col, v)


def _better(col: str, a: float | None, b: float | None) -> str | None:
    """Which side is better for a loss/accuracy column ('a', 'b' or None)."""
    if a is None or b is None or a == b or col == "lr":
        return None
    from mnistkit.recipe.metrics import higher_is_better

    return "a" if (a > b) == higher_is_better(col) else "b"
