"""Layer builders for ``model.layers`` and the MLP shorthand (torch lives here, not in recipes).

Each builder is ``f(in_shape, **params) -> (module, out_shape)``: ``in_shape`` is the per-sample
shape (no batch dimension) coming out of the previous layer, so a builder infers the sizes a person
would not choose (``in_features``, ``in_channels``, ``input_size``, ``num_features``); ``params``
holds every parameter the layer's declaration lists (:mod:`mnistkit.registry.layer_builtins`),
defaults filled in and renamed by ``target_name`` (:meth:`mnistkit.registry.core.Entry.arguments`),
so builders repeat no names or defaults. Every builder first calls its pure-Python twin in
:mod:`mnistkit.layers.shapes`, which checks the input and computes the output shape: ``mnistkit
validate`` (no torch) and the real build report the same errors, in the same words.
:func:`iter_layers` is the one loop that builds a layer list (runs, ``eval``/``predict`` and
``validate --build`` all go through it).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import nn

from mnistkit.layers import shapes as S
from mnistkit.layers.shapes import LayerInfo, Shape, ShapeError
from mnistkit.registry.core import Registries

__all__ = ["LayerInfo", "Shape", "ShapeError", "build_layer", "build_layers", "iter_layers"]

Built = tuple[nn.Module, Shape]


# ------------------------------------------------------------------------------ modules
class ToSequence(nn.Module):
    """``(B, C, F, T)`` → ``(B, T, C*F)`` (and ``(B, C, T)`` → ``(B, T, C)``).

    Time must become the sequence axis *before* channels and frequency are merged: permute, then
    flatten. ``x.view(B, -1, T)`` (the reference tutorial) keeps time last, and a ``batch_first``
    RNN would then read the C*F frequency rows as time steps.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 4:
            return x.permute(0, 3, 1, 2).flatten(2)
        return x.transpose(1, 2)


class _Recurrent:
    """Output selection shared by :class:`LSTM` and :class:`GRU` (batch_first)."""

    bidirectional: bool
    return_last: bool

    def _select(self, out: torch.Tensor, h_n: torch.Tensor) -> torch.Tensor:
        if not self.return_last:
            return out  # (B, T, H * dirs)
        # h_n is (layers * dirs, B, H): the top layer's final state of each direction; for the
        # backward direction that is its state after reading the whole clip, i.e. at t = 0.
        if self.bidirectional:
            return torch.cat((h_n[-2], h_n[-1]), dim=1)
        return h_n[-1]


class LSTM(_Recurrent, nn.LSTM):
    """``nn.LSTM(batch_first=True)`` returning the full sequence or the last step only."""

    def __init__(self, *args: Any, return_last: bool = False, **kwargs: Any) -> None:
        super().__init__(*args, batch_first=True, **kwargs)
        self.return_last = return_last

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        out, (h_n, _) = super().forward(x)
        return self._select(out, h_n)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", return={'last' if self.return_last else 'sequence'}"


class GRU(_Recurrent, nn.GRU):
    """``nn.GRU(batch_first=True)`` returning the full sequence or the last step only."""

    def __init__(self, *args: Any, return_last: bool = False, **kwargs: Any) -> None:
        super().__init__(*args, batch_first=True, **kwargs)
        self.return_last = return_last

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        out, h_n = super().forward(x)
        return self._select(out, h_n)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", return={'last' if self.return_last else 'sequence'}"


class AttentionPool(nn.Module):
    """Attention pooling over time: ``(B, T, F)`` → ``(B, F)``.

    score_t = Linear(hidden→1)(tanh(Linear(F→hidden)(x_t))); weights = softmax over t;
    output = Σ_t weight_t · x_t (the reference tutorial's pooling).
    """

    def __init__(self, in_features: int, hidden_size: int) -> None:
        super().__init__()
        self.score = nn.Sequential(nn.Linear(in_features, hidden_size), nn.Tanh(), nn.Linear(hidden_size, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weights = torch.softmax(self.score(x), dim=1)  # (B, T, 1): softmax over time
        return (weights * x).sum(dim=1)


# ----------------------------------------------------------------------------- builders
# Called as f(in_shape, **p) like the shape functions, with the same ``p``: every declared
# parameter (mnistkit.registry.layer_builtins), defaults filled in, renamed by target_name. Where
# the recipe's names are torch's, ``p`` goes to the torch class as is, less the inferred sizes.


def _torch(p: dict[str, Any], *inferred: str) -> dict[str, Any]:
    """``p`` without the sizes inferred from ``in_shape`` (torch takes those positionally)."""
    return {k: v for k, v in p.items() if k not in inferred}


def _torch_builder(
    cls: Callable[..., nn.Module], shape_fn: Callable[..., Shape], inferred: str = "", axis: int = 0
) -> Callable[..., Built]:
    """The builder of a layer whose recipe keywords are the torch class's own: ``cls(**p)``, or
    ``cls(in_shape[axis], **p)`` less ``inferred`` when torch needs a size the recipe infers."""

    def build(in_shape: Shape, **p: Any) -> Built:
        out = shape_fn(in_shape, **p)  # checks first: the same sentence as `mnistkit validate`
        if not inferred:
            return cls(**p), out
        return cls(in_shape[axis], **_torch(p, inferred)), out

    return build


linear = _torch_builder(nn.Linear, S.linear, "in_features", axis=-1)
conv1d = _torch_builder(nn.Conv1d, S.conv1d, "in_channels")
conv2d = _torch_builder(nn.Conv2d, S.conv2d, "in_channels")
batchnorm1d = _torch_builder(nn.BatchNorm1d, S.batchnorm1d, "num_features")
batchnorm2d = _torch_builder(nn.BatchNorm2d, S.batchnorm2d, "num_features")
maxpool1d = _torch_builder(nn.MaxPool1d, S.maxpool1d)
maxpool2d = _torch_builder(nn.MaxPool2d, S.maxpool2d)
avgpool1d = _torch_builder(nn.AvgPool1d, S.avgpool1d)
avgpool2d = _torch_builder(nn.AvgPool2d, S.avgpool2d)
adaptive_avgpool1d = _torch_builder(nn.AdaptiveAvgPool1d, S.adaptive_avgpool1d)
adaptive_avgpool2d = _torch_builder(nn.AdaptiveAvgPool2d, S.adaptive_avgpool2d)
flatten = _torch_builder(nn.Flatten, S.flatten)
dropout = _torch_builder(nn.Dropout, S.dropout)
to_sequence = _torch_builder(ToSequence, S.to_sequence)


def softmax(in_shape: Shape, **p: Any) -> Built:
    return nn.Softmax(dim=-1), S.softmax(in_shape, **p)


def log_softmax(in_shape: Shape, **p: Any) -> Built:
    return nn.LogSoftmax(dim=-1), S.log_softmax(in_shape, **p)


def lstm(in_shape: Shape, **p: Any) -> Built:
    out = S.lstm(in_shape, **p)
    return LSTM(in_shape[-1], return_last=p["return_"] == "last", **_torch(p, "input_size", "return_")), out


def gru(in_shape: Shape, **p: Any) -> Built:
    out = S.gru(in_shape, **p)
    return GRU(in_shape[-1], return_last=p["return_"] == "last", **_torch(p, "input_size", "return_")), out


def attention_pool(in_shape: Shape, **p: Any) -> Built:
    out = S.attention_pool(in_shape, **p)
    return AttentionPool(in_shape[-1], p["hidden_size"]), out


# ------------------------------------------------------------------------------- assembly
def build_layer(spec: dict[str, Any], in_shape: Shape, reg: Registries) -> Built:
    """Build one ``{type: ..., **params}`` spec for ``in_shape`` (activations keep the shape)."""
    kind = spec["type"]
    params = S.layer_params(spec, reg)
    if kind in reg.activations:
        return reg.activations.create(kind, **params), tuple(in_shape)
    module, out = reg.layers.get(kind).load()(tuple(in_shape), **params)
    return module, tuple(out)


def iter_layers(
    specs: list[dict[str, Any]], in_shape: Shape, reg: Registries
) -> Iterator[tuple[nn.Module, LayerInfo]]:
    """Build ``specs`` (``{type: ..., **params}`` dicts) in order, tracking the shape: the one loop.

    Yields each module with its :class:`LayerInfo`, so a caller that must name a failing layer
    (:func:`mnistkit.build.dry_run.dry_run`) knows it: the layer after the last one yielded. A
    :class:`ShapeError` comes out prefixed with the layer (``layer 4 (linear): expects ...``);
    anything else a builder raises comes out unchanged.
    """
    shape = tuple(in_shape)
    for i, spec in enumerate(specs):
        try:
            module, out = build_layer(spec, shape, reg)
        except ShapeError as exc:
            raise exc.at(i, spec["type"]) from None
        yield module, LayerInfo(i, spec["type"], out, sum(p.numel() for p in module.parameters()))
        shape = out


def build_layers(
    specs: list[dict[str, Any]], in_shape: Shape, reg: Registries
) -> tuple[nn.Sequential, list[LayerInfo]]:
    """The layers of :func:`iter_layers` as one ``nn.Sequential``, with the summary rows.

    Raises ShapeError("layer 4 (linear): expects ...") naming the failing layer.
    """
    built = list(iter_layers(specs, in_shape, reg))
    return nn.Sequential(*(m for m, _ in built)), [info for _, info in built]
