"""``mnistkit data check RECIPE``: class balance, duplicates, train/test leaks, unusable files.

The work is in :mod:`mnistkit.data.check`; torch is imported only when the command runs (the
loaders hand back tensors), so ``mnistkit --help`` stays torch-free. No GPU is used.
"""

from __future__ import annotations

import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer

from mnistkit.cli.options import DataDirOpt, SetOpt

LABEL = 12  # "unreadable: " and the other labels, then the text, wrapped under it

data_app = typer.Typer(help="Look at a recipe's dataset without training.", no_args_is_help=True)


def register(app: typer.Typer, guarded: Callable[[Callable[[], Any]], Any]) -> None:
    @data_app.command("check")
    def check(
        recipe: Annotated[
            Path, typer.Argument(help="Recipe YAML file.", show_default=False, metavar="RECIPE")
        ],
        set_: SetOpt = None,
        data_dir: DataDirOpt = None,
        out: Annotated[
            Path,
            typer.Option("--out", "-o", help="Where to write the full report.", metavar="FILE"),
        ] = Path("data_check.json"),
    ) -> None:
        """Per split the class counts and imbalance; exact duplicates within train and test and
        between them (by the decoded pixels or audio samples, so renamed or re-encoded copies
        count); near-duplicate images; unreadable files; images of unusual size or mode.
        Writes data_check.json (--out)."""

        def body() -> None:
            import time

            from mnistkit.data.check import summary_lines, write_json

            t0 = time.perf_counter()
            report, cached = check_recipe_data(recipe, set_ or [], data_dir)
            for key, value in summary_lines(report):
                typer.echo(wrapped(key, value))
            write_json(out, report)
            took = f"{time.perf_counter() - t0:.1f} s" + (", check cached" if cached else "")
            typer.echo(wrapped("written", f"{out} ({took})"))

        guarded(body)

    app.add_typer(data_app, name="data")


def check_recipe_data(
    recipe: Path, overrides: list[str], data_dir: Path | None
) -> tuple[dict[str, Any], bool]:
    """Load the recipe's dataset as ``run`` would (unreadable files listed, not fatal) and check it."""
    from mnistkit.data.loading import check_dataset, load_dataset
    from mnistkit.recipe.schema import load_recipe
    from mnistkit.registry import registries

    reg = registries()
    rec = load_recipe(recipe, overrides, reg)
    reads = reg.datasets.get(rec.data.dataset).meta.get("reads") or ()
    if "skip_bad_files" in reads:  # report unreadable files instead of stopping at them
        rec = rec.model_copy(update={"data": rec.data.model_copy(update={"skip_bad_files": True})})
    loaded = load_dataset(rec, reg, data_dir)
    return check_dataset(rec, reg, loaded, files=True)


def wrapped(key: str, value: str, width: int = 80) -> str:
    """``key:`` then ``value`` wrapped between words to ``width`` columns, indented under it.

    A word wider than a whole line (a long path) is the one thing broken inside: 80 columns hold.
    """
    label = f"{key + ':':<{LABEL}}"
    return textwrap.fill(
        value,
        width=width,
        initial_indent=label,
        subsequent_indent=" " * LABEL,
        break_long_words=True,
        break_on_hyphens=False,
    )
