"""Hyperparameter sweeps with Optuna: ``spec`` (the sweep file), ``storage``, ``objective``,
``worker``, ``outputs`` and the ``cli`` commands. Only the cheap sweep-file test lives here."""

from pathlib import Path
from typing import Any


def is_sweep_data(data: Any) -> bool:
    """A sweep file is a mapping with top-level ``recipe:`` and ``params:`` keys."""
    return isinstance(data, dict) and "recipe" in data and "params" in data


def is_sweep_file(path: Path) -> bool:
    """Whether ``path`` is a sweep file; cheap (YAML only), so `validate` asks it of every file."""
    from mnistkit.errors import RecipeError
    from mnistkit.recipe.yamlio import load_file

    try:
        return is_sweep_data(load_file(path).data)
    except RecipeError:
        return False  # the recipe loader reports what is wrong with the file
