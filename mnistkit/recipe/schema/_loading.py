"""From a YAML file to a validated Recipe: bases merged, ``--set`` applied, plugins loaded,
validated, cross-field checks run; every problem collected with its file:line:col."""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Any

from pydantic import (
    ValidationError,
)

from mnistkit.errors import Problem, RecipeError
from mnistkit.recipe.schema._checks import check_recipe
from mnistkit.recipe.schema._generated import recipe_model, validation_model
from mnistkit.recipe.schema._messages import _problem
from mnistkit.recipe.sections import (
    ModelSection,
    RecipeBase,
)
from mnistkit.recipe.yamlio import Located, apply_overrides, load_file, load_text
from mnistkit.registry import registries as _registries
from mnistkit.registry.core import PluginError, Registries
from mnistkit.registry.core import did_you_mean as _dym


def load_recipe(
    path: str | Path,
    overrides: list[str] | None = None,
    reg: Registries | None = None,
) -> RecipeBase:
    """Read, override, validate: the one entry point from a YAML file to a Recipe."""
    return load_recipe_located(path, overrides, reg)[0]


def load_recipe_located(
    path: str | Path,
    overrides: list[str] | None = None,
    reg: Registries | None = None,
) -> tuple[RecipeBase, dict[str, str]]:
    """:func:`load_recipe`, and where each value was written (:meth:`Located.origins`)."""
    path = Path(path)
    doc = load_document(path, overrides)
    recipe = validate_document(doc, [], reg, default_name=path.stem, base_dir=path.parent)
    return recipe, doc.origins()


def load_document(path: str | Path, overrides: list[str] | None = None) -> Located:
    """The recipe file as data with positions: its bases merged, ``--set`` overrides applied."""
    doc = load_with_bases(Path(path))
    apply_overrides(doc, overrides or [], SHORTHAND)
    return doc


def load_with_bases(path: Path, _chain: tuple[Path, ...] = ()) -> Located:
    """Load a recipe file and, if it names a ``base:``, the recipes it builds on, merged.

    The base path is relative to the file that names it. Mappings merge key by key, deepest
    first; anything else (a list, a number, a name) replaces the base's value. A registry
    mapping whose ``name`` changes (``optimizer: {name: adam}`` over ``{name: sgd, momentum: 0.5}``)
    replaces the base's mapping instead of merging into it, since the old parameters belong to
    the old name. Every value keeps the position of the file that wrote it; cycles are refused.
    """
    doc = load_file(path)
    if not isinstance(doc.data, dict) or "base" not in doc.data:
        return doc
    ref = doc.data["base"]
    where = doc.where(("base",))
    if not isinstance(ref, str) or not ref.strip():
        raise RecipeError([Problem(where, "base", "base must be a recipe file name", "e.g. base: mlp5.yaml")])
    here = path.resolve()
    base_path = path.parent / ref  # as the user would write it (messages), resolved for the cycle check
    chain = (*_chain, here)
    if base_path.resolve() in chain:
        again = base_path.resolve()
        names = " -> ".join(p.name for p in (*chain[chain.index(again) :], again))
        raise RecipeError([Problem(where, "base", f"recipes build on each other in a cycle: {names}")])
    if not base_path.is_file():
        near = _dym(ref, sorted(p.name for p in path.parent.glob("*.y*ml") if p.resolve() != here))
        raise RecipeError(
            [
                Problem(
                    where,
                    "base",
                    f"base recipe {ref!r} not found (looked for {base_path.resolve()})",
                    (f"did you mean {near}? " if near else "")
                    + "the path is relative to the recipe that names it",
                )
            ]
        )
    return merge_located(load_with_bases(base_path, chain), doc)


def merge_located(base: Located, child: Located) -> Located:
    """``child`` over ``base`` (see :func:`load_with_bases`); positions from the file that wrote each."""
    # The run name belongs to the file: a recipe built on mlp5.yaml is not named mlp5.
    inherited = {k: v for k, v in base.data.items() if k != "name"}
    data = _deep_merge(inherited, {k: v for k, v in child.data.items() if k != "base"})
    keys = {k: v for k, v in base.keys.items() if k[:1] != ("name",)}
    values = {k: v for k, v in base.values.items() if k[:1] != ("name",)}
    for loc in [loc for loc in child.values if loc and loc[0] != "base"]:
        if not _merges_into(base.data, child.data, loc):  # replaced: the base's positions below go
            for table in (keys, values):
                for k in [k for k in table if len(k) > len(loc) and k[: len(loc)] == loc]:
                    del table[k]
    for src, dst in ((child.keys, keys), (child.values, values)):
        dst.update({k: v for k, v in src.items() if not (k and k[0] == "base")})
    return Located(data=data, source=child.source, keys=keys, values=values)


def _replaces(a: Any, b: Any) -> bool:
    if not (isinstance(a, dict) and isinstance(b, dict)):
        return True
    return "name" in a and "name" in b and a["name"] != b["name"]


def _deep_merge(a: Any, b: Any) -> Any:
    if _replaces(a, b):
        return b
    out = dict(a)
    for k, v in b.items():
        out[k] = _deep_merge(a[k], v) if k in a else v
    return out


def _merges_into(base: Any, child: Any, loc: tuple[Any, ...]) -> bool:
    """Whether the child's value at ``loc`` merges into the base's (both mappings, same name)."""
    for part in loc:
        if not (isinstance(base, dict) and isinstance(child, dict) and part in base and part in child):
            return False
        base, child = base[part], child[part]
    return not _replaces(base, child)


def load_recipe_text(
    text: str,
    source: str = "<recipe>",
    overrides: list[str] | None = None,
    reg: Registries | None = None,
) -> RecipeBase:
    return validate_document(load_text(text, source), overrides or [], reg, default_name="run")


#: Keys a recipe may write as a bare registry name (``loss: cross_entropy``) or as a mapping with
#: parameters; ``--set loss.label_smoothing=0.1`` expands the bare name. Values: the default name.
SHORTHAND: dict[tuple[str, ...], str | None] = {
    ("loss",): RecipeBase.model_fields["loss"].default,
    ("optimizer",): RecipeBase.model_fields["optimizer"].default,
    ("scheduler",): RecipeBase.model_fields["scheduler"].default,
    ("model", "activation"): ModelSection.model_fields["activation"].default,
}


def default_run_name(stem: str) -> str:
    """A valid run name from a recipe file's name: ``_draft`` -> ``draft``, ``my draft (2)`` ->
    ``my-draft-2``; ``run`` when nothing usable is left (the pattern of ``RecipeBase.name``)."""
    name = re.sub(r"[^A-Za-z0-9_.-]+", "-", stem).strip("-")
    name = re.sub(r"^[^A-Za-z0-9]+", "", name)  # must start with a letter or digit
    return name[:80].rstrip("-") or "run"


def validate_document(
    doc: Located,
    overrides: list[str],
    reg: Registries | None = None,
    *,
    default_name: str = "run",
    base_dir: Path | None = None,
) -> RecipeBase:
    apply_overrides(doc, overrides, SHORTHAND)
    if not isinstance(doc.data, dict):
        raise RecipeError(
            [
                Problem(
                    doc.where(()),
                    "",
                    f"the recipe must be a mapping of keys, not {type(doc.data).__name__}",
                )
            ]
        )
    reg = reg or _registries()
    _load_plugins(doc, reg, base_dir)
    data = dict(doc.data)
    if data.get("name") is None:
        data["name"] = default_run_name(default_name)
    recipe = _validate_with_entries_used(data, reg)
    if recipe is None:  # not valid: the full model says why, with every allowed name and key
        cls = recipe_model(reg)
        try:
            recipe = cls.model_validate(data)
        except ValidationError as exc:
            problems = [_problem(err, doc, cls) for err in exc.errors()]
            raise RecipeError(problems + _checks_on_what_validated(exc, data, cls, reg, doc)) from None
    recipe, problems = check_recipe(recipe, reg, doc)
    if problems:
        raise RecipeError(problems)
    return recipe


def _validate_with_entries_used(data: dict[str, Any], reg: Registries) -> RecipeBase | None:
    """The recipe, validated by a model of only the registry entries it names (fast: start-up of
    ``mnistkit validate`` and ``run``); None if it does not validate there."""
    cls = validation_model(reg, data)
    if cls is None:
        return None
    try:
        return cls.model_validate(data)
    except ValidationError:
        return None


def _checks_on_what_validated(
    exc: ValidationError, data: dict[str, Any], cls: type[RecipeBase], reg: Registries, doc: Located
) -> list[Problem]:
    """The cross-field problems among the sections that did validate, reported with the schema
    errors instead of after they are fixed (all mistakes at once).

    Every top-level key with a schema error falls back to its default; if the rest validates,
    the cross-field rules run on it and their problems about the untouched keys are kept.
    """
    bad = {err["loc"][0] for err in exc.errors() if err["loc"]}
    if not bad or any(cls.model_fields[k].is_required() for k in bad if k in cls.model_fields):
        return []  # a required section (data, model) is broken: nothing sound to check against
    try:
        partial = cls.model_validate({k: v for k, v in data.items() if k not in bad})
    except ValidationError:
        return []
    return [p for p in check_recipe(partial, reg, doc)[1] if p.field.split(".")[0].split("[")[0] not in bad]


def _load_plugins(doc: Located, reg: Registries, base_dir: Path | None) -> None:
    plugins = doc.data.get("plugins") or []
    if not isinstance(plugins, list):
        return  # schema validation reports the type error
    problems: list[Problem] = []
    for i, name in enumerate(plugins):
        if not isinstance(name, str):
            continue
        added = False
        if base_dir is not None and str(base_dir.resolve()) not in sys.path:
            # Like `python script.py`: a plugin module may sit next to the recipe.
            sys.path.insert(0, str(base_dir.resolve()))
            added = True
        try:
            reg.load_plugin(name)
        except ModuleNotFoundError as exc:
            problems.append(
                Problem(
                    doc.where(("plugins", i)),
                    f"plugins[{i}]",
                    f"cannot import plugin module {name!r} ({exc})",
                    "put the module next to the recipe, on PYTHONPATH, or install it",
                )
            )
        except PluginError as exc:
            problems.append(Problem(doc.where(("plugins", i)), f"plugins[{i}]", str(exc)))
        except Exception as exc:  # a plugin's own bug: report it, with its type
            problems.append(
                Problem(
                    doc.where(("plugins", i)),
                    f"plugins[{i}]",
                    f"plugin {name!r} failed while registering: {type(exc).__name__}: {exc}",
                )
            )
        finally:
            if added and not _imported_from(name, base_dir):  # type: ignore[arg-type]
                sys.path.remove(str(base_dir.resolve()))  # type: ignore[union-attr]
    if problems:
        raise RecipeError(problems)


def _imported_from(module: str, folder: Path) -> bool:
    """Whether ``module`` was imported from ``folder``: the folder then stays on sys.path, since
    the plugin's lazy targets ("my_layers:Square") may name its sibling modules there."""
    file = getattr(sys.modules.get(module), "__file__", None)
    return file is not None and Path(file).resolve().is_relative_to(folder.resolve())
