"""Reference documentation generated from the code: ``mnistkit fields`` and ``docs/recipe.md``.

Nothing here is written twice: keys, types, defaults and descriptions come from the recipe's
pydantic fields (the docstrings under each field in :mod:`mnistkit.recipe.schema`); names and
parameters of activations, losses, optimizers, schedulers, datasets and layers come from the
registries. No torch import.

Regenerate the Markdown reference after changing a field or a registry entry::

    python -m mnistkit.recipe.reference > docs/recipe.md

(``tests/test_cli.py`` fails while ``docs/recipe.md`` is out of date.)
"""

from __future__ import annotations

import json
import re
import types
import typing
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from mnistkit.recipe.schema import annotation_members, recipe_model
from mnistkit.recipe.sections import Section
from mnistkit.registry.core import Entry, Registries, Registry

_TAG_KEYS = ("name", "type")  # the key that picks a registry entry: {name: sgd}, {type: linear}


# ------------------------------------------------------------------------------- the key model
@dataclass
class Variant:
    """One registry entry as a recipe spells it: ``{name: sgd, lr: ...}``."""

    tag: str  # "name" or "type"
    name: str
    description: str
    params: list[Key] = field(default_factory=list)


@dataclass
class Key:
    """One recipe key: dotted path (what ``--set`` takes), type, default and documentation."""

    path: str
    type: str
    default: str
    doc: str
    section: type[BaseModel] | None = None  # the key holds a section with keys of its own
    only_section: bool = False  # ... and nothing else (besides null)
    variants: list[Variant] | None = None  # the key names a registry entry
    registry: str | None = None  # which registry: "optimizers", "layers", ...


def recipe_keys(reg: Registries | None = None) -> list[Key]:
    """Every key of the recipe schema for ``reg``, depth first, in declaration order."""
    return list(_walk(recipe_model(reg), ""))


def _walk(model: type[BaseModel], prefix: str) -> Iterator[Key]:
    for name, info in model.model_fields.items():
        path = prefix + name
        variants = _registry_variants(info.annotation, path)
        section = _section_of(info.annotation) if variants is None else None
        key = Key(
            path=path,
            type=_registry_type(info, variants) if variants else type_text(info.annotation, info.metadata),
            default=default_text(info),
            doc=_clean(info.description),
            section=section,
            only_section=section is not None
            and all(_is_model(m) or m is type(None) for m in annotation_members(info.annotation)),
            variants=variants,
            registry=_REGISTRY_OF.get(path.split(".")[-1]) if variants else None,
        )
        yield key
        if section is not None:
            yield from _walk(section, path + ".")


_REGISTRY_OF = {
    "activation": "activations",
    "loss": "losses",
    "optimizer": "optimizers",
    "scheduler": "schedulers",
    "layers": "layers",
}


def _is_model(tp: Any) -> bool:
    return isinstance(tp, type) and issubclass(tp, BaseModel)


def _section_of(tp: Any) -> type[BaseModel] | None:
    models = [m for m in annotation_members(tp) if _is_model(m)]
    return models[0] if len(models) == 1 else None


def _tag_of(model: type[BaseModel]) -> tuple[str, str] | None:
    """``("name", "sgd")`` for a registry spec model (required single-value Literal tag)."""
    for key in _TAG_KEYS:
        info = model.model_fields.get(key)
        if info is None or not info.is_required():
            continue
        if typing.get_origin(info.annotation) is Literal and len(typing.get_args(info.annotation)) == 1:
            return key, str(typing.get_args(info.annotation)[0])
    return None


def _registry_variants(tp: Any, path: str) -> list[Variant] | None:
    """The registry entries a field accepts, or None if it is not a registry field."""
    members = [m for m in annotation_members(tp) if m is not type(None)]
    item_prefix = path
    if len(members) == 1 and typing.get_origin(members[0]) is list:  # model.layers
        members = [m for m in annotation_members(typing.get_args(members[0])[0]) if m is not type(None)]
        item_prefix = path + "[i]"
    if not members or not all(_is_model(m) and _tag_of(m) for m in members):
        return None
    variants = []
    for m in members:
        tag, name = _tag_of(m)  # type: ignore[misc]
        params = [
            Key(
                path=f"{item_prefix}.{pname}",
                type=type_text(info.annotation, info.metadata),
                default=default_text(info),
                doc=_clean(info.description),
            )
            for pname, info in m.model_fields.items()
            if pname != tag
        ]
        description = _clean(m.model_fields[tag].description or m.__doc__)
        variants.append(Variant(tag, name, description, params))
    return variants


def _registry_type(info: FieldInfo, variants: list[Variant]) -> str:
    tag = variants[0].tag
    names = ", ".join(v.name for v in variants)
    nullable = type(None) in annotation_members(info.annotation)
    if typing.get_origin(annotation_members(info.annotation)[0]) is list:
        text = f"list of {{{tag}: ..., <parameters>}}; {tag}: one of {names}"
    else:
        text = f"a {tag}, or {{{tag}: ..., <parameters>}}; one of {names}"
    return text + (", or null" if nullable else "")


# ------------------------------------------------------------------------------ type rendering
_BOUNDS = (("ge", "≥"), ("gt", ">"), ("le", "≤"), ("lt", "<"))
_BASE_NAMES = {int: "int", float: "float", bool: "bool", str: "text"}


def _flatten_metadata(metadata: Any) -> list[Any]:
    out: list[Any] = []
    for m in metadata or ():
        if isinstance(m, FieldInfo):
            out += _flatten_metadata(m.metadata)
        else:
            out.append(m)
    return out


def _constraints(metadata: list[Any], unit: str) -> list[str]:
    out = []
    for m in metadata:
        for attr, sym in _BOUNDS:
            value = getattr(m, attr, None)
            if value is not None:
                out.append(f"{sym} {value:g}" if isinstance(value, int | float) else f"{sym} {value}")
        if getattr(m, "min_length", None) is not None:
            n = m.min_length
            out.append(f"at least {n} {unit}{'s' if n != 1 else ''}")
        if getattr(m, "max_length", None) is not None:
            n = m.max_length
            out.append(f"at most {n} {unit}{'s' if n != 1 else ''}")
        if getattr(m, "pattern", None):
            out.append(f"matching {m.pattern}")
    return out


def type_text(tp: Any, metadata: Any = ()) -> str:
    """Human text for an annotation: ``int ≥ 1``, ``one of auto, none``, ``list of int``..."""
    meta = _flatten_metadata(metadata)
    origin = typing.get_origin(tp)
    if origin is Annotated:
        base, *extra = typing.get_args(tp)
        return type_text(base, [*_flatten_metadata(extra), *meta])
    if origin in (Union, types.UnionType):
        args = typing.get_args(tp)
        texts = [type_text(a, meta) for a in args if a is not type(None)]
        if type(None) in args:
            texts.append("null")
        return " or ".join(texts)
    if origin is Literal:
        values = [str(v) for v in typing.get_args(tp)]
        return "one of " + ", ".join(values) if len(values) > 1 else values[0]
    if origin is list:
        (item,) = typing.get_args(tp)
        cons = _constraints(meta, "item")
        return f"list of {type_text(item)}" + (f" ({', '.join(cons)})" if cons else "")
    if origin is tuple:
        args = typing.get_args(tp)
        if len(args) == 2 and args[0] == args[1]:
            return f"pair [{type_text(args[0])}, {type_text(args[1])}]"
        return "[" + ", ".join(type_text(a) for a in args) + "]"
    if _is_model(tp):
        return "{" + ", ".join(tp.model_fields) + "}"
    if tp is Any:
        return "any"
    name = _BASE_NAMES.get(tp, getattr(tp, "__name__", str(tp)))
    if tp is str:
        cons = _constraints(meta, "character")
        return name + (f" ({', '.join(cons)})" if cons else "")
    cons = _constraints(meta, "item")
    return name + (" " + ", ".join(cons) if cons else "")


def default_text(info: FieldInfo) -> str:
    """The default as YAML would spell it; "required" when there is none."""
    if info.is_required():
        return "required"
    value = info.get_default(call_default_factory=True)
    if value is PydanticUndefined:
        return "required"
    if isinstance(value, BaseModel):
        return "(section)"
    if isinstance(value, str):
        return value
    if isinstance(value, tuple):
        value = list(value)
    return json.dumps(value)


def _clean(text: str | None) -> str:
    return " ".join((text or "").split())


def _section_doc(model: type[BaseModel]) -> str:
    for cls in model.__mro__:  # generated classes (create_model) inherit the written docstring
        if cls in (Section, BaseModel):
            break
        doc = cls.__dict__.get("__doc__")
        if doc:
            return _clean(doc)
    return ""


# --------------------------------------------------------------------------- mnistkit fields
def fields_text(reg: Registries | None = None) -> str:
    """Every recipe key for ``mnistkit fields``: ``path: type = default`` and its description."""
    lines = [
        "Recipe keys: what a recipe may contain and what --set KEY=VALUE accepts",
        "(list items by index: --set model.layers.0.out_features=64).",
        "",
    ]
    for key in recipe_keys(reg):
        default = "(required)" if key.default == "required" else f"= {key.default}"
        if key.only_section:
            nullable = " (or null)" if key.type.endswith(" or null") else ""
            lines.append(f"{key.path}: section{nullable}")
        else:
            lines.append(f"{key.path}: {key.type} {default}")
        if key.doc:
            lines.append(f"    {key.doc}")
        for variant in key.variants or []:
            lines.append(f"  {variant.tag}: {variant.name} - {variant.description}")
            for p in variant.params:
                pdefault = "(required)" if p.default == "required" else f"= {p.default}"
                lines.append(f"    {p.path}: {p.type} {pdefault}")
                if p.doc:
                    lines.append(f"        {p.doc}")
    return "\n".join(lines)


# ---------------------------------------------------------------------------- docs/recipe.md
def builtin_registries() -> Registries:
    """Only mnistkit's own entries (no entry-point plugins): the documented, stable set."""
    from mnistkit.registry.builtins import register_builtins

    reg = Registries()
    register_builtins(reg)
    return reg


_CODE_SPAN = re.compile(r"(`[^`]*`)")


_TAG_LIKE = re.compile(r"<(?=[A-Za-z/!?])")  # "<name>" would be swallowed as an HTML tag


def _md(text: str) -> str:
    """Escape a table cell: pipes everywhere, tag-like ``<`` outside `code` spans."""
    parts = _CODE_SPAN.split(text.replace("|", "\\|"))
    return "".join(p if p.startswith("`") else _TAG_LIKE.sub("\\\\<", p) for p in parts)


def _code(text: str) -> str:
    return f"`{text}`" if text else ""


def _anchor(title: str) -> str:
    return re.sub(r"[^a-z0-9 _-]", "", title.lower()).replace(" ", "-")


def recipe_reference_md(reg: Registries | None = None) -> str:
    """The complete ``docs/recipe.md``: every section and key, then the registry tables."""
    reg = reg or builtin_registries()
    keys = recipe_keys(reg)
    cls = recipe_model(reg)
    out = [
        "# Recipe reference",
        "",
        "<!-- Generated by `python -m mnistkit.recipe.reference > docs/recipe.md` from the recipe schema",
        "     (mnistkit/recipe/sections.py, mnistkit/recipe/schema/) and the registries",
        "     (mnistkit/registry/builtins.py, mnistkit/registry/layer_builtins.py).",
        "     Do not edit by hand: tests/test_cli.py checks it. -->",
        "",
        _section_doc(cls) + " A recipe is one YAML file; unknown keys are errors, and every "
        "problem is reported with its `file:line:column`. Any key can be overridden on the "
        "command line with `--set KEY=VALUE` (list items by index, e.g. "
        "`--set model.layers.0.out_features=64`); `mnistkit fields` prints this list and "
        "`mnistkit schema` the JSON Schema.",
        "",
        "Names of activations, losses, optimizers, schedulers, datasets and layers come from "
        "registries (tables at the end, or `mnistkit list`); plugins add their own "
        "(see [extending.md](extending.md)). A registry key takes a name (`optimizer: adam`) "
        "or a mapping with the name and parameters (`optimizer: {name: sgd, lr: 0.01}`).",
        "",
    ]

    def table(rows: list[Key]) -> list[str]:
        lines = ["| key | type | default | description |", "|---|---|---|---|"]
        for k in rows:
            ktype = "section, see below" if k.only_section else k.type
            if k.registry:
                title = k.registry.capitalize()
                ktype += f" (see [{title}](#{_anchor(title)}))"
            default = {"(section)": "", "required": "required"}.get(k.default, _code(k.default))
            lines.append(f"| `{k.path}` | {_md(ktype)} | {default} | {_md(k.doc)} |")
        return lines + [""]

    def children(prefix: str) -> list[Key]:
        depth = prefix.count(".") + 1 if prefix else 0
        start = prefix + "." if prefix else ""
        return [k for k in keys if k.path.startswith(start) and k.path.count(".") == depth]

    out += ["## Top level", ""] + table(children(""))
    for k in keys:
        if k.section is None:
            continue
        level = "#" * min(2 + k.path.count("."), 4)
        out += [f"{level} `{k.path}`", ""]
        doc = _section_doc(k.section)
        if doc:
            out += [_md(doc), ""]
        out += table(children(k.path))

    out += ["## Registries", ""]
    for kind, registry in reg.by_kind().items():
        out += _registry_md(kind, registry, reg)
    return "\n".join(out).rstrip() + "\n"


def _params_md(entry: Entry) -> str:
    if not entry.params:
        return "—"
    return "<br>".join(
        f"`{name}`: {_md(p.describe())}" + (f" — {_md(p.doc)}" if p.doc else "")
        for name, p in entry.params.items()
    )


#: What docs/recipe.md and `mnistkit list datasets` say about each dataset, beside its description.
DATASET_FACTS = ("input", "classes", "download")


def dataset_facts(entry: Entry) -> tuple[str, str, str]:
    """A dataset's input shape (or the recipe key that sets it), classes, and whether it can be
    downloaded: the :data:`DATASET_FACTS` of one registry entry."""
    shape = entry.meta.get("shape")
    if shape:
        shape_text = "x".join(map(str, shape))
    else:  # set by the recipe: audio by its log-mel features, images by data.image
        shape_text = "from data.features" if entry.meta.get("kind") == "audio" else "from data.image"
    classes = str(entry.meta.get("num_classes") or "from the folder")
    return shape_text, classes, "yes" if entry.meta.get("download") else "no"


def _registry_md(kind: str, registry: Registry, reg: Registries) -> list[str]:
    title = kind.capitalize()
    lines = [f"### {title}", "", f"{_md(registry.description.capitalize())}.", ""]
    if kind == "datasets":
        lines += [f"| name | description | {' | '.join(DATASET_FACTS)} |", "|---|---|---|---|---|"]
        for e in registry:
            facts = " | ".join(dataset_facts(e))
            lines.append(f"| `{e.name}` | {_md(e.description)} | {facts} |")
        return lines + [""]
    lines += ["| name | description | parameters |", "|---|---|---|"]
    for e in registry:
        lines.append(f"| `{e.name}` | {_md(e.description)} | {_params_md(e)} |")
    if kind == "layers":
        names = ", ".join(f"`{n}`" for n in reg.activations.names())
        lines += ["", f"Every activation is also a layer type (`{{type: relu}}`): {names}."]
    return lines + [""]


if __name__ == "__main__":
    print(recipe_reference_md(), end="")
