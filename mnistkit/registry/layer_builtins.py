"""Built-in layer types for ``model.layers``, declared as data: the one place for their parameters.

Every layer type ``name`` has two targets, both found by name (this list is the only list):

* the builder ``mnistkit.layers.modules:<name>``, ``f(in_shape, **params) -> (module, out_shape)``;
* the shape function ``mnistkit.layers.shapes:<name>``, ``f(in_shape, **params) -> out_shape``, pure
  Python, used by ``mnistkit validate`` (no torch) and by the builder itself.

Both receive ``params`` filled from the declarations below (every parameter, the recipe's value or
the default written here, renamed by ``target_name``: ``Entry.arguments``), so names, defaults and
bounds are written here only; the targets read ``params["stride"]`` and repeat none of them.

``in_shape`` is the per-sample input shape (no batch dimension): images ``(C, H, W)``, sequences
``(T, F)``, flat ``(F,)``. Sizes a person would not choose (``in_features``, ``in_channels``,
``input_size``, ``num_features``) are inferred from it; they may still be written, and are then
checked against what reaches the layer. Every registered activation is also a layer type
(``{type: relu}``); that list is not repeated here.
"""

from __future__ import annotations

from mnistkit.registry.core import Param, Registries

P = Param


def _explicit(what: str) -> Param:
    return P("int", None, f"{what}; inferred, checked when given", ge=1, nullable=True)


def _conv(dims: int) -> dict[str, Param]:
    t = "int" if dims == 1 else "int_or_pair"
    return {
        "out_channels": P("int", ..., "output channels (feature maps)", ge=1),
        "kernel_size": P(t, ..., "window size" + ("" if dims == 1 else ": n or [h, w]"), ge=1),
        "stride": P(t, 1, "step between windows", ge=1),
        "padding": P(t, 0, "zeros added on each side (kernel_size // 2 keeps the size)", ge=0),
        "dilation": P(t, 1, "spacing between kernel taps", ge=1),
        "groups": P("int", 1, "split channels into groups (in/out channels divisible)", ge=1),
        "bias": P("bool", True, "learn an additive bias"),
        "in_channels": _explicit("input channels"),
    }


def _batchnorm() -> dict[str, Param]:
    return {
        "eps": P("float", 1e-5, "added to the variance for stability", gt=0),
        "momentum": P("float", 0.1, "running-statistics update rate", gt=0, le=1),
        "affine": P("bool", True, "learn a per-channel scale and shift"),
        "num_features": _explicit("channels"),
    }


def _pool(dims: int, kind: str) -> dict[str, Param]:
    t = "int" if dims == 1 else "int_or_pair"
    params = {
        "kernel_size": P(t, ..., "window size", ge=1),
        "stride": P(t, None, "step between windows (default: kernel_size)", ge=1, nullable=True),
        "padding": P(t, 0, "padding on each side (at most half the window)", ge=0),
    }
    if kind == "max":
        params["dilation"] = P(t, 1, "spacing between window taps", ge=1)
    params["ceil_mode"] = P("bool", False, "round the output size up instead of down")
    if kind == "avg":
        params["count_include_pad"] = P("bool", True, "count padding zeros in the average")
    return params


def _rnn(kind: str) -> dict[str, Param]:
    return {
        "hidden_size": P("int", ..., f"{kind} state size per direction", ge=1),
        "num_layers": P("int", 1, "stacked recurrent layers", ge=1),
        "bidirectional": P("bool", False, "also read the sequence backwards (output width x2)"),
        "dropout": P("float", 0.0, "dropout between stacked layers (needs num_layers >= 2)", ge=0, lt=1),
        # `return` is a Python keyword: builders and shape functions read it as params["return_"].
        "return": P(
            "str",
            "sequence",
            "sequence: every step, (T, H*dirs); last: final state, (H*dirs,)",
            choices=("sequence", "last"),
            target_name="return_",
        ),
        "bias": P("bool", True, "learn bias terms"),
        "input_size": _explicit("features per time step"),
    }


_LAYERS: list[tuple[str, str, dict[str, Param]]] = [
    (
        "linear",
        "fully connected layer on (F,) or per time step on (T, F); in_features is inferred",
        {
            "out_features": P("int", ..., "output width", ge=1),
            "bias": P("bool", True, "learn an additive bias"),
            "in_features": _explicit("input width"),
        },
    ),
    ("conv1d", "1-d convolution over (channels, length)", _conv(1)),
    ("conv2d", "2-d convolution over (channels, height, width)", _conv(2)),
    ("batchnorm1d", "batch normalization of (features,) or (channels, length)", _batchnorm()),
    ("batchnorm2d", "batch normalization of (channels, height, width)", _batchnorm()),
    ("maxpool1d", "max over windows of (channels, length)", _pool(1, "max")),
    ("maxpool2d", "max over windows of (channels, height, width)", _pool(2, "max")),
    ("avgpool1d", "average over windows of (channels, length)", _pool(1, "avg")),
    ("avgpool2d", "average over windows of (channels, height, width)", _pool(2, "avg")),
    (
        "adaptive_avgpool1d",
        "average (channels, length) down to (channels, output_size)",
        {"output_size": P("int", ..., "output length", ge=1)},
    ),
    (
        "adaptive_avgpool2d",
        "average (channels, h, w) down to (channels, *output_size); 1 = global average pooling",
        {"output_size": P("int_or_pair", ..., "output size: n or [h, w]", ge=1)},
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
    (
        "to_sequence",
        "(channels, freq, time) map -> (time, channels*freq) sequence: time first, then flatten",
        {},
    ),
    ("lstm", "LSTM over a (time, features) sequence", _rnn("LSTM")),
    ("gru", "GRU over a (time, features) sequence", _rnn("GRU")),
    (
        "attention_pool",
        "attention pooling over time: (T, F) -> (F,), softmax(Linear(tanh(Linear(x)))) weights",
        {
            "hidden_size": P("int", 64, "width of the scoring layer", ge=1),
            "in_features": _explicit("features per time step"),
        },
    ),
    ("softmax", "probabilities over the last dimension (for inspection, not for training)", {}),
    ("log_softmax", "log-probabilities over the last dimension (what nll expects)", {}),
]


#: Layer types with learnable parameters; each has a counter ``mnistkit.layers.shapes:weights_<name>``
#: (the other built-ins have none: their count is 0, declared as ``weights=""``).
_WEIGHTED = {"linear", "conv1d", "conv2d", "batchnorm1d", "batchnorm2d", "lstm", "gru", "attention_pool"}


def register_layers(reg: Registries) -> None:
    for name, desc, params in _LAYERS:
        reg.layers.register(
            name,
            f"mnistkit.layers.modules:{name}",
            desc,
            params,
            shape=f"mnistkit.layers.shapes:{name}",
            weights=f"mnistkit.layers.shapes:weights_{name}" if name in _WEIGHTED else "",
        )
