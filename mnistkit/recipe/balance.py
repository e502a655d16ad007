"""Recipe checks for class imbalance: ``loss.class_weights`` and ``data.sampler`` (issue 22).

Pure data (no torch). The number of classes is known here where the dataset's registry entry
declares it (``num_classes``: the MNIST family, digits, FSDD); for folder datasets it is known
only once the files are listed, and :func:`mnistkit.build.components.resolve_class_weights`
checks it then.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any, Literal, Union

from pydantic import Field, ValidationError, WrapValidator

from mnistkit.errors import Problem, set_hint
from mnistkit.recipe.sections import RecipeBase
from mnistkit.registry.core import Registries


def balance_problems(recipe: RecipeBase, reg: Registries, where: Callable[..., str]) -> list[Problem]:
    """``where(*loc, key=False)``: the file:line:col of a recipe location."""
    problems: list[Problem] = []
    weights: Any = getattr(recipe.loss, "class_weights", None)
    declared = reg.datasets.get(recipe.data.dataset).meta.get("num_classes")
    if isinstance(weights, list) and declared is not None and len(weights) != declared:
        problems.append(
            Problem(
                where("loss", "class_weights"),
                "loss.class_weights",
                f"{len(weights)} weight(s) for dataset {recipe.data.dataset!r}, which has "
                f"{declared} classes: give exactly one weight per class",
                set_hint("loss.class_weights", "auto")
                + f" (inverse frequency), or a list of {declared} numbers > 0",
            )
        )
    if recipe.data.sampler == "balanced" and not recipe.data.shuffle:
        problems.append(
            Problem(
                where("data", "shuffle"),
                "data.shuffle",
                "data.sampler: balanced draws a random order every epoch; shuffle: false asks "
                "for the file order",
                "remove data.shuffle: false, or " + set_hint("data.sampler", "epoch"),
            )
        )
    return problems


def _one_message(value: Any, handler: Callable[[Any], Any]) -> Any:
    """One clear error instead of one per member of the union below."""
    try:
        return handler(value)
    except ValidationError:
        raise ValueError("expected auto or a list of numbers > 0, one per class") from None


#: The type of a ``class_weights`` registry parameter (``Param(type="class_weights")``).
CLASS_WEIGHTS = Annotated[
    Union[Literal["auto"], Annotated[list[Annotated[float, Field(gt=0)]], Field(min_length=1)]],  # noqa: UP007
    WrapValidator(_one_message),
]
