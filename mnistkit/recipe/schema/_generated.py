"""The recipe's pydantic model, generated from the registries: one model per registry entry
(its parameters as fields), discriminated unions of them by ``name``/``type``."""

from __future__ import annotations

import weakref
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
