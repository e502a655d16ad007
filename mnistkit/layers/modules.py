"""Layer builders for ``model.layers`` and the MLP shorthand (torch lives here, not in recipes).

Each builder is ``f(in_shape, **params) -> (module, out_shape)``: ``in_shape`` is the per-sample
shape (no batch dimension) coming out of the previous layer, so a builder infers the sizes a person
would not choose (``in_features``, ``in_channels``, ``input_size``, ``num_features``). Every builder
first calls its pure-Python twin in :mod:`mnistkit.layers.shapes`, which checks the input and computes the
output shape: ``mnistkit validate`` (no torch) and the real build report the same errors, in the
same words.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from mnistkit.layers import shapes as S
from mnistkit.layers.shapes import IntOrPair, LayerInfo, Shape, ShapeError
from mnistkit.registry.core import Registries

__all__ = ["LayerInfo", "Shape", "ShapeError", "build_layer", "build_layers"]

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
def linear(in_shape: Shape, *, out_features: int, bias: bool = True, in_features: int | None = None) -> Built:
    out = S.linear(in_shape, out_features=out_features, bias=bias, in_features=in_features)
    return nn.Linear(in_shape[-1], out_features, bias=bias), out


def flatten(in_shape: Shape) -> Built:
    return nn.Flatten(), S.flatten(in_shape)


def dropout(in_shape: Shape, *, p: float = 0.5) -> Built:
    return nn.Dropout(p), S.dropout(in_shape, p=p)


def softmax(in_shape: Shape) -> Built:
    return nn.Softmax(dim=-1), S.softmax(in_shape)


def log_softmax(in_shape: Shape) -> Built:
    return nn.LogSoftmax(dim=-1), S.log_softmax(in_shape)


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
) -> Built:
    kw = dict(stride=stride, padding=padding, dilation=dilation, groups=groups, bias=bias)
    out = S.conv1d(
        in_shape, out_channels=out_channels, kernel_size=kernel_size, in_channels=in_channels, **kw
    )
    return nn.Conv1d(in_shape[0], out_channels, kernel_size, **kw), out


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
) -> Built:
    kw = dict(stride=stride, padding=padding, dilation=dilation, groups=groups, bias=bias)
    out = S.conv2d(
        in_shape, out_channels=out_channels, kernel_size=kernel_size, in_channels=in_channels, **kw
    )
    return nn.Conv2d(in_shape[0], out_channels, kernel_size, **kw), out  # type: ignore[arg-type]


def batchnorm1d(
    in_shape: Shape,
    *,
    eps: float = 1e-5,
    momentum: float = 0.1,
    affine: bool = True,
    num_features: int | None = None,
) -> Built:
    out = S.batchnorm1d(in_shape, eps=eps, momentum=momentum, affine=affine, num_features=num_features)
    return nn.BatchNorm1d(in_shape[0], eps=eps, momentum=momentum, affine=affine), out


def batchnorm2d(
    in_shape: Shape,
    *,
    eps: float = 1e-5,
    momentum: float = 0.1,
    affine: bool = True,
    num_features: int | None = None,
) -> Built:
    out = S.batchnorm2d(in_shape, eps=eps, momentum=momentum, affine=affine, num_features=num_features)
    return nn.BatchNorm2d(in_shape[0], eps=eps, momentum=momentum, affine=affine), out


def maxpool1d(
    in_shape: Shape,
    *,
    kernel_size: int,
    stride: int | None = None,
    padding: int = 0,
    dilation: int = 1,
    ceil_mode: bool = False,
) -> Built:
    kw = dict(kernel_size=kernel_size, stride=stride, padding=padding, dilation=dilation, ceil_mode=ceil_mode)
    return nn.MaxPool1d(**kw), S.maxpool1d(in_shape, **kw)  # type: ignore[arg-type]


def maxpool2d(
    in_shape: Shape,
    *,
    kernel_size: IntOrPair,
    stride: IntOrPair | None = None,
    padding: IntOrPair = 0,
    dilation: IntOrPair = 1,
    ceil_mode: bool = False,
) -> Built:
    kw = dict(kernel_size=kernel_size, stride=stride, padding=padding, dilation=dilation, ceil_mode=ceil_mode)
    return nn.MaxPool2d(**kw), S.maxpool2d(in_shape, **kw)  # type: ignore[arg-type]


def avgpool1d(
    in_shape: Shape,
    *,
    kernel_size: int,
    stride: int | None = None,
    padding: int = 0,
    ceil_mode: bool = False,
    count_include_pad: bool = True,
) -> Built:
    kw = dict(
        kernel_size=kernel_size,
        stride=stride,
        padding=padding,
        ceil_mode=ceil_mode,
        count_include_pad=count_include_pad,
    )
    return nn.AvgPool1d(**kw), S.avgpool1d(in_shape, **kw)  # type: ignore[arg-type]


def avgpool2d(
    in_shape: Shape,
    *,
    kernel_size: IntOrPair,
    stride: IntOrPair | None = None,
    padding: IntOrPair = 0,
    ceil_mode: bool = False,
    count_include_pad: bool = True,
) -> Built:
    kw = dict(
        kernel_size=kernel_size,
        stride=stride,
        padding=padding,
        ceil_mode=ceil_mode,
        count_include_pad=count_include_pad,
    )
    return nn.AvgPool2d(**kw), S.avgpool2d(in_shape, **kw)  # type: ignore[arg-type]


def adaptive_avgpool1d(in_shape: Shape, *, output_size: int) -> Built:
    out = S.adaptive_avgpool1d(in_shape, output_size=output_size)
    return nn.AdaptiveAvgPool1d(output_size), out


def adaptive_avgpool2d(in_shape: Shape, *, output_size: IntOrPair) -> Built:
    out = S.adaptive_avgpool2d(in_shape, output_size=output_size)
    return nn.AdaptiveAvgPool2d(output_size), out


def to_sequence(in_shape: Shape) -> Built:
    return ToSequence(), S.to_sequence(in_shape)


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
) -> Built:
    kw = dict(num_layers=num_layers, bidirectional=bidirectional, dropout=dropout, bias=bias)
    out = S.lstm(in_shape, hidden_size=hidden_size, return_=return_, input_size=input_size, **kw)
    return LSTM(in_shape[-1], hidden_size, return_last=return_ == "last", **kw), out


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
) -> Built:
    kw = dict(num_layers=num_layers, bidirectional=bidirectional, dropout=dropout, bias=bias)
    out = S.gru(in_shape, hidden_size=hidden_size, return_=return_, input_size=input_size, **kw)
    return GRU(in_shape[-1], hidden_size, return_last=return_ == "last", **kw), out


def attention_pool(in_shape: Shape, *, hidden_size: int = 64, in_features: int | None = None) -> Built:
    out = S.attention_pool(in_shape, hidden_size=hidden_size, in_features=in_features)
    return AttentionPool(in_shape[-1], hidden_size), out


# ------------------------------------------------------------------------------- assembly
def build_layer(spec: dict[str, Any], in_shape: Shape, reg: Registries) -> Built:
    """Build one ``{type: ..., **params}`` spec for ``in_shape`` (activations keep the shape)."""
    kind = spec["type"]
    params = S.layer_params(spec, reg)
    if kind in reg.activations:
        return reg.activations.create(kind, **params), tuple(in_shape)
    module, out = reg.layers.get(kind).load()(tuple(in_shape), **params)
    return module, tuple(out)


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
        try:
            module, out = build_layer(spec, shape, reg)
        except ShapeError as exc:
            raise exc.at(i, spec["type"]) from None
        modules.append(module)
        infos.append(LayerInfo(i, spec["type"], out, sum(p.numel() for p in module.parameters())))
        shape = out
    return nn.Sequential(*modules), infos
