"""Whether the trackers a recipe asks for can run here (checked by ``validate``, without
importing them: ``validate`` never imports mlflow or torch)."""

from __future__ import annotations

import importlib.util
from typing import TYPE_CHECKING

from mnistkit.errors import Problem, set_hint

if TYPE_CHECKING:  # for annotations only: `mnistkit --help` imports this module, not pydantic's models
    from mnistkit.recipe.sections import RecipeBase, TrainSection
    from mnistkit.recipe.yamlio import Located

MLFLOW_INSTALL = "pip install 'mnistkit[mlflow]'"


def mlflow_installed() -> bool:
    """Whether mlflow can be imported here: found, not imported (validate stays fast and
    torch-free)."""
    try:
        return importlib.util.find_spec("mlflow") is not None
    except (ImportError, ValueError):  # an import hook that refuses it: not importable either
        return False


def missing_mlflow(train: TrainSection) -> str | None:
    """The message for a recipe that lists mlflow where the package is not installed."""
    if "mlflow" not in train.track or mlflow_installed():
        return None
    return f"train.track lists mlflow but the mlflow package is not installed: {MLFLOW_INSTALL}"


def tracker_problems(recipe: RecipeBase, doc: Located) -> list[Problem]:
    why = missing_mlflow(recipe.train)
    if why is None:
        return []
    hint = f"install it ({MLFLOW_INSTALL}), or " + set_hint("train.track", "[]")
    return [Problem(doc.where(("train", "track")), "train.track", why, hint)]


def track_sets(track: list[str] | None) -> list[str]:
    """``--track mlflow`` (run, sweep) as the ``--set`` it stands for (validated with the recipe)."""
    return [f"train.track=[{','.join(track)}]"] if track else []
