"""``mnistkit check RECIPE...``: run each recipe and check its ``expect:`` block (a regression test).

Every recipe is validated before any is trained (a typo in the third file does not cost the
first two runs). Each recipe with expectations is then trained quietly into a run directory of
its own, and one line per expectation says met or missed, with the value the run recorded.
Exit code: 0 all met, 4 (:data:`~mnistkit.recipe.expect.EXIT_MISSED`) one or more missed, 1 a run
failed, 2 an invalid recipe (or none of them has an ``expect:`` block), 130 Ctrl-C.
Torch is imported only when the first recipe trains.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

import typer

from mnistkit.cli.options import DataDirOpt, RunsOpt
from mnistkit.errors import Problem, RecipeError, RunError


@dataclass
class Tally:
    """What ``check`` found over all recipes."""

    met: int = 0
    missed: int = 0
    failed: list[str] = field(default_factory=list)  # recipes whose run failed
    checked: int = 0  # recipes run
    without: int = 0  # recipes without expect:

    def summary(self) -> str:
        total = self.met + self.missed
        parts = [f"{self.met} of {total} expectation{'s' * (total != 1)} met"]
        if self.missed:
            parts.append(f"{self.missed} missed")
        if self.failed:
            parts.append(f"{len(self.failed)} run{'s' * (len(self.failed) != 1)} failed")
        recipes = f"{self.checked} recipe{'s' * (self.checked != 1)}"
        line = ", ".join(parts) + f" ({recipes} run"
        if self.without:
            line += f", {self.without} without expect:"
        return line + ")"

    def exit_code(self) -> int:
        from mnistkit.recipe.expect import EXIT_MISSED

        return 1 if self.failed else EXIT_MISSED if self.missed else 0


def register(app: typer.Typer, guarded: Callable[[Callable[[], Any]], Any]) -> None:
    @app.command()
    def check(
        recipes: Annotated[
            list[Path],
            typer.Argument(help="Recipe files to run and check.", show_default=False, metavar="RECIPE"),
        ],
        set_: Annotated[
            list[str] | None,
            typer.Option(
                "--set",
                "-s",
                metavar="KEY=VALUE",
                help="Override a recipe value in every recipe, e.g. --set epochs=3 or "
                "--set 'expect.test_acc=>= 0.9' (repeatable).",
            ),
        ] = None,
        data_dir: DataDirOpt = None,
        runs_root: RunsOpt = None,
    ) -> None:
        """Run recipes and check their expect: blocks: one line per expectation, met or missed.

        Exit code 0: every expectation met; 4: one or more missed; 1: a run failed.
        Recipes without an expect: block are listed, not run."""
        guarded(lambda: _check(recipes, set_ or [], data_dir, runs_root or Path("runs")))


def _check(paths: list[Path], overrides: list[str], data_dir: Path | None, runs_root: Path) -> None:
    recipes = _load_all(paths, overrides)
    tally = Tally()
    for path, rec in recipes:
        if not rec.expect:
            tally.without += 1
            typer.echo(f"{path}: no expect: block, not run")
            continue
        tally.checked += 1
        n = len(rec.expect)
        e = rec.epochs
        typer.echo(f"{path}: training {e} epoch{'s' * (e != 1)}, {n} expectation{'s' * (n != 1)} ...")
        _check_one(path, rec, data_dir, runs_root, tally)
    if not tally.checked:
        raise RecipeError(
            [
                Problem(
                    "usage",
                    "",
                    "none of the recipes has an expect: block: nothing to check",
                    'add one, e.g. expect: {test_acc: ">= 0.9"} (see docs/recipe.md), '
                    "or --set 'expect.test_acc=>= 0.9'",
                )
            ]
        )
    typer.echo(tally.summary())
    if tally.exit_code():
        raise typer.Exit(tally.exit_code())


def _load_all(paths: list[Path], overrides: list[str]) -> list[tuple[Path, Any]]:
    """Every recipe validated before any trains; all problems of all files at once (exit 2)."""
    from mnistkit.recipe.schema import load_recipe
    from mnistkit.sweeps import is_sweep_file

    out: list[tuple[Path, Any]] = []
    problems: list[Problem] = []
    bad = 0
    for path in paths:
        try:
            if is_sweep_file(path):
                what = "is a sweep file; check runs recipes"
                raise RecipeError([Problem(str(path), "", what, "give the recipe it sweeps")])
            out.append((path, load_recipe(path, overrides)))
        except RecipeError as exc:
            bad += 1
            problems += exc.problems
    if bad:
        typer.echo(f"{bad} of {len(paths)} recipe(s) invalid: nothing was run", err=True)
        raise RecipeError(problems)
    return out


def _check_one(path: Path, rec: Any, data_dir: Path | None, runs_root: Path, tally: Tally) -> None:
    """Train one recipe silently, then one line per expectation."""
    from rich.markup import escape

    from mnistkit.cli.invocation import invoked_as
    from mnistkit.recipe.expect import outcome_line
    from mnistkit.session import RunOptions, run

    opts = RunOptions(data_dir=data_dir, runs_root=runs_root, progress="silent", command=invoked_as())
    try:
        result = run(rec, opts)
    except RunError as exc:
        tally.failed.append(str(path))
        _console(stderr=True).print(f"[bold red]error:[/] {escape(str(path))}: {escape(str(exc))}")
        return
    if result.status == "interrupted":
        raise KeyboardInterrupt  # Ctrl-C during a run: stop checking (exit 130)
    con = _console()
    for o in result.expectations:
        con.print("  " + outcome_line(o))
    tally.met += sum(o.met for o in result.expectations)
    tally.missed += sum(not o.met for o in result.expectations)
    con.print(f"  run: {escape(str(result.run_dir))}", soft_wrap=True)


def _console(stderr: bool = False) -> Any:
    from rich.console import Console

    return Console(stderr=stderr, highlight=False, soft_wrap=True)
