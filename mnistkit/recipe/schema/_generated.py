"""The recipe's pydantic model, generated from the registries: one model per registry entry
(its parameters as fields), discriminated unions of them by ``name``/``type``."""

from __future__ import annotations

import weakref
from dataclasses import dataclass
from typing import Annotated, Any, Literal, Union

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictBool,
    StrictInt,
    create_model,
)

from mnistkit.recipe.balance import CLASS_WEIGHTS
from mnistkit.recipe.sections import (
    DataSection,
    ModelSection,
    RecipeBase,
)
from mnistkit.registry import registries as _registries
from mnistkit.registry.core import REQUIRED, Entry, Param, Registries

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


def _spec_model(reg: Registries, kind: str, entry: Entry, key: str) -> type[BaseModel]:
    """The model of one registry entry: its name as the tag, its parameters as fields. Built once
    per registry version, so the full model and the per-recipe ones share it (same class)."""
    cache_key = (reg.version, "entry", kind, entry.name)
    cached = _MODEL_CACHE.setdefault(reg, {})
    if cache_key in cached:
        return cached[cache_key]
    fields: dict[str, Any] = {key: (Literal[entry.name], Field(description=entry.description))}  # type: ignore[valid-type]
    for pname, p in entry.params.items():
        default = ... if p.default is REQUIRED else p.default
        fields[pname] = (_param_annotation(p), Field(default, description=p.doc))
    model: type[BaseModel] = create_model(  # type: ignore[call-overload]
        f"{kind}_{entry.name}",
        __config__=ConfigDict(extra="forbid", frozen=True),
        __doc__=entry.description,
        **fields,
    )
    cached[cache_key] = model
    return model


def _str_to_spec(key: str) -> Any:
    def convert(value: Any) -> Any:
        return {key: value} if isinstance(value, str) else value

    return convert


def _union(reg: Registries, kind: str, entries: list[Entry], key: str) -> Any:
    if not entries:  # a per-recipe model where the recipe has no item here: nothing to validate
        return Any
    members = tuple(_spec_model(reg, kind, e, key) for e in entries)
    union: Any = members[0]
    if len(members) > 1:
        union = Annotated[Union[members], Field(discriminator=key)]  # noqa: UP007
    return Annotated[union, BeforeValidator(_str_to_spec(key))]


# Per Registries object (weakly: a registry dropped by reset_registries() must not hand its
# schema to a new registry that happens to reuse its id), then per registry version and what
# was built: the full Recipe class, a per-recipe one, one registry entry's model.
_MODEL_CACHE: weakref.WeakKeyDictionary[Registries, dict[tuple[Any, ...], Any]] = weakref.WeakKeyDictionary()


@dataclass(frozen=True)
class _Place:
    """A recipe key whose value is one or more registry entries (a discriminated union)."""

    section: str | None  # None: a top-level key
    field: str
    kind: str  # the generated models' name prefix (optimizer_sgd)
    key: str  # the tag: name or type
    is_list: bool

    def entries(self, reg: Registries) -> list[Entry]:
        if self.kind == "layer":  # a layer list may hold activations too ({type: relu})
            return list(reg.layers) + list(reg.activations)
        return list(getattr(reg, _REGISTRY[self.kind]))

    def default(self) -> Any:
        base = {None: RecipeBase, "model": ModelSection, "data": DataSection}[self.section]
        return base.model_fields[self.field].default


_REGISTRY = {
    "activation": "activations",
    "loss": "losses",
    "optimizer": "optimizers",
    "scheduler": "schedulers",
    "augmentation": "augmentations",
}
_PLACES = (
    _Place("model", "activation", "activation", "name", is_list=False),
    _Place("model", "layers", "layer", "type", is_list=True),
    _Place("data", "augment", "augmentation", "type", is_list=True),
    _Place(None, "loss", "loss", "name", is_list=False),
    _Place(None, "optimizer", "optimizer", "name", is_list=False),
    _Place(None, "scheduler", "scheduler", "name", is_list=False),
)


def recipe_model(reg: Registries | None = None) -> type[RecipeBase]:
    """The Recipe class for the current registries (built-ins plus loaded plugins): every entry
    of every registry. Documentation, JSON Schema and error messages are made from it."""
    reg = reg or _registries()
    return _generate(reg, {place: place.entries(reg) for place in _PLACES})


def validation_model(reg: Registries, data: dict[str, Any]) -> type[RecipeBase] | None:
    """The Recipe class for this recipe: :func:`recipe_model` with only the registry entries
    ``data`` names (and the defaults it leaves in place), so that a valid recipe is validated
    without building a model for each of the ~50 entries it does not use. A recipe validates
    against it exactly when it validates against the full model, with the same values: a
    discriminated union picks the one member its tag names. None where the data is not plainly
    well formed (a name that is not a registry's, a section that is not a mapping): the full
    model then validates, and its errors are the ones reported."""
    chosen: dict[_Place, list[Entry]] = {}
    for place in _PLACES:
        names = _names_at(place, data)
        if names is None:
            return None
        by_name = {e.name: e for e in reversed(place.entries(reg))}  # the first of a name wins
        if any(n not in by_name for n in names):
            return None
        chosen[place] = [by_name[n] for n in sorted(set(names))]
    return _generate(reg, chosen)


def _names_at(place: _Place, data: dict[str, Any]) -> list[str] | None:
    """The entry names the recipe selects at ``place``; None when it is not a plain name or list."""
    section = data if place.section is None else data.get(place.section)
    if not isinstance(section, dict):
        return None
    value = section.get(place.field, place.default())
    if value is None and (place.is_list or place.default() is None):  # nullable: nothing named
        return []
    items = value if place.is_list and isinstance(value, list) else [value]
    if place.is_list and not isinstance(value, list):
        return None
    names = [item.get(place.key) if isinstance(item, dict) else item for item in items]
    return names if all(isinstance(n, str) for n in names) else None


def _generate(reg: Registries, chosen: dict[_Place, list[Entry]]) -> type[RecipeBase]:
    """The Recipe class whose registry-backed keys accept the ``chosen`` entries (cached)."""
    cache_key = (reg.version, "recipe", *((p.field, *(e.name for e in chosen[p])) for p in _PLACES))
    cached = _MODEL_CACHE.setdefault(reg, {})
    if cache_key in cached:
        return cached[cache_key]  # type: ignore[no-any-return]

    def union(field: str) -> Any:
        place = next(p for p in _PLACES if p.field == field)
        return _union(reg, place.kind, chosen[place], place.key)

    def field(model: type[BaseModel], name: str, **kwargs: Any) -> Any:
        info = model.model_fields[name]  # default and description as the section declares them
        default = ... if info.is_required() else info.default
        return Field(default, description=info.description, **kwargs)

    model_cls = create_model(
        "Model",
        __base__=ModelSection,
        activation=(union("activation"), field(ModelSection, "activation", validate_default=True)),
        layers=(list[union("layers")] | None, field(ModelSection, "layers", min_length=1)),  # type: ignore[misc]
    )
    data_fields: dict[str, Any] = {
        "dataset": (Literal[tuple(reg.datasets.names())], field(DataSection, "dataset")),
    }
    if len(reg.augmentations):
        data_fields["augment"] = (list[union("augment")], field(DataSection, "augment"))  # type: ignore[misc]
    data_cls = create_model("Data", __base__=DataSection, **data_fields)  # type: ignore[call-overload]
    recipe_cls = create_model(
        "Recipe",
        __base__=RecipeBase,
        data=(data_cls, field(RecipeBase, "data")),
        model=(model_cls, field(RecipeBase, "model")),
        loss=(union("loss"), field(RecipeBase, "loss", validate_default=True)),
        optimizer=(union("optimizer"), field(RecipeBase, "optimizer", validate_default=True)),
        scheduler=(union("scheduler") | None, field(RecipeBase, "scheduler")),
    )
    cached[cache_key] = recipe_cls
    return recipe_cls
