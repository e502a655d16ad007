"""Layer builders for ``model.layers`` and the MLP shorthand (torch lives here, not in recipes).

Each builder is ``f(in_shape, **params) -> (module, out_shape)``: ``in_shape`` is the per-sample
shape (no batch dimension) coming out of the previous layer, so a builder infers the sizes a person
would not choose and reports a size mismatch as a sentence instead of a torch stack trace.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from torch import nn

from mnistkit.registry import Registries

Shape = tuple[int, ...]


class ShapeError(ValueError):
    """A layer that cannot accept the shape it is given (message says what it expects)."""


@dataclass
class LayerInfo:
    """One built layer, for the model summary."""

    index: int
    type: str
    out_shape: Shape
    params: int


def linear(in_shape: Shape, *, out_features: int, bias: bool = True) -> tuple[nn.Module, Shape]:
    if len(in_shape) != 1:
        raise ShapeError(
            f"expects a flat (features,) input, gets shape {in_shape}; add {{type: flatten}} before it"
        )
    return nn.Linear(in_shape[0], out_features, bias=bias), (out_features,)


def flatten(in_shape: Shape) -> tuple[nn.Module, Shape]:
    return nn.Flatten(), (math.prod(in_shape),)


def dropout(in_shape: Shape, *, p: float = 0.5) -> tuple[nn.Module, Shape]:
    return nn.Dropout(p), in_shape


def softmax(in_shape: Shape) -> tuple[nn.Module, Shape]:
    return nn.Softmax(dim=-1), in_shape


def log_softmax(in_shape: Shape) -> tuple[nn.Module, Shape]:
    return nn.LogSoftmax(dim=-1), in_shape


def build_layers(
    specs: list[dict[str, Any]], in_shape: Shape, reg: Registries
) -> tuple[nn.Sequential, list[LayerInfo]]:
    """Build ``specs`` (``{type: ..., **params}`` dicts) in order, tracking the shape.

    Raises ShapeError("layer 4 (linear): expects ...") naming the failing layer.
    """
    modules: list[nn.Module] = []
    infos: list[LayerInfo] = []
    shape = tuple(in_shape)
    for i, spec in enumerate(specs):
        params = {k: v for k, v in spec.items() if k != "type"}
        kind = spec["type"]
        try:
            if kind in reg.activations:
                module, out = reg.activations.create(kind, **params), shape
            else:
                entry = reg.layers.get(kind)
                renamed = {
                    (entry.params[k].target_name or k) if k in entry.params else k: v
                    for k, v in params.items()
                }
                module, out = entry.load()(shape, **renamed)
        except ShapeError as exc:
            raise ShapeError(f"layer {i} ({kind}): {exc}") from None
        modules.append(module)
        infos.append(LayerInfo(i, kind, tuple(out), sum(p.numel() for p in module.parameters())))
        shape = tuple(out)
    return nn.Sequential(*modules), infos
