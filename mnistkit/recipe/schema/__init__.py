"""The recipe: a validated, pure-data description of one training run (no torch here).

Data flow: ``load_recipe(path)`` → YAML with positions (:mod:`mnistkit.recipe.yamlio`) → the pydantic
model generated from the registries (so a plugin's names and parameters are validated exactly like
the built-ins) → cross-field checks → a :class:`Recipe`. Every problem is collected and raised at
once as a :class:`~mnistkit.errors.RecipeError` with ``file:line:column``.

Defaults live in the field declarations (:mod:`mnistkit.recipe.sections`) and nowhere else; each
field's docstring is its documentation (JSON Schema, ``docs/recipe.md`` and ``mnistkit fields`` are
generated from it). The parts, by concern:

* ``_generated`` -- the pydantic model generated from the registries (:func:`recipe_model`), and
  the smaller one that validates a recipe: only the registry entries it names;
* ``_loading`` -- files, bases, ``--set``, plugins, validation (:func:`load_recipe`);
* ``_messages`` -- pydantic's errors as problems with file:line:col, did-you-mean, hints;
* ``_checks`` -- the cross-field rules, the resolved recipe as data.
"""

from mnistkit.recipe.schema._checks import DATASET_OPTIONS, MLP_ONLY, check_recipe, resolved_dict
from mnistkit.recipe.schema._generated import recipe_model
from mnistkit.recipe.schema._loading import (
    SHORTHAND,
    default_run_name,
    load_document,
    load_recipe,
    load_recipe_located,
    load_recipe_text,
    load_with_bases,
    merge_located,
    validate_document,
)
from mnistkit.recipe.schema._messages import _problem, annotation_members
from mnistkit.recipe.sections import RecipeBase

# The validated recipe type, for annotations: an instance of recipe_model(reg).
Recipe = RecipeBase

__all__ = [
    "DATASET_OPTIONS",
    "MLP_ONLY",
    "SHORTHAND",
    "Recipe",
    "_problem",
    "annotation_members",
    "check_recipe",
    "default_run_name",
    "load_document",
    "load_recipe",
    "load_recipe_located",
    "load_recipe_text",
    "load_with_bases",
    "merge_located",
    "recipe_model",
    "resolved_dict",
    "validate_document",
]
