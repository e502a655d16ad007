"""Attribute docstrings as pydantic field descriptions, read with one parse of the module.

A recipe field's documentation is the docstring written under it (``docs/recipe.md``, ``mnistkit
fields``, the JSON Schema and error hints come from it). pydantic's ``use_attribute_docstrings``
would read them too, but on Python < 3.13 it finds each class's source by walking the interpreter's
frames and asking :func:`inspect.getmodule` about every one (a scan of ``sys.modules`` per frame),
then parses that class: about 20 ms of CPU for the recipe's sections, a twelfth of ``mnistkit
validate``'s start-up (issue 18, docs/performance.md). Here each module's source is parsed once
and the docstrings become ``Field(description=...)`` before pydantic collects the fields, with
pydantic's rule: a string statement right under an annotated attribute, ``inspect.cleandoc``-ed.
A field whose default is a ``Field(...)`` is refused (its description could only be added through
pydantic's private API): constraints go in the annotation, ``Annotated[type, Field(...)]``.
"""

from __future__ import annotations

import ast
import inspect
import sys
from functools import cache
from typing import Any

from pydantic import Field
from pydantic.fields import FieldInfo

_MISSING = object()


@cache
def module_docstrings(module: str) -> dict[str, dict[str, str]]:
    """``{class qualname: {attribute: docstring}}`` for every class in ``module``'s source."""
    file = getattr(sys.modules.get(module), "__file__", None)
    if file is None:
        return {}
    with open(file, encoding="utf-8") as f:
        tree = ast.parse(f.read())
    out: dict[str, dict[str, str]] = {}
    _collect(tree.body, "", out)
    return out


def _collect(body: list[ast.stmt], prefix: str, out: dict[str, dict[str, str]]) -> None:
    for node in body:
        if isinstance(node, ast.ClassDef):
            qualname = prefix + node.name
            docs: dict[str, str] = {}
            for stmt, after in zip(node.body, node.body[1:], strict=False):
                if (
                    isinstance(stmt, ast.AnnAssign)
                    and isinstance(stmt.target, ast.Name)
                    and isinstance(after, ast.Expr)
                    and isinstance(after.value, ast.Constant)
                    and isinstance(after.value.value, str)
                ):
                    docs[stmt.target.id] = inspect.cleandoc(after.value.value)
            out[qualname] = docs
            _collect(node.body, qualname + ".", out)


def docstrings_as_descriptions(cls: type[Any]) -> None:
    """Give each field declared in ``cls``'s own body the docstring under it as its description.

    Call it from ``__init_subclass__`` of a pydantic model's base: it runs after the class object
    exists and before pydantic collects its fields. Classes made elsewhere (``create_model``) have
    no source here and are left as they are.
    """
    docs = module_docstrings(cls.__module__).get(cls.__qualname__, {})
    own = cls.__dict__.get("__annotations__", {})
    for name, doc in docs.items():
        if name not in own:
            continue
        value = cls.__dict__.get(name, _MISSING)
        if isinstance(value, FieldInfo):  # its description could not be added without private API
            raise TypeError(
                f"{cls.__qualname__}.{name}: write the Field(...) in the annotation "
                f"(Annotated[type, Field(...)] = default), so that its docstring can be its description"
            )
        if value is _MISSING:
            value = Field(description=doc)
        else:
            value = Field(value, description=doc)
        setattr(cls, name, value)
