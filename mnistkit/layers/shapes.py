"""Shape inference for ``model.layers``: pure Python at validate time, a real forward on --build.

Shapes are per sample, without the batch dimension: images ``(C, H, W)``, sequences
``(T, F)`` (time first, as a ``batch_first`` RNN reads them), flat vectors ``(F,)``; ``conv1d``,
``batchnorm1d`` and the 1-d pools read ``(C, L)`` as torch does.

Each built-in layer type has a function here, ``f(in_shape, **params) -> out_shape``, that raises
:class:`ShapeError` with a sentence (what the layer expects, what it gets, how to fix it);
``params`` is what the builder gets too: every declared parameter, defaults filled in. The
layer catalog points every built-in entry at its function through the entry's ``shape`` meta
(``"mnistkit.layers.shapes:conv2d"``), so there is one list of layer types, the catalog. The torch
builders in :mod:`mnistkit.layers.modules` call the same functions for their output shape and their
checks: validation and building cannot disagree, and ``tests/test_layers.py`` checks the
arithmetic against real forward passes. A plugin layer without a ``shape`` function stops static
inference at that layer (with a note); ``mnistkit validate --build`` (``build.dry_run``) still
checks it with a real forward pass.

Nothing here imports torch at module level: ``mnistkit validate`` must stay torch-free.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from mnistkit.registry.core import Registries, load_target

Shape = tuple[int, ...]
IntOrPair = int | tuple[int, int]

_TO_SEQUENCE_HINT = (
    "to_sequence turns a (channels, freq, time) map into a (time, channels*freq) sequence by "
    "moving time first, then flattening; a plain reshape to (channels*freq, time) would hand the "
    "RNN frequency bins as time steps (the reference tutorial's x.view(B, -1, T) mistake)"
)


class ShapeError(ValueError):
    """A layer that cannot be built for the shape it is given.

    ``message`` says what the layer expects and gets (and the usual fix); ``hint`` may add a
    longer explanation; ``param`` names the parameter at fault when it is one (the recipe position
    then points at it); ``index``/``layer_type`` are set once the failing layer is known.
    """

    def __init__(
        self,
        message: str,
        hint: str = "",
        *,
        param: str | None = None,
        index: int | None = None,
        layer_type: str | None = None,
    ) -> None:
        self.message, self.hint, self.param = message, hint, param
        self.index, self.layer_type = index, layer_type
        super().__init__(message)

    def at(self, index: int, layer_type: str) -> ShapeError:
        """The same error, prefixed with the layer that raised it: ``layer 4 (linear): ...``."""
        return ShapeError(
            f"layer {index} ({layer_type}): {self.message}",
            self.hint,
            param=self.param,
            index=index,
            layer_type=layer_type,
        )


# ------------------------------------------------------------------------------------ helpers
def fmt(shape: Shape) -> str:
    """``(64, 7, 7)``; a 1-tuple prints as ``(784,)`` like Python does."""
    return str(tuple(shape))


def _pair(v: IntOrPair) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else (int(v[0]), int(v[1]))


def _explicit(name: str, declared: int | None, actual: int, unit: str) -> None:
    """An explicit ``in_features``-like param must agree with the size that reaches the layer."""
    if declared is not None and declared != actual:
        raise ShapeError(
            f"expects {declared} {unit} ({name}: {declared}), gets {actual}",
            f"{name} is inferred from the previous layer; remove it, or fix the layers before "
            "this one so that they produce the size you meant",
            param=name,
        )


#: rank -> (the input it reads, its spatial axes, the layer suffix): 2-d and 1-d maps.
_MAPS = {
    3: ("(channels, height, width)", "height and width", "2d"),
    2: ("(channels, length)", "length axis", "1d"),
}


def _need_map(shape: Shape, layer: str, rank: int) -> None:
    """``shape`` must be a 2-d map (rank 3) or a 1-d map (rank 2) for ``layer``; else say which fits."""
    if len(shape) == rank:
        return
    fix = ""
    if len(shape) == 1:
        fix = f"{layer} must come before flatten (a flat vector has no {_MAPS[rank][1]})"
    elif len(shape) in _MAPS:
        what, _, suffix = _MAPS[len(shape)]
        fix = f"for {what} inputs use the {suffix[0]}-d layer ({layer[:-2]}{suffix})"
    raise ShapeError(f"expects a {_MAPS[rank][0]} input, gets {fmt(shape)}" + _semi(fix))


def _need_image(shape: Shape, layer: str) -> None:
    _need_map(shape, layer, 3)


def _need_map1d(shape: Shape, layer: str) -> None:
    _need_map(shape, layer, 2)


def _semi(text: str) -> str:
    return f"; {text}" if text else ""


def _window(
    size: int,
    kernel: int,
    stride: int,
    padding: int,
    dilation: int,
    ceil_mode: bool,
    axis: str,
) -> int:
    """Output length of a sliding window (torch's conv and pooling arithmetic)."""
    span = dilation * (kernel - 1) + 1
    padded = size + 2 * padding
    if span > padded:
        dil = f" (dilated to {span})" if dilation > 1 else ""
        pad = f" + 2 x padding {padding}" if padding else ""
        raise ShapeError(
            f"kernel_size {kernel}{dil} is larger than the input's {axis} {size}{pad}",
            "use a smaller kernel_size, add padding, or remove a pooling/stride before this layer",
        )
    if ceil_mode:
        out = -(-(padded - span) // stride) + 1
        # torch: the last window must start inside the input or the left padding.
        if (out - 1) * stride >= size + padding:
            out -= 1
    else:
        out = (padded - span) // stride + 1
    return out


def _windows(
    in_shape: Shape,
    kernel: tuple[int, ...],
    stride: tuple[int, ...],
    padding: tuple[int, ...],
    dilation: tuple[int, ...],
    ceil_mode: bool = False,
) -> tuple[int, ...]:
    axes = ("length",) if len(kernel) == 1 else ("height", "width")
    spatial = in_shape[1:]
    return tuple(
        _window(spatial[i], kernel[i], stride[i], padding[i], dilation[i], ceil_mode, axes[i])
        for i in range(len(kernel))
    )


def _pool_padding(kernel: tuple[int, ...], padding: tuple[int, ...]) -> None:
    # torch refuses padding over half the window; half the *undilated* kernel_size, also for a
    # dilated max pool (found by the random-parameter test against real forward passes).
    for k, p in zip(kernel, padding, strict=True):
        if p > k // 2:
            raise ShapeError(
                f"padding {p} is more than half of kernel_size {k}",
                "pooling padding may be at most half the window",
                param="padding",
            )


# ----------------------------------------------------------------------- shape functions
# One per built-in layer type, called as f(in_shape, **p): ``p`` holds every parameter the layer's
# declaration (mnistkit.registry.layer_builtins) lists, defaults filled in, keys renamed by
# target_name. Names and defaults are written there only.


def linear(in_shape: Shape, **p: Any) -> Shape:
    # Like nn.Linear, a (time, features) sequence is transformed step by step; a map is not
    # accepted because flattening it is a decision the recipe should make visibly.
    if len(in_shape) not in (1, 2):
        raise ShapeError(
            f"expects a flat (features,) input or a (time, features) sequence, gets "
            f"{fmt(in_shape)}; add {{type: flatten}} before it",
            "a (channels, height, width) map must be flattened (or pooled: "
            "{type: adaptive_avgpool2d, output_size: 1} then flatten) before a linear layer",
        )
    _explicit("in_features", p["in_features"], in_shape[-1], "inputs")
    return (*in_shape[:-1], p["out_features"])


def flatten(in_shape: Shape, **p: Any) -> Shape:
    return (math.prod(in_shape),)


def same_shape(in_shape: Shape, **p: Any) -> Shape:
    """Elementwise layers (dropout, softmax, log_softmax, every activation) keep the shape."""
    return tuple(in_shape)


dropout = softmax = log_softmax = same_shape


def _conv(in_shape: Shape, dims: int, p: dict[str, Any]) -> Shape:
    as_tuple: Callable[[IntOrPair], tuple[int, ...]] = (
        (lambda v: (int(v),)) if dims == 1 else _pair  # type: ignore[arg-type]
    )
    channels, groups = in_shape[0], p["groups"]
    _explicit("in_channels", p["in_channels"], channels, "input channels")
    for what, n in (("input channels", channels), ("out_channels", p["out_channels"])):
        if n % groups:
            raise ShapeError(
                f"{what} {n} is not divisible by groups {groups}",
                "each group sees in_channels/groups channels and makes out_channels/groups",
                param="groups",
            )
    spatial = _windows(
        in_shape,
        as_tuple(p["kernel_size"]),
        as_tuple(p["stride"]),
        as_tuple(p["padding"]),
        as_tuple(p["dilation"]),
    )
    return (p["out_channels"], *spatial)


def conv1d(in_shape: Shape, **p: Any) -> Shape:
    _need_map1d(in_shape, "conv1d")
    return _conv(in_shape, 1, p)


def conv2d(in_shape: Shape, **p: Any) -> Shape:
    _need_image(in_shape, "conv2d")
    return _conv(in_shape, 2, p)


def batchnorm1d(in_shape: Shape, **p: Any) -> Shape:
    if len(in_shape) not in (1, 2):
        raise ShapeError(
            f"expects (features,) or (channels, length), gets {fmt(in_shape)}"
            + _semi("use batchnorm2d for (channels, height, width) maps" if len(in_shape) == 3 else "")
        )
    _explicit("num_features", p["num_features"], in_shape[0], "features/channels")
    return tuple(in_shape)


def batchnorm2d(in_shape: Shape, **p: Any) -> Shape:
    _need_image(in_shape, "batchnorm2d")
    _explicit("num_features", p["num_features"], in_shape[0], "channels")
    return tuple(in_shape)


def _pool(in_shape: Shape, layer: str, p: dict[str, Any]) -> Shape:
    """Max and average pools, 1-d and 2-d (average pools have no ``dilation``: 1)."""
    if layer.endswith("1d"):
        _need_map1d(in_shape, layer)
        as_tuple: Callable[[IntOrPair], tuple[int, ...]] = lambda v: (int(v),)  # type: ignore[arg-type]  # noqa: E731
    else:
        _need_image(in_shape, layer)
        as_tuple = _pair
    k = as_tuple(p["kernel_size"])
    s = as_tuple(p["stride"]) if p["stride"] is not None else k
    pad = as_tuple(p["padding"])
    d = as_tuple(p["dilation"]) if "dilation" in p else (1,) * len(k)  # average pools: none
    _pool_padding(k, pad)
    return (in_shape[0], *_windows(in_shape, k, s, pad, d, p["ceil_mode"]))


def maxpool1d(in_shape: Shape, **p: Any) -> Shape:
    return _pool(in_shape, "maxpool1d", p)


def maxpool2d(in_shape: Shape, **p: Any) -> Shape:
    return _pool(in_shape, "maxpool2d", p)


def avgpool1d(in_shape: Shape, **p: Any) -> Shape:
    return _pool(in_shape, "avgpool1d", p)


def avgpool2d(in_shape: Shape, **p: Any) -> Shape:
    return _pool(in_shape, "avgpool2d", p)


def adaptive_avgpool1d(in_shape: Shape, **p: Any) -> Shape:
    _need_map1d(in_shape, "adaptive_avgpool1d")
    return (in_shape[0], p["output_size"])


def adaptive_avgpool2d(in_shape: Shape, **p: Any) -> Shape:
    _need_image(in_shape, "adaptive_avgpool2d")
    return (in_shape[0], *_pair(p["output_size"]))


def to_sequence(in_shape: Shape, **p: Any) -> Shape:
    """``(C, F, T)`` → ``(T, C*F)``; ``(C, T)`` → ``(T, C)``: the last axis is time."""
    if len(in_shape) == 3:
        c, f, t = in_shape
        return (t, c * f)
    if len(in_shape) == 2:
        c, t = in_shape
        return (t, c)
    raise ShapeError(
        f"expects a (channels, freq, time) or (channels, time) map, gets {fmt(in_shape)}",
        "the last axis is taken as time; a flat vector has none (put to_sequence before flatten)",
    )


def _rnn(kind: str, in_shape: Shape, p: dict[str, Any]) -> Shape:
    if len(in_shape) == 3:
        raise ShapeError(
            f"expects a (time, features) sequence, gets {fmt(in_shape)}; add {{type: to_sequence}} before it",
            _TO_SEQUENCE_HINT,
        )
    if len(in_shape) != 2:
        raise ShapeError(
            f"expects a (time, features) sequence, gets {fmt(in_shape)}; a flat vector has no time axis",
            "feed it a sequence: e.g. conv layers then {type: to_sequence}",
        )
    _explicit("input_size", p["input_size"], in_shape[1], "features per step")
    if p["dropout"] > 0 and p["num_layers"] == 1:
        # torch only warns; the setting would silently do nothing, so it is an error here.
        raise ShapeError(
            f"dropout {p['dropout']:g} applies between stacked {kind} layers, and num_layers is 1",
            "set num_layers >= 2, or remove dropout here and add {type: dropout} after the layer",
            param="dropout",
        )
    width = p["hidden_size"] * (2 if p["bidirectional"] else 1)
    return (in_shape[0], width) if p["return_"] == "sequence" else (width,)


def lstm(in_shape: Shape, **p: Any) -> Shape:
    return _rnn("lstm", in_shape, p)


def gru(in_shape: Shape, **p: Any) -> Shape:
    return _rnn("gru", in_shape, p)


def attention_pool(in_shape: Shape, **p: Any) -> Shape:
    if len(in_shape) != 2:
        fix = (
            "add {type: to_sequence} (and usually an lstm/gru) before it"
            if len(in_shape) == 3
            else "it pools over time: put it after an lstm/gru with return: sequence"
        )
        raise ShapeError(f"expects a (time, features) sequence, gets {fmt(in_shape)}; {fix}")
    _explicit("in_features", p["in_features"], in_shape[1], "features per step")
    return (in_shape[1],)


# ------------------------------------------------------------------ learnable parameter counts
# f(in_shape, **p) -> int, for the layer types that have weights (the others have none); the same
# ``p`` as the shape functions. They let `validate` state a model's size without torch, and `run`
# refuse a model whose weights cannot fit before any data is loaded. Checked against torch's
# ``numel`` of the built modules by tests/test_layers.py.


def weights_linear(in_shape: Shape, **p: Any) -> int:
    return in_shape[-1] * p["out_features"] + (p["out_features"] if p["bias"] else 0)


def _weights_conv(in_shape: Shape, dims: int, p: dict[str, Any]) -> int:
    kernel = (int(p["kernel_size"]),) if dims == 1 else _pair(p["kernel_size"])
    per_out = (in_shape[0] // p["groups"]) * math.prod(kernel)
    return p["out_channels"] * per_out + (p["out_channels"] if p["bias"] else 0)


def weights_conv1d(in_shape: Shape, **p: Any) -> int:
    return _weights_conv(in_shape, 1, p)


def weights_conv2d(in_shape: Shape, **p: Any) -> int:
    return _weights_conv(in_shape, 2, p)


def weights_batchnorm1d(in_shape: Shape, **p: Any) -> int:
    return 2 * in_shape[0] if p["affine"] else 0  # running mean/var are buffers, not weights


weights_batchnorm2d = weights_batchnorm1d


def _weights_rnn(gates: int, in_shape: Shape, p: dict[str, Any]) -> int:
    h, dirs = p["hidden_size"], 2 if p["bidirectional"] else 1
    total = 0
    for layer in range(p["num_layers"]):
        inputs = in_shape[-1] if layer == 0 else h * dirs
        per_direction = gates * h * (inputs + h) + (2 * gates * h if p["bias"] else 0)
        total += dirs * per_direction
    return total


def weights_lstm(in_shape: Shape, **p: Any) -> int:
    return _weights_rnn(4, in_shape, p)


def weights_gru(in_shape: Shape, **p: Any) -> int:
    return _weights_rnn(3, in_shape, p)


def weights_attention_pool(in_shape: Shape, **p: Any) -> int:
    f, h = in_shape[-1], p["hidden_size"]
    return f * h + h + h + 1  # Linear(F -> hidden) and Linear(hidden -> 1)


def weight_function(kind: str, reg: Registries) -> Callable[..., int] | None:
    """A layer type's parameter counter; None for a plugin layer that declares none (unknown)."""
    if kind in reg.activations:
        return lambda in_shape, **p: 0
    entry = reg.layers.get(kind)
    target = entry.meta.get("weights")
    if target is not None:
        return load_target(target) if target else (lambda in_shape, **p: 0)
    return None


@dataclass(frozen=True)
class LayerInfo:
    """One built layer, for the model summary."""

    index: int
    type: str
    out_shape: Shape
    params: int


def layer_params(spec: dict[str, Any], reg: Registries) -> dict[str, Any]:
    """What a layer's builder and shape function receive: every declared parameter, the spec's
    value or else the declared default, renamed by ``target_name`` (see ``Entry.arguments``)."""
    params = {k: v for k, v in spec.items() if k != "type"}
    kind = spec["type"]
    if kind in reg.activations or kind not in reg.layers:
        return params  # activations: Registry.create renames; unknown: reg.layers.get says so
    return reg.layers.get(kind).arguments(params)


def shape_function(kind: str, reg: Registries) -> Callable[..., Shape] | None:
    """The static shape function of a layer type; None when it has none (some plugin layers)."""
    if kind in reg.activations:
        return same_shape  # activations are elementwise
    target = reg.layers.get(kind).meta.get("shape")
    return load_target(target) if target else None


@dataclass
class Inference:
    """Static result: ``shapes[i]`` is layer i's output; it stops at an error or an unknown."""

    shapes: list[Shape]
    error: ShapeError | None = None
    skipped_at: int | None = None  # first layer without a shape function
    weights: list[int | None] = field(default_factory=list)  # per layer; None: not known statically

    @property
    def parameters(self) -> int | None:
        """Learnable parameters of the whole model; None when a layer's count is unknown."""
        if self.error is not None or self.skipped_at is not None or None in self.weights:
            return None
        return sum(w for w in self.weights if w is not None)


def infer(specs: list[dict[str, Any]], in_shape: Shape, reg: Registries) -> Inference:
    """Run the shape functions over ``specs`` (``{type: ..., **params}``) from ``in_shape``."""
    result = Inference([])
    shape = tuple(in_shape)
    for i, spec in enumerate(specs):
        kind = spec["type"]
        fn = shape_function(kind, reg)
        if fn is None:
            result.skipped_at = i
            return result
        try:
            params = layer_params(spec, reg)
            count = weight_function(kind, reg)
            result.weights.append(count(shape, **params) if count is not None else None)
            shape = tuple(fn(shape, **params))
        except ShapeError as exc:
            result.error = exc.at(i, kind)
            return result
        except Exception as exc:  # a plugin's shape function with a bug: say whose it is
            result.error = ShapeError(f"its shape function failed: {type(exc).__name__}: {exc}").at(i, kind)
            return result
        result.shapes.append(shape)
    return result
