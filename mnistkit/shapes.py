"""Shape inference for ``model.layers``: pure Python at validate time, a real forward on --build.

Shapes are per sample, without the batch dimension: images ``(C, H, W)``, sequences
``(T, F)`` (time first, as a ``batch_first`` RNN reads them), flat vectors ``(F,)``; ``conv1d``,
``batchnorm1d`` and the 1-d pools read ``(C, L)`` as torch does.

Each built-in layer type has a function here, ``f(in_shape, **params) -> out_shape``, that raises
:class:`ShapeError` with a sentence (what the layer expects, what it gets, how to fix it). The
layer catalog points every built-in entry at its function through the entry's ``shape`` meta
(``"mnistkit.shapes:conv2d"``), so there is one list of layer types, the catalog. The torch
builders in :mod:`mnistkit.layers` call the same functions for their output shape and their
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
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mnistkit.errors import Problem, RecipeError, dotted
from mnistkit.recipe import OUTPUT_ONLY, LogMel
from mnistkit.registry import Registries

if TYPE_CHECKING:
    from mnistkit.layers import LayerInfo
    from mnistkit.recipe import RecipeBase

Shape = tuple[int, ...]
IntOrPair = int | tuple[int, int]

#: Class count used to build the head when the dataset does not declare one (audio_folder):
#: only for shape checks; the real run takes it from the data.
PLACEHOLDER_CLASSES = 2

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


# ----------------------------------------------------------------------- the model's layer list
@dataclass(frozen=True)
class LayerSpec:
    """One layer of the model as built: ``{type: ..., **params}`` plus where the recipe says so."""

    spec: dict[str, Any]
    loc: tuple[Any, ...]  # path in the recipe document, for file:line:col
    field: str  # dotted field name for messages, "model.layers[3]"

    def at(self, param: str | None) -> tuple[tuple[Any, ...], str]:
        """(loc, field) of one of this layer's parameters, when the recipe wrote the layer."""
        written = len(self.loc) == 3 and self.loc[:2] == ("model", "layers")
        if param is None or not written:
            return self.loc, self.field
        return (*self.loc, param), f"{self.field}.{param}"


def layer_specs(recipe: RecipeBase, num_classes: int, reg: Registries) -> list[LayerSpec]:
    """The model as an explicit layer list; the MLP shorthand expands to the same vocabulary."""
    m = recipe.model
    expects = reg.losses.get(recipe.loss.name).meta.get("expects", "logits")
    out: list[LayerSpec] = []
    if m.layers is not None:
        for i, layer in enumerate(m.layers):
            loc = ("model", "layers", i)
            out.append(LayerSpec(layer.model_dump(), loc, dotted(loc)))
        # The classifier head: a final linear to num_classes unless the list already ends in a
        # linear (its width is checked against the class count) or an output activation, so
        # recipes need not know the class count.
        last = out[-1].spec["type"]
        if last != "linear" and last not in OUTPUT_ONLY:
            head = {"type": "linear", "out_features": num_classes, "bias": True}
            out.append(LayerSpec(head, ("model", "layers"), "model.layers (classifier head)"))
    else:
        act = m.activation.model_dump()
        act_name = act.pop("name")
        out.append(LayerSpec({"type": "flatten"}, ("model", "hidden"), "model.hidden"))
        for j, width in enumerate(m.hidden or []):
            loc = ("model", "hidden", j)
            out.append(LayerSpec({"type": "linear", "out_features": width, "bias": True}, loc, dotted(loc)))
            out.append(LayerSpec({"type": act_name, **act}, ("model", "activation"), "model.activation"))
            if m.dropout > 0:
                out.append(
                    LayerSpec({"type": "dropout", "p": m.dropout}, ("model", "dropout"), "model.dropout")
                )
        # No activation after the last linear: cross_entropy needs raw logits.
        head = {"type": "linear", "out_features": num_classes, "bias": True}
        out.append(LayerSpec(head, ("model", "hidden"), "model.hidden (classifier head)"))
        if m.output_activation and m.output_activation != "log_softmax":
            loc = ("model", "output_activation")
            out.append(LayerSpec({"type": m.output_activation}, loc, dotted(loc)))
    if expects == "log_probs" and out[-1].spec["type"] != "log_softmax":
        # nll needs log-probabilities
        out.append(LayerSpec({"type": "log_softmax"}, ("loss",), "loss (log_softmax for nll)"))
    return out


def input_shape(recipe: RecipeBase, reg: Registries) -> Shape | None:
    """Per-sample input shape from the dataset declaration, or None when it declares none.

    Image datasets declare ``shape`` in their registry meta; audio datasets give
    ``(1, n_mels, frames)`` from ``data.features`` (one log-mel map per clip).
    """
    meta = reg.datasets.get(recipe.data.dataset).meta
    if meta.get("shape"):
        return tuple(int(n) for n in meta["shape"])
    if meta.get("kind") == "audio":
        f = recipe.data.features
        if f is None:
            f = LogMel()
        return (1, f.n_mels, f.frames)
    return None


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


Where = Callable[[tuple[Any, ...], bool], str]


def check_model(recipe: RecipeBase, reg: Registries, where: Where) -> tuple[list[Problem], list[str]]:
    """Static shape check of the recipe's model: (problems, notes). Called by check_recipe.

    ``where(loc, key)`` turns a document path into ``file:line:col``. Notes say what could not be
    checked statically (no input shape, a plugin layer without a shape function).
    """
    in_shape = input_shape(recipe, reg)
    if in_shape is None:
        return [], [
            f"dataset {recipe.data.dataset!r} declares no input shape: layer shapes are checked "
            "when the model is built (mnistkit validate --build, or at the start of a run)"
        ]
    declared = reg.datasets.get(recipe.data.dataset).meta.get("num_classes")
    layers = layer_specs(recipe, declared or PLACEHOLDER_CLASSES, reg)
    result = infer([ls.spec for ls in layers], in_shape, reg)
    if result.error is not None:
        idx = result.error.index or 0
        ls = layers[idx]
        loc, field = ls.at(result.error.param)
        return [Problem(where(loc, False), field, result.error.message, result.error.hint)], []
    if result.skipped_at is not None:
        i = result.skipped_at
        kind = layers[i].spec["type"]
        return [], [
            f"layer {i} ({kind}) has no shape function: shapes from layer {i} on are checked by "
            "`mnistkit validate --build` (or at the start of a run)"
        ]
    out = result.shapes[-1]
    if declared is not None and out != (declared,):
        ls = layers[-1]
        return [Problem(where(ls.loc, False), ls.field, *_output_mismatch(out, declared, recipe))], []
    return [], []


def _output_mismatch(out: Shape, num_classes: int, recipe: RecipeBase) -> tuple[str, str]:
    n = len(out)
    if n == 1:
        return (
            f"the model outputs {out[0]} values per sample, but {recipe.data.dataset} has "
            f"{num_classes} classes",
            f"set the last linear layer's out_features to {num_classes} (or leave that layer "
            "out: a list that does not end in a linear gets a classifier head appended)",
        )
    return (
        f"the model outputs shape {fmt(out)} per sample; a classifier needs ({num_classes},)",
        "reduce to one vector per sample before the classifier: flatten, adaptive_avgpool2d + "
        "flatten, attention_pool, or an lstm/gru with return: last",
    )


def static_notes(recipe: RecipeBase, reg: Registries) -> list[str]:
    """What static validation could not check for ``recipe`` (for ``mnistkit validate``)."""
    if recipe.model.layers is None and recipe.model.hidden is None:
        return []
    return check_model(recipe, reg, lambda loc, key: "")[1]


# ----------------------------------------------------------------------------- --build
def dry_run(recipe: RecipeBase, path: str | Path | None = None) -> list[LayerInfo]:
    """Build the real model and push a zero batch of 2 through it (eval mode, no gradients).

    Everything static inference cannot see (plugin layers, torch's own checks) shows up here;
    a failure becomes a :class:`RecipeError` naming the layer, its input shape and its line in
    ``path``, not a stack trace. Returns the built layers (for a summary).
    """
    import torch

    from mnistkit.layers import build_layer
    from mnistkit.registry import registries

    reg = registries()
    doc = _located(path)

    def problem(ls: LayerSpec | None, message: str, hint: str = "", param: str | None = None) -> RecipeError:
        loc, field = ls.at(param) if ls is not None else (("model",), "model")
        return RecipeError([Problem(_where(doc, loc, path), field, message, hint)])

    in_shape = input_shape(recipe, reg)
    if in_shape is None:
        raise RecipeError(
            [
                Problem(
                    _where(doc, ("data", "dataset"), path),
                    "data.dataset",
                    f"dataset {recipe.data.dataset!r} declares no input shape, so --build "
                    "cannot make a batch for it",
                    "the plugin should register the dataset with shape=(C, H, W) meta",
                )
            ]
        )
    declared = reg.datasets.get(recipe.data.dataset).meta.get("num_classes")
    layers = layer_specs(recipe, declared or PLACEHOLDER_CLASSES, reg)

    # Build layer by layer (same code as build_layers) to know which one fails.
    torch.manual_seed(recipe.seed)
    modules: list[torch.nn.Module] = []
    claimed: list[Shape] = []
    infos: list[LayerInfo] = []
    shape = tuple(in_shape)
    from mnistkit.layers import LayerInfo as _LayerInfo

    for i, ls in enumerate(layers):
        kind = ls.spec["type"]
        try:
            module, out = build_layer(ls.spec, shape, reg)
        except ShapeError as exc:
            raise problem(ls, exc.at(i, kind).message, exc.hint, exc.param) from None
        except Exception as exc:  # torch's own argument checks, or a plugin builder's bug
            raise problem(
                ls,
                f"layer {i} ({kind}): cannot be built for input {fmt(shape)}: "
                f"{type(exc).__name__}: {_first_line(exc)}",
            ) from None
        modules.append(module)
        claimed.append(tuple(out))
        infos.append(_LayerInfo(i, kind, tuple(out), sum(p.numel() for p in module.parameters())))
        shape = tuple(out)

    model = torch.nn.Sequential(*modules).eval()
    inputs: dict[int, Shape] = {}
    current: list[int] = [-1]

    def pre_hook(idx: int) -> Callable[..., None]:
        def hook(_m: Any, args: tuple[Any, ...]) -> None:
            current[0] = idx
            inputs[idx] = tuple(args[0].shape[1:])

        return hook

    def post_hook(idx: int) -> Callable[..., None]:
        # A builder (e.g. a plugin's) whose declared out_shape is not what its module produces
        # misleads every later layer and the summary: stop at the layer that lies.
        def hook(_m: Any, _args: tuple[Any, ...], out: Any) -> None:
            real = tuple(out.shape[1:])
            if real != claimed[idx]:
                raise _Mismatch(claimed[idx], real)

        return hook

    handles = [m.register_forward_pre_hook(pre_hook(i)) for i, m in enumerate(model)]
    handles += [m.register_forward_hook(post_hook(i)) for i, m in enumerate(model)]
    try:
        with torch.no_grad():
            y = model(torch.zeros((2, *in_shape)))
    except _Mismatch as exc:
        i = current[0]
        raise problem(
            layers[i],
            f"layer {i} ({layers[i].spec['type']}): its builder says it outputs "
            f"{fmt(exc.claimed)}, the forward pass gives {fmt(exc.real)}",
            "the layer's builder computes its out_shape wrongly",
        ) from None
    except Exception as exc:
        i = current[0]
        ls = layers[i] if i >= 0 else None
        kind = ls.spec["type"] if ls else "?"
        raise problem(
            ls,
            f"layer {i} ({kind}): forward pass failed on input {fmt(inputs.get(i, in_shape))} "
            f"(batch of 2): {type(exc).__name__}: {_first_line(exc)}",
        ) from None
    finally:
        for h in handles:
            h.remove()
    if declared is not None and tuple(y.shape[1:]) != (declared,):
        raise problem(layers[-1], *_output_mismatch(tuple(y.shape[1:]), declared, recipe))
    return infos


class _Mismatch(Exception):
    def __init__(self, claimed: Shape, real: Shape) -> None:
        self.claimed, self.real = claimed, real


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else ""


def _located(path: str | Path | None) -> Any:
    if path is None:
        return None
    from mnistkit.yamlio import load_file

    try:
        return load_file(Path(path))
    except RecipeError:
        return None  # it loaded a moment ago; positions are a nicety, not a requirement


def _where(doc: Any, loc: tuple[Any, ...], path: str | Path | None) -> str:
    if doc is not None:
        return str(doc.where(loc))
    return str(path) if path is not None else "<recipe>"
