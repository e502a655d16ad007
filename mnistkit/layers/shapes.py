"""Shape inference for ``model.layers``: pure Python at validate time, a real forward on --build.

Shapes are per sample, without the batch dimension: images ``(C, H, W)``, sequences
``(T, F)`` (time first, as a ``batch_first`` RNN reads them), flat vectors ``(F,)``; ``conv1d``,
``batchnorm1d`` and the 1-d pools read ``(C, L)`` as torch does.

Each built-in layer type has a function here, ``f(in_shape, **params) -> out_shape``, that raises
:class:`ShapeError` with a sentence (what the layer expects, what it gets, how to fix it). The
layer catalog points every built-in entry at its function through the entry's ``shape`` meta
(``"mnistkit.layers.shapes:conv2d"``), so there is one list of layer types, the catalog. The torch
builders in :mod:`mnistkit.layers.modules` call the same functions for their output shape and their
checks: validation and building cannot disagree, and ``tests/test_layers.py`` checks the
arithmetic against real forward passes. A plugin layer without a ``shape`` function stops static
inference at that layer (with a note); ``mnistkit validate --build`` (:func:`dry_run`) still
checks it with a real forward pass.

Nothing here imports torch at module level: ``mnistkit validate`` must stay torch-free.
"""

from __future__ import annotations

import importlib
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from mnistkit.registry.core import Registries

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


def _what(shape: Shape) -> str:
    """Name what a shape looks like, to help the reader of an error see the mismatch."""
    return {
        1: "a flat vector",
        2: "a (time, features) sequence or (channels, length) map",
        3: "a (channels, height, width) image/feature map",
    }.get(len(shape), f"a rank-{len(shape)} tensor")


def _explicit(name: str, declared: int | None, actual: int, unit: str) -> None:
    """An explicit ``in_features``-like param must agree with the size that reaches the layer."""
    if declared is not None and declared != actual:
        raise ShapeError(
            f"expects {declared} {unit} ({name}: {declared}), gets {actual}",
            f"{name} is inferred from the previous layer; remove it, or fix the layers before "
            "this one so that they produce the size you meant",
            param=name,
        )


def _need_image(shape: Shape, layer: str) -> None:
    if len(shape) == 3:
        return
    fix = {
        1: f"{layer} must come before flatten (a flat vector has no height and width)",
        2: f"for (channels, length) inputs use the 1-d layer ({layer[:-2]}1d)",
    }.get(len(shape), "")
    raise ShapeError(f"expects a (channels, height, width) input, gets {fmt(shape)}" + _semi(fix))


def _need_map1d(shape: Shape, layer: str) -> None:
    if len(shape) == 2:
        return
    fix = {
        1: f"{layer} must come before flatten (a flat vector has no length axis)",
        3: f"for (channels, height, width) inputs use the 2-d layer ({layer[:-2]}2d)",
    }.get(len(shape), "")
    raise ShapeError(f"expects a (channels, length) input, gets {fmt(shape)}" + _semi(fix))


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


def _pool_padding(kernel: tuple[int, ...], padding: tuple[int, ...], dilation: tuple[int, ...]) -> None:
    # torch refuses padding over half the (dilated) window: that window could see only padding.
    for k, p, d in zip(kernel, padding, dilation, strict=True):
        if p > (d * (k - 1) + 1) // 2:
            raise ShapeError(
                f"padding {p} is more than half of kernel_size {k}",
                "pooling padding may be at most half the window",
                param="padding",
            )


# ----------------------------------------------------------------------- shape functions
# One per built-in layer type; keyword names are the builders' (after target_name renaming).


def linear(in_shape: Shape, *, out_features: int, bias: bool = True, in_features: int | None = None) -> Shape:
    # Like nn.Linear, a (time, features) sequence is transformed step by step; a map is not
    # accepted because flattening it is a decision the recipe should make visibly.
    if len(in_shape) not in (1, 2):
        raise ShapeError(
            f"expects a flat (features,) input or a (time, features) sequence, gets "
            f"{fmt(in_shape)}; add {{type: flatten}} before it",
            "a (channels, height, width) map must be flattened (or pooled: "
            "{type: adaptive_avgpool2d, output_size: 1} then flatten) before a linear layer",
        )
    _explicit("in_features", in_features, in_shape[-1], "inputs")
    return (*in_shape[:-1], out_features)


def flatten(in_shape: Shape) -> Shape:
    return (math.prod(in_shape),)


def dropout(in_shape: Shape, *, p: float = 0.5) -> Shape:
    return tuple(in_shape)


def softmax(in_shape: Shape) -> Shape:
    return tuple(in_shape)


def log_softmax(in_shape: Shape) -> Shape:
    return tuple(in_shape)


def _conv(
    in_shape: Shape,
    dims: int,
    out_channels: int,
    kernel_size: IntOrPair,
    stride: IntOrPair,
    padding: IntOrPair,
    dilation: IntOrPair,
    groups: int,
    in_channels: int | None,
) -> Shape:
    as_tuple: Callable[[IntOrPair], tuple[int, ...]] = (
        (lambda v: (int(v),)) if dims == 1 else _pair  # type: ignore[arg-type]
    )
    channels = in_shape[0]
    _explicit("in_channels", in_channels, channels, "input channels")
    for what, n in (("input channels", channels), ("out_channels", out_channels)):
        if n % groups:
            raise ShapeError(
                f"{what} {n} is not divisible by groups {groups}",
                "each group sees in_channels/groups channels and makes out_channels/groups",
                param="groups",
            )
    spatial = _windows(
        in_shape,
        as_tuple(kernel_size),
        as_tuple(stride),
        as_tuple(padding),
        as_tuple(dilation),
    )
    return (out_channels, *spatial)


def conv1d(
    in_shape: Shape,
    *,
    out_channels: int,
    kernel_size: int,
    stride: int = 1,
    padding: int = 0,
    dilation: int = 1,
    groups: int = 1,
    bias: bool = True,
    in_channels: int | None = None,
) -> Shape:
    _need_map1d(in_shape, "conv1d")
    return _conv(in_shape, 1, out_channels, kernel_size, stride, padding, dilation, groups, in_channels)


def conv2d(
    in_shape: Shape,
    *,
    out_channels: int,
    kernel_size: IntOrPair,
    stride: IntOrPair = 1,
    padding: IntOrPair = 0,
    dilation: IntOrPair = 1,
    groups: int = 1,
    bias: bool = True,
    in_channels: int | None = None,
) -> Shape:
    _need_image(in_shape, "conv2d")
    return _conv(in_shape, 2, out_channels, kernel_size, stride, padding, dilation, groups, in_channels)


def batchnorm1d(
    in_shape: Shape,
    *,
    eps: float = 1e-5,
    momentum: float = 0.1,
    affine: bool = True,
    num_features: int | None = None,
) -> Shape:
    if len(in_shape) not in (1, 2):
        raise ShapeError(
            f"expects (features,) or (channels, length), gets {fmt(in_shape)}"
            + _semi("use batchnorm2d for (channels, height, width) maps" if len(in_shape) == 3 else "")
        )
    _explicit("num_features", num_features, in_shape[0], "features/channels")
    return tuple(in_shape)


def batchnorm2d(
    in_shape: Shape,
    *,
    eps: float = 1e-5,
    momentum: float = 0.1,
    affine: bool = True,
    num_features: int | None = None,
) -> Shape:
    _need_image(in_shape, "batchnorm2d")
    _explicit("num_features", num_features, in_shape[0], "channels")
    return tuple(in_shape)


def maxpool1d(
    in_shape: Shape,
    *,
    kernel_size: int,
    stride: int | None = None,
    padding: int = 0,
    dilation: int = 1,
    ceil_mode: bool = False,
) -> Shape:
    _need_map1d(in_shape, "maxpool1d")
    k, s = (kernel_size,), (stride or kernel_size,)
    _pool_padding(k, (padding,), (dilation,))
    return (in_shape[0], *_windows(in_shape, k, s, (padding,), (dilation,), ceil_mode))


def maxpool2d(
    in_shape: Shape,
    *,
    kernel_size: IntOrPair,
    stride: IntOrPair | None = None,
    padding: IntOrPair = 0,
    dilation: IntOrPair = 1,
    ceil_mode: bool = False,
) -> Shape:
    _need_image(in_shape, "maxpool2d")
    k = _pair(kernel_size)
    s = _pair(stride) if stride is not None else k
    p, d = _pair(padding), _pair(dilation)
    _pool_padding(k, p, d)
    return (in_shape[0], *_windows(in_shape, k, s, p, d, ceil_mode))


def avgpool1d(
    in_shape: Shape,
    *,
    kernel_size: int,
    stride: int | None = None,
    padding: int = 0,
    ceil_mode: bool = False,
    count_include_pad: bool = True,
) -> Shape:
    _need_map1d(in_shape, "avgpool1d")
    k, s = (kernel_size,), (stride or kernel_size,)
    _pool_padding(k, (padding,), (1,))
    return (in_shape[0], *_windows(in_shape, k, s, (padding,), (1,), ceil_mode))


def avgpool2d(
    in_shape: Shape,
    *,
    kernel_size: IntOrPair,
    stride: IntOrPair | None = None,
    padding: IntOrPair = 0,
    ceil_mode: bool = False,
    count_include_pad: bool = True,
) -> Shape:
    _need_image(in_shape, "avgpool2d")
    k = _pair(kernel_size)
    s = _pair(stride) if stride is not None else k
    p = _pair(padding)
    _pool_padding(k, p, (1, 1))
    return (in_shape[0], *_windows(in_shape, k, s, p, (1, 1), ceil_mode))


def adaptive_avgpool1d(in_shape: Shape, *, output_size: int) -> Shape:
    _need_map1d(in_shape, "adaptive_avgpool1d")
    return (in_shape[0], output_size)


def adaptive_avgpool2d(in_shape: Shape, *, output_size: IntOrPair) -> Shape:
    _need_image(in_shape, "adaptive_avgpool2d")
    return (in_shape[0], *_pair(output_size))


def to_sequence(in_shape: Shape) -> Shape:
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


def _rnn(
    kind: str,
    in_shape: Shape,
    hidden_size: int,
    num_layers: int,
    bidirectional: bool,
    dropout: float,
    return_: str,
    input_size: int | None,
) -> Shape:
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
    _explicit("input_size", input_size, in_shape[1], "features per step")
    if dropout > 0 and num_layers == 1:
        # torch only warns; the setting would silently do nothing, so it is an error here.
        raise ShapeError(
            f"dropout {dropout:g} applies between stacked {kind} layers, and num_layers is 1",
            "set num_layers >= 2, or remove dropout here and add {type: dropout} after the layer",
            param="dropout",
        )
    width = hidden_size * (2 if bidirectional else 1)
    return (in_shape[0], width) if return_ == "sequence" else (width,)


def lstm(
    in_shape: Shape,
    *,
    hidden_size: int,
    num_layers: int = 1,
    bidirectional: bool = False,
    dropout: float = 0.0,
    return_: str = "sequence",
    bias: bool = True,
    input_size: int | None = None,
) -> Shape:
    return _rnn("lstm", in_shape, hidden_size, num_layers, bidirectional, dropout, return_, input_size)


def gru(
    in_shape: Shape,
    *,
    hidden_size: int,
    num_layers: int = 1,
    bidirectional: bool = False,
    dropout: float = 0.0,
    return_: str = "sequence",
    bias: bool = True,
    input_size: int | None = None,
) -> Shape:
    return _rnn("gru", in_shape, hidden_size, num_layers, bidirectional, dropout, return_, input_size)


def attention_pool(in_shape: Shape, *, hidden_size: int = 64, in_features: int | None = None) -> Shape:
    if len(in_shape) != 2:
        fix = (
            "add {type: to_sequence} (and usually an lstm/gru) before it"
            if len(in_shape) == 3
            else "it pools over time: put it after an lstm/gru with return: sequence"
        )
        raise ShapeError(f"expects a (time, features) sequence, gets {fmt(in_shape)}; {fix}")
    _explicit("in_features", in_features, in_shape[1], "features per step")
    return (in_shape[1],)


@dataclass(frozen=True)
class LayerInfo:
    """One built layer, for the model summary."""

    index: int
    type: str
    out_shape: Shape
    params: int


def _resolve(target: str | Callable[..., Shape]) -> Callable[..., Shape]:
    if callable(target):
        return target
    module, _, attr = target.partition(":")
    obj: Any = importlib.import_module(module)
    for part in attr.split("."):
        obj = getattr(obj, part)
    return obj  # type: ignore[no-any-return]


def layer_params(spec: dict[str, Any], reg: Registries) -> dict[str, Any]:
    """A spec's parameters renamed to the keywords of its builder/shape function."""
    params = {k: v for k, v in spec.items() if k != "type"}
    kind = spec["type"]
    if kind in reg.activations or kind not in reg.layers:
        return params
    declared = reg.layers.get(kind).params
    return {(declared[k].target_name or k) if k in declared else k: v for k, v in params.items()}


def shape_function(kind: str, reg: Registries) -> Callable[..., Shape] | None:
    """The static shape function of a layer type; None when it has none (some plugin layers)."""
    if kind in reg.activations:
        return _same_shape  # activations are elementwise
    target = reg.layers.get(kind).meta.get("shape")
    return _resolve(target) if target else None


def _same_shape(in_shape: Shape, **_: Any) -> Shape:
    return tuple(in_shape)


@dataclass
class Inference:
    """Static result: ``shapes[i]`` is layer i's output; it stops at an error or an unknown."""

    shapes: list[Shape]
    error: ShapeError | None = None
    skipped_at: int | None = None  # first layer without a shape function


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
            shape = tuple(fn(shape, **layer_params(spec, reg)))
        except ShapeError as exc:
            result.error = exc.at(i, kind)
            return result
        except Exception as exc:  # a plugin's shape function with a bug: say whose it is
            result.error = ShapeError(f"its shape function failed: {type(exc).__name__}: {exc}").at(i, kind)
            return result
        result.shapes.append(shape)
    return result
