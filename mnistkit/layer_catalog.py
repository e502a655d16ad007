"""Built-in layer types for ``model.layers`` (declared as data; builders live in layers.py).

Every layer target is a builder ``f(in_shape, **params) -> (module, out_shape)`` in
:mod:`mnistkit.layers`: ``in_shape`` is the per-sample input shape (no batch dimension), which is
how sizes a person would not choose (``in_features``, ``in_channels``, ``input_size``) are
inferred. Every registered activation is also a layer type (``{type: relu}``); that list is not
repeated here.
"""

from __future__ import annotations

from mnistkit.registry import Param, Registries

P = Param

_LAYERS: list[tuple[str, str, dict[str, Param]]] = [
    (
        "linear",
        "fully connected layer; in_features is inferred",
        {
            "out_features": P("int", ..., "output width", ge=1),
            "bias": P("bool", True, "learn an additive bias"),
        },
    ),
    (
        "flatten",
        "flatten everything but the batch dimension",
        {},
    ),
    (
        "dropout",
        "randomly zero activations during training",
        {"p": P("float", 0.5, "probability of zeroing", ge=0, lt=1)},
    ),
    ("softmax", "probabilities over the last dimension (for inspection, not for training)", {}),
    ("log_softmax", "log-probabilities over the last dimension (what nll expects)", {}),
]


def register_layers(reg: Registries) -> None:
    for name, desc, params in _LAYERS:
        reg.layers.register(name, f"mnistkit.layers:{name}", desc, params)
