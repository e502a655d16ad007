"""Registries: the names a recipe may use, each mapped to a lazy ``"module:attr"`` target.

``core`` holds the machinery (``Registry``, ``Entry``, ``Param``, plugin loading); ``builtins`` and
``layer_builtins`` declare mnistkit's own entries as data. ``registries()`` is the process-wide set:
the built-ins plus installed entry-point plugins, filled on first use (never at import time).
"""

from __future__ import annotations

from mnistkit.registry.builtins import register_builtins
from mnistkit.registry.core import (
    PARAM_TYPES,
    REQUIRED,
    Entry,
    Param,
    PluginError,
    Registries,
    Registry,
    UnknownName,
    did_you_mean,
)

__all__ = [
    "PARAM_TYPES",
    "REQUIRED",
    "ENTRY_POINT_GROUP",
    "Entry",
    "Param",
    "PluginError",
    "Registries",
    "Registry",
    "UnknownName",
    "did_you_mean",
    "registries",
    "reset_registries",
]

_REGISTRIES: Registries | None = None
ENTRY_POINT_GROUP = "mnistkit.plugins"


def registries() -> Registries:
    """The process-wide registries: built-ins plus installed entry-point plugins."""
    global _REGISTRIES
    if _REGISTRIES is None:
        reg = Registries()
        register_builtins(reg)
        _load_entry_points(reg)
        _REGISTRIES = reg
    return _REGISTRIES


def reset_registries() -> None:
    """Forget plugins (tests use this to start from the built-ins)."""
    global _REGISTRIES
    _REGISTRIES = None


def _load_entry_points(reg: Registries) -> None:
    from importlib.metadata import entry_points

    for ep in entry_points(group=ENTRY_POINT_GROUP):
        reg.load_plugin(ep.value.partition(":")[0])
