"""The recipe: a validated, pure-data description of one training run (no torch here).

Data flow: ``load_recipe(path)`` → YAML with positions (:mod:`mnistkit.recipe.yamlio`) → the pydantic
model generated from the registries (so a plugin's names and parameters are validated exactly like
the built-ins) → cross-field checks → a :class:`Recipe`. Every problem is collected and raised at
once as a :class:`~mnistkit.errors.RecipeError` with ``file:line:column``.

Defaults live in the field declarations below and nowhere else; each field's docstring is its
documentation (JSON Schema, ``docs/recipe.md`` and ``mnistkit fields`` are generated from it).
"""

from __future__ import annotations

import re
import sys
import types
import typing
import weakref
from pathlib import Path
from typing import Annotated, Any, Literal, Union

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictBool,
    StrictInt,
    ValidationError,
    create_model,
)

from mnistkit.errors import Problem, RecipeError, dotted, mask_credentials, set_hint
from mnistkit.recipe.balance import CLASS_WEIGHTS, balance_problems
from mnistkit.recipe.expect import check_expectations
from mnistkit.recipe.model_check import OUTPUT_ONLY, check_model
from mnistkit.recipe.sections import (
    DataSection,
    ImageSpec,
    LogMel,
    ModelSection,
    Normalize,
    RecipeBase,
)
from mnistkit.recipe.yamlio import Located, apply_overrides, load_file, load_text
from mnistkit.registry import registries as _registries
from mnistkit.registry.core import REQUIRED, Entry, Param, PluginError, Registries
from mnistkit.registry.core import did_you_mean as _dym

# --------------------------------------------------------------------------- generated schema
_PY_TYPES: dict[str, Any] = {
    "int": StrictInt,
    "float": float,
    "bool": StrictBool,
    "str": str,
}


def _param_annotation(p: Param) -> Any:
    bounds = {k: getattr(p, k) for k in ("ge", "gt", "le", "lt") if getattr(p, k) is not None}
    if p.choices:
        ann: Any = Literal[p.choices]  # type: ignore[valid-type]
    elif p.type == "float_pair":
        item = Annotated[float, Field(**bounds)]
        ann = tuple[item, item]
    elif p.type == "int_pair":
        item = Annotated[StrictInt, Field(**bounds)]
        ann = tuple[item, item]
    elif p.type == "int_or_pair":
        item = Annotated[StrictInt, Field(**bounds)]
        ann = Union[item, tuple[item, item]]  # noqa: UP007
    elif p.type == "class_weights":
        ann = CLASS_WEIGHTS
    elif p.type == "int_list":
        ann = list[Annotated[StrictInt, Field(**bounds)]]
    else:
        ann = Annotated[_PY_TYPES[p.type], Field(**bounds)]
    return ann | None if p.nullable else ann


def _spec_model(kind: str, entry: Entry, key: str) -> type[BaseModel]:
    fields: dict[str, Any] = {key: (Literal[entry.name], Field(description=entry.description))}  # type: ignore[valid-type]
    for pname, p in entry.params.items():
        default = ... if p.default is REQUIRED else p.default
        fields[pname] = (_param_annotation(p), Field(default, description=p.doc))
    return create_model(  # type: ignore[call-overload, no-any-return]
        f"{kind}_{entry.name}",
        __config__=ConfigDict(extra="forbid", frozen=True),
        __doc__=entry.description,
        **fields,
    )


def _str_to_spec(key: str) -> Any:
    def convert(value: Any) -> Any:
        return {key: value} if isinstance(value, str) else value

    return convert


def _union(kind: str, entries: list[Entry], key: str) -> Any:
    members = tuple(_spec_model(kind, e, key) for e in entries)
    union: Any = members[0]
    if len(members) > 1:
        union = Annotated[Union[members], Field(discriminator=key)]  # noqa: UP007
    return Annotated[union, BeforeValidator(_str_to_spec(key))]


# Per Registries object (weakly: a registry dropped by reset_registries() must not hand its
# schema to a new registry that happens to reuse its id), then per registry version.
_MODEL_CACHE: weakref.WeakKeyDictionary[Registries, dict[int, type[RecipeBase]]] = weakref.WeakKeyDictionary()


def recipe_model(reg: Registries | None = None) -> type[RecipeBase]:
    """The Recipe class for the current registries (built-ins plus loaded plugins)."""
    reg = reg or _registries()
    cached = _MODEL_CACHE.setdefault(reg, {})
    if reg.version in cached:
        return cached[reg.version]

    def desc(model: type[BaseModel], name: str) -> str | None:
        return model.model_fields[name].description

    layer_entries = list(reg.layers) + list(reg.activations)
    activation = _union("activation", list(reg.activations), "name")
    model_cls = create_model(
        "Model",
        __base__=ModelSection,
        activation=(
            activation,
            Field("relu", validate_default=True, description=desc(ModelSection, "activation")),
        ),
        layers=(
            list[_union("layer", layer_entries, "type")] | None,
            Field(None, min_length=1, description=desc(ModelSection, "layers")),
        ),
    )
    data_fields: dict[str, Any] = {
        "dataset": (
            Literal[tuple(reg.datasets.names())],
            Field(description=desc(DataSection, "dataset")),
        )
    }
    if len(reg.augmentations):
        data_fields["augment"] = (
            list[_union("augmentation", list(reg.augmentations), "type")],
            Field([], description=desc(DataSection, "augment")),
        )
    data_cls = create_model("Data", __base__=DataSection, **data_fields)  # type: ignore[call-overload]
    recipe_cls = create_model(
        "Recipe",
        __base__=RecipeBase,
        data=(data_cls, Field(description=desc(RecipeBase, "data"))),
        model=(model_cls, Field(description=desc(RecipeBase, "model"))),
        loss=(
            _union("loss", list(reg.losses), "name"),
            Field("cross_entropy", validate_default=True, description=desc(RecipeBase, "loss")),
        ),
        optimizer=(
            _union("optimizer", list(reg.optimizers), "name"),
            Field("adam", validate_default=True, description=desc(RecipeBase, "optimizer")),
        ),
        scheduler=(
            _union("scheduler", list(reg.schedulers), "name") | None,
            Field(None, description=desc(RecipeBase, "scheduler")),
        ),
    )
    cached[reg.version] = recipe_cls
    return recipe_cls


# The validated recipe type, for annotations: an instance of recipe_model(reg).
Recipe = RecipeBase


# ------------------------------------------------------------------------------- loading
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
    cls = recipe_model(reg)
    data = dict(doc.data)
    if data.get("name") is None:
        data["name"] = default_run_name(default_name)
    try:
        recipe = cls.model_validate(data)
    except ValidationError as exc:
        problems = [_problem(err, doc, cls) for err in exc.errors()]
        raise RecipeError(problems + _checks_on_what_validated(exc, data, cls, reg, doc)) from None
    recipe, problems = check_recipe(recipe, reg, doc)
    if problems:
        raise RecipeError(problems)
    return recipe


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


# ------------------------------------------------------------------------ error translation
def _data_path(data: Any, loc: tuple[Any, ...]) -> tuple[Any, ...]:
    """Map a pydantic error location onto the YAML document: drop discriminator tags."""
    out: list[Any] = []
    cur = data
    for part in loc:
        if isinstance(cur, dict) and part in cur:
            out.append(part)
            cur = cur[part]
        elif isinstance(cur, list) and isinstance(part, int) and 0 <= part < len(cur):
            out.append(part)
            cur = cur[part]
        elif isinstance(cur, dict) and part in (cur.get("name"), cur.get("type")):
            continue  # the tag of a discriminated union
        elif isinstance(cur, str) and part == cur:
            continue  # shorthand 'relu' for {name: relu}
        else:
            out.append(part)
            cur = None
    return tuple(out)


def annotation_members(tp: Any) -> list[Any]:
    """Concrete member types of an annotation (through Annotated, Optional, Union)."""
    origin = typing.get_origin(tp)
    if origin is Annotated:
        return annotation_members(typing.get_args(tp)[0])
    if origin in (Union, types.UnionType):
        return [m for a in typing.get_args(tp) for m in annotation_members(a)]
    return [tp]


def _models_at(cls: type[BaseModel], loc: tuple[Any, ...]) -> list[type[BaseModel]]:
    """The model classes found at ``loc`` (a pydantic location, union tags included)."""
    candidates: list[Any] = [cls]
    for part in loc:
        nxt: list[Any] = []
        for tp in candidates:
            for m in annotation_members(tp):
                if isinstance(m, type) and issubclass(m, BaseModel):
                    if part in m.model_fields:
                        nxt.append(m.model_fields[part].annotation)
                    else:  # discriminated union: `part` is the tag
                        for f in m.model_fields.values():
                            lit = typing.get_args(f.annotation)
                            if typing.get_origin(f.annotation) is Literal and part in lit:
                                nxt.append(m)
                                break
                elif typing.get_origin(m) is list and isinstance(part, int):
                    nxt.append(typing.get_args(m)[0])
                elif typing.get_origin(m) is dict:  # e.g. a sweep's params: {path: spec}
                    nxt.append(typing.get_args(m)[1])
        candidates = nxt
    return [
        m
        for tp in candidates
        for m in annotation_members(tp)
        if isinstance(m, type) and issubclass(m, BaseModel)
    ]


def _allowed_keys(cls: type[BaseModel], loc: tuple[Any, ...]) -> list[str]:
    """Field names of the model found at ``loc``."""
    names: list[str] = []
    for m in _models_at(cls, loc):
        names += [n for n in m.model_fields if n not in names]
    return names


_QUOTED = re.compile(r"'([^']*)'")


def _problem(err: Any, doc: Located, cls: type[BaseModel]) -> Problem:
    loc = tuple(err["loc"])
    path = _data_path(doc.data, loc)
    field = dotted(path)
    kind = err["type"]
    ctx = err.get("ctx") or {}
    if kind == "missing":
        parent = path[:-1]
        allowed = _field_doc(cls, loc)
        return Problem(
            doc.where(parent, key=True),
            dotted(parent) or "(top level)",
            f"missing required key {path[-1]!r}",
            allowed,
        )
    if kind == "extra_forbidden":
        allowed = _allowed_keys(cls, loc[:-1])
        close = _dym(str(loc[-1]), allowed)
        if close is None:  # a real key at another level (indentation), e.g. batch_size at the top
            elsewhere = [k for k in _section_keys(RecipeBase) if k.rsplit(".", 1)[-1] == str(loc[-1])]
            if elsewhere:
                close = " or ".join(repr(k) for k in elsewhere)
                close += " (it belongs in another section: check its indentation)"
        hint = (f"did you mean {close}? " if close else "") + f"allowed keys: {', '.join(allowed)}"
        return Problem(doc.where(path, key=True), field, f"unknown key {path[-1]!r}", hint)
    if kind == "union_tag_invalid":
        expected = _QUOTED.findall(str(ctx.get("expected_tags", "")))
        tag = ctx.get("tag")
        what = str(ctx.get("discriminator", "name")).strip("'")
        close = _dym(str(tag), expected)
        hint = (f"did you mean {close}? " if close else "") + f"allowed: {', '.join(expected)}"
        section = field.split(".")[-1].split("[")[0] or "value"
        section = {"layers": "layer", "augment": "augmentation"}.get(section, section)  # one item of the list
        # Point at the name itself ({name: adamm} -> adamm), not at the start of its mapping.
        where = doc.where((*path, what))
        return Problem(where, field, f"unknown {section} {what} {tag!r}", hint)
    if kind == "union_tag_not_found":
        what = str(ctx.get("discriminator", "name")).strip("'")
        return Problem(
            doc.where(path),
            field,
            f"missing key {what!r} (which one to use)",
            f"e.g. {{{what}: ...}}; see `mnistkit list`",
        )
    if kind == "literal_error":
        expected = _QUOTED.findall(str(ctx.get("expected", "")))
        got = err.get("input")
        close = _dym(str(got), expected)
        hint = (f"did you mean {close}? " if close else "") + f"allowed: {', '.join(expected)}"
        return Problem(doc.where(path), field, f"{got!r} is not allowed", hint)
    msg = err["msg"]
    got = err.get("input")
    if not isinstance(got, dict | list) or len(repr(got)) < 60:
        msg += f" (got {mask_credentials(repr(got))})"  # a URI's password is never shown
    return Problem(doc.where(path), field, msg, _field_doc(cls, loc))


def _section_keys(cls: type[BaseModel], prefix: str = "") -> list[str]:
    """Every dotted key of the recipe's sections (``data.batch_size``, ``train.early_stopping.patience``)."""
    out: list[str] = []
    for name, info in cls.model_fields.items():
        key = f"{prefix}{name}"
        out.append(key)
        for member in annotation_members(info.annotation):
            if isinstance(member, type) and issubclass(member, BaseModel):
                out += _section_keys(member, f"{key}.")
    return out


def _field_doc(cls: type[BaseModel], loc: tuple[Any, ...]) -> str:
    """The field's docstring (or a registry parameter's doc), as a reminder of what it is for."""
    for m in _models_at(cls, loc[:-1]):
        if loc and loc[-1] in m.model_fields:
            d = m.model_fields[loc[-1]].description
            if d:
                return " ".join(d.split())
    return ""


# --------------------------------------------------------------------- cross-field checks


def check_recipe(
    recipe: RecipeBase, reg: Registries, doc: Located | None = None
) -> tuple[RecipeBase, list[Problem]]:
    """Checks that span fields. Returns the recipe with context-dependent defaults filled in."""

    def where(*loc: Any, key: bool = False) -> str:
        return doc.where(tuple(loc), key=key) if doc else "<recipe>"

    problems: list[Problem] = []
    m = recipe.model
    loss_entry = reg.losses.get(recipe.loss.name)
    expects = loss_entry.meta.get("expects", "logits")

    if (m.hidden is None) == (m.layers is None):
        problems.append(
            Problem(
                where("model", key=True),
                "model",
                "give exactly one of 'hidden' (MLP shorthand) or 'layers'",
                "hidden: [512, 256] builds an MLP; layers: [...] any network",
            )
        )
    if m.output_activation is not None:
        names = [*reg.activations.names(), *OUTPUT_ONLY]
        oa = m.output_activation
        if oa not in names:
            close = _dym(oa, names)
            problems.append(
                Problem(
                    where("model", "output_activation"),
                    "model.output_activation",
                    f"unknown output activation {oa!r}",
                    (f"did you mean {close}? " if close else "") + f"allowed: {', '.join(names)}",
                )
            )
        elif expects == "logits":
            problems.append(
                _logits_problem(
                    where("model", "output_activation"),
                    "model.output_activation",
                    oa,
                    recipe.loss.name,
                )
            )
        elif oa != "log_softmax":
            problems.append(
                Problem(
                    where("model", "output_activation"),
                    "model.output_activation",
                    f"{oa!r} cannot feed {recipe.loss.name}: it expects log-probabilities",
                    "use output_activation: log_softmax (or leave it unset: it is added)",
                )
            )
    if m.layers:
        last = m.layers[-1]
        last_type = getattr(last, "type", None)
        is_act = last_type in reg.activations or last_type in OUTPUT_ONLY
        if expects == "logits" and is_act:
            i = len(m.layers) - 1
            problems.append(
                _logits_problem(
                    where("model", "layers", i),
                    f"model.layers[{i}]",
                    str(last_type),
                    recipe.loss.name,
                    in_list=True,
                )
            )

    if m.layers is not None:
        for key in MLP_ONLY:
            if key in m.model_fields_set:
                problems.append(
                    Problem(
                        where("model", key, key=True),
                        f"model.{key}",
                        f"model.{key} applies to the MLP shorthand (model.hidden) and would be "
                        "ignored next to model.layers",
                        "put it in the layer list instead, e.g. {type: relu} or {type: dropout, p: 0.2} "
                        "between layers, or remove the key",
                    )
                )

    kind = reg.datasets.get(recipe.data.dataset).meta.get("kind")
    data = recipe.data
    if data.num_workers is not None and data.loader == "memory":
        problems.append(
            Problem(
                where("data", "num_workers", key=True),
                "data.num_workers",
                "num_workers applies to loader: dataloader; the memory loader has no workers",
                set_hint("data.loader", "dataloader") + ", or remove num_workers",
            )
        )
    reads = _dataset_reads(recipe, reg)
    if reads is not None:
        for key in DATASET_OPTIONS:
            if key in data.model_fields_set and key not in reads:
                problems.append(
                    Problem(
                        where("data", key, key=True),
                        f"data.{key}",
                        f"dataset {data.dataset!r} does not use data.{key}: it would be ignored",
                        "remove the key (datasets that use it: "
                        + ", ".join(
                            n
                            for n in reg.datasets.names()
                            if key in (reg.datasets.get(n).meta.get("reads") or ())
                        )
                        + ")",
                    )
                )
    if kind == "audio" and data.features is None:
        data = data.model_copy(update={"features": LogMel()})
    if reads is not None and "image" in reads and data.image is None:
        data = data.model_copy(update={"image": ImageSpec()})
    if kind != "audio" and data.features is not None:
        problems.append(
            Problem(
                where("data", "features", key=True),
                "data.features",
                f"features apply to audio datasets; {data.dataset!r} is an image dataset",
                "remove data.features",
            )
        )
    if isinstance(data.normalize, Normalize) and len(data.normalize.mean) != len(data.normalize.std):
        problems.append(
            Problem(
                where("data", "normalize"),
                "data.normalize",
                "mean and std must have the same length (one value per channel)",
            )
        )

    for i, aug in enumerate(data.augment):
        for pname in reg.augmentations.get(aug.type).meta.get("ranges", ()):
            lo, hi = getattr(aug, pname)
            if lo > hi:
                problems.append(
                    Problem(
                        where("data", "augment", i, pname),
                        f"data.augment[{i}].{pname}",
                        f"[{lo:g}, {hi:g}] is a [low, high] range: low must not exceed high",
                        f"write [{hi:g}, {lo:g}]",
                    )
                )

    opt = recipe.optimizer
    if getattr(opt, "nesterov", False) and getattr(opt, "momentum", 0) <= 0:
        problems.append(
            Problem(
                where("optimizer", "nesterov"),
                "optimizer.nesterov",
                "Nesterov momentum needs momentum > 0",
                set_hint("optimizer.momentum", "0.9"),
            )
        )

    has_val = data.val_split > 0
    t = recipe.train
    for loc, metric in (
        (("train", "best_metric"), t.best_metric),
        (
            ("train", "early_stopping", "metric"),
            t.early_stopping.metric if t.early_stopping else None,
        ),
        (("scheduler", "metric"), getattr(recipe.scheduler, "metric", None)),
    ):
        if metric and metric.startswith("val_") and not has_val:
            problems.append(
                Problem(
                    where(*loc),
                    dotted(loc),
                    f"{metric} needs a validation split",
                    set_hint("data.val_split", "0.1") + ", or monitor a test_* metric",
                )
            )
    problems += balance_problems(recipe, reg, where)
    problems += check_expectations(recipe, where)
    updated = recipe.model_copy(update={"data": data}) if data is not recipe.data else recipe
    if (m.hidden is None) != (m.layers is None):
        # Layer shapes, statically (pure Python, no torch): a layer that cannot take what the
        # previous one produces, or a model whose output is not one logit per class.

        problems += check_model(updated, reg, lambda loc, key: where(*loc, key=key))[0]
    return updated, problems


def _logits_problem(where: str, field: str, act: str, loss: str, in_list: bool = False) -> Problem:
    fix = "Remove it, or use loss: nll (log_softmax is then added for you)."
    if in_list:
        # A list that ends in an activation is ambiguous (hidden activation before an implied head,
        # or an output activation?), so it is refused rather than guessed.
        fix = (
            "Remove it (a list that ends in any other layer gets a linear head to the class "
            "count added), or use loss: nll."
        )
    return Problem(
        where,
        field,
        f"{act!r} after the last layer cannot be used with loss {loss!r}",
        f"{loss} applies log_softmax itself (CrossEntropyLoss = log_softmax + NLLLoss), so the last "
        f"layer must output raw logits: an activation there squashes them and a softmax applies "
        f"it twice. {fix}",
    )


def resolved_dict(recipe: RecipeBase, reg: Registries | None = None) -> dict[str, Any]:
    """The fully resolved recipe as plain data (every default spelled out), re-runnable as is.

    Keys that do not apply to this recipe are left out rather than spelled out, because writing
    them is an error (:func:`check_recipe`): the MLP shorthand's ``activation``/``dropout`` next
    to ``model.layers``, and data options the dataset declares it does not read.
    """
    out = recipe.model_dump(mode="json")
    out.pop("base", None)  # resolved: complete in itself, whatever it was built on
    if out.get("seeds") is None:
        out.pop("seeds", None)  # one run: nothing to say (a group's runs each have their seed)
    if recipe.model.layers is not None:
        for key in MLP_ONLY:
            out["model"].pop(key, None)
    reads = _dataset_reads(recipe, reg or _registries())
    if reads is not None:
        for key in DATASET_OPTIONS:
            if key not in reads:
                out["data"].pop(key, None)
    return out


#: Model keys that belong to the MLP shorthand (``model.hidden``) only.
MLP_ONLY = ("activation", "dropout")
#: Data keys only some dataset loaders read; each dataset declares the ones it reads
#: (``reads`` meta in its registry entry; a plugin dataset without it is not checked).
DATASET_OPTIONS = ("skip_bad_files", "test_fraction", "image", "cache")


def _readers(reg: Registries, key: str) -> list[str]:
    return [n for n in reg.datasets.names() if key in (reg.datasets.get(n).meta.get("reads") or ())]


def _dataset_reads(recipe: RecipeBase, reg: Registries) -> tuple[str, ...] | None:
    name = recipe.data.dataset
    if name not in reg.datasets:
        return None
    reads = reg.datasets.get(name).meta.get("reads")
    return None if reads is None else tuple(reads)
