"""Pydantic's validation errors as :class:`~mnistkit.errors.Problem`s: the YAML position
(file:line:col), the field, allowed keys and values, did-you-mean, the field's own doc."""

from __future__ import annotations

import re
import types
import typing
from typing import Annotated, Any, Literal, Union

from pydantic import (
    BaseModel,
)

from mnistkit.errors import Problem, dotted, mask_credentials
from mnistkit.recipe.sections import (
    RecipeBase,
)
from mnistkit.recipe.yamlio import Located
from mnistkit.registry.core import did_you_mean as _dym


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
