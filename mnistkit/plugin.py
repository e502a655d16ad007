"""The stable API for plugin authors (docs/extending.md): import from here, not from the modules
behind it, which may move.

Nothing here imports torch, so a plugin's ``register`` module that imports only this keeps
``mnistkit validate``, ``list``, ``schema`` and ``fields`` instant.
"""

from __future__ import annotations

from mnistkit.data.sources import DataContext
from mnistkit.data.types import LoadedData, Split
from mnistkit.errors import DataError
from mnistkit.layers.shapes import ShapeError
from mnistkit.registry.core import REQUIRED, Param, Registries

__all__ = [
    "REQUIRED",
    "DataContext",
    "DataError",
    "LoadedData",
    "Param",
    "Registries",
    "ShapeError",
    "Split",
]
