"""``mnistkit run --seeds N`` and ``seeds: [...]``: the checks on the command line, then
:mod:`mnistkit.seeds` (imported when a group runs: it loads torch)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mnistkit.errors import Problem, RecipeError
from mnistkit.recipe.resume import RESUMABLE


def seeds_of(recipe_path: Path, recipe: Any, seeds: int | None, sets: list[str]) -> list[int] | None:
    """The seeds to run: ``--seeds N`` gives seed, seed+1, ..., seed+N-1; the recipe's ``seeds:``
    its list; None for a single run. Both at once is refused (which one was meant?)."""
    if seeds is not None and recipe.seeds is not None:
        from mnistkit.recipe.schema import load_document

        where = load_document(recipe_path, sets).where(("seeds",))
        raise RecipeError(
            [
                Problem(
                    where,
                    "seeds",
                    f"--seeds {seeds} and the recipe's seeds: {recipe.seeds} both say which seeds to run",
                    f"drop --seeds to run the recipe's list, or replace the list: --set seeds=[0,1,2] "
                    f"(--seeds {seeds} counts from seed: {recipe.seed})",
                )
            ]
        )
    if seeds is not None:
        return [recipe.seed + i for i in range(seeds)]
    return list(recipe.seeds) if recipe.seeds is not None else None


def refuse_nproc(nproc: int | None) -> None:
    if nproc is not None:
        raise RecipeError(
            [
                Problem(
                    "usage",
                    "",
                    "--nproc cannot be combined with several seeds (--seeds, seeds:, or a group's --resume)",
                    "run one seed at a time with several processes instead: "
                    "--nproc N --set seed=K (and --set seeds=null if the recipe lists seeds)",
                )
            ]
        )


def check_resume_sets(overrides: list[str]) -> None:
    for ov in overrides:
        key = ov.partition("=")[0].strip()
        if key not in RESUMABLE:
            raise RecipeError(
                [
                    Problem(
                        f"--set {ov}",
                        key,
                        "cannot change this when resuming a group (its runs would not be the same runs)",
                        f"allowed on --resume: {', '.join(RESUMABLE)}; "
                        "start a new group to change anything else",
                    )
                ]
            )


def start(
    recipe_path: Path,
    recipe: Any,
    seeds: list[int],
    data_dir: Path | None,
    out: Path | None,
    runs_root: Path | None,
    progress: str | None,
    origins: dict[str, str] | None = None,
) -> int:
    from mnistkit.cli.invocation import invoked_as
    from mnistkit.seeds import GroupOptions, run_group

    opts = GroupOptions(data_dir, out, runs_root or Path("runs"), progress, invoked_as(), origins)
    return run_group(recipe, recipe_path, seeds, opts)


def resume(path: Path, overrides: list[str], data_dir: Path | None, progress: str | None) -> int:
    from mnistkit.cli.invocation import invoked_as
    from mnistkit.seeds import GroupOptions, resume_group

    check_resume_sets(overrides)
    opts = GroupOptions(data_dir=data_dir, progress=progress, command=invoked_as())
    return resume_group(path, overrides, opts)
