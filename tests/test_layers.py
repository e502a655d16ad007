"""Layer vocabulary: every layer type builds, runs forward/backward, and its static shape function
(mnistkit.layers.shapes, pure Python) agrees with the real module's output shape."""

from __future__ import annotations

import random
from typing import Any

import pytest
import torch

from mnistkit.layers import shapes
from mnistkit.layers.modules import build_layer, build_layers
from mnistkit.layers.shapes import ShapeError, infer
from mnistkit.registry import registries

REG = registries()

# (type, params, per-sample input shape). Every built-in layer type needs at least one case
# (test_every_layer_type_is_covered), several for the ones with window/rnn arithmetic.
CASES: list[tuple[str, dict[str, Any], tuple[int, ...]]] = [
    ("linear", {"out_features": 7}, (12,)),
    ("linear", {"out_features": 5, "bias": False, "in_features": 12}, (4, 12)),  # per step
    ("conv1d", {"out_channels": 6, "kernel_size": 3}, (4, 20)),
    ("conv1d", {"out_channels": 4, "kernel_size": 5, "stride": 2, "padding": 1}, (2, 17)),
    ("conv1d", {"out_channels": 6, "kernel_size": 3, "dilation": 3, "groups": 2}, (4, 19)),
    ("conv2d", {"out_channels": 8, "kernel_size": 3, "padding": 1}, (1, 28, 28)),
    ("conv2d", {"out_channels": 4, "kernel_size": (3, 5), "stride": (2, 1)}, (3, 11, 13)),
    ("conv2d", {"out_channels": 4, "kernel_size": 3, "stride": 3, "padding": 2}, (2, 10, 7)),
    ("conv2d", {"out_channels": 6, "kernel_size": 2, "dilation": (2, 3), "groups": 3}, (3, 9, 9)),
    ("batchnorm1d", {}, (10,)),
    ("batchnorm1d", {"num_features": 6, "affine": False}, (6, 9)),
    ("batchnorm2d", {"momentum": 0.2}, (5, 6, 7)),
    ("maxpool1d", {"kernel_size": 2}, (3, 11)),
    ("maxpool1d", {"kernel_size": 3, "stride": 2, "padding": 1, "ceil_mode": True}, (3, 10)),
    ("maxpool1d", {"kernel_size": 2, "dilation": 2}, (2, 9)),
    ("maxpool2d", {"kernel_size": 2}, (4, 28, 28)),
    ("maxpool2d", {"kernel_size": 2}, (4, 7, 7)),  # odd sizes round down
    ("maxpool2d", {"kernel_size": 3, "stride": 2, "padding": 1, "ceil_mode": True}, (2, 14, 9)),
    ("maxpool2d", {"kernel_size": (2, 3), "stride": (1, 2), "dilation": 2}, (1, 9, 12)),
    ("avgpool1d", {"kernel_size": 3}, (2, 10)),
    ("avgpool1d", {"kernel_size": 4, "stride": 3, "padding": 2, "ceil_mode": True}, (2, 10)),
    ("avgpool2d", {"kernel_size": 2}, (3, 9, 8)),
    ("avgpool2d", {"kernel_size": 3, "stride": 2, "padding": 1, "ceil_mode": True}, (3, 8, 8)),
    ("adaptive_avgpool1d", {"output_size": 4}, (3, 11)),
    ("adaptive_avgpool2d", {"output_size": 1}, (5, 7, 7)),
    ("adaptive_avgpool2d", {"output_size": (2, 3)}, (5, 9, 10)),
    ("flatten", {}, (4, 5, 6)),
    ("dropout", {"p": 0.3}, (3, 5)),
    ("to_sequence", {}, (4, 8, 6)),
    ("to_sequence", {}, (4, 6)),
    ("lstm", {"hidden_size": 5}, (7, 3)),
    ("lstm", {"hidden_size": 4, "bidirectional": True, "return": "last"}, (6, 3)),
    ("lstm", {"hidden_size": 4, "num_layers": 2, "dropout": 0.2, "input_size": 3}, (6, 3)),
    ("gru", {"hidden_size": 5, "bidirectional": True}, (7, 3)),
    ("gru", {"hidden_size": 4, "num_layers": 3, "return": "last"}, (6, 2)),
    ("attention_pool", {}, (9, 6)),
    ("attention_pool", {"hidden_size": 3, "in_features": 6}, (9, 6)),
    ("softmax", {}, (10,)),
    ("log_softmax", {}, (4, 10)),
    ("relu", {}, (3, 4, 4)),
    ("leaky_relu", {"negative_slope": 0.2}, (5,)),
    ("tanh", {}, (6, 2)),
]


def _spec(kind: str, params: dict[str, Any]) -> dict[str, Any]:
    return {"type": kind, **params}


@pytest.mark.parametrize(("kind", "params", "in_shape"), CASES)
def test_layer_builds_runs_and_matches_static_shape(
    kind: str, params: dict[str, Any], in_shape: tuple[int, ...]
) -> None:
    torch.manual_seed(0)
    spec = _spec(kind, params)
    # What `validate` predicts without torch, checked against the real module's forward pass
    # (the builder's own shape comes from the same shape function, so it is no witness).
    static = infer([spec], in_shape, REG)
    assert static.error is None and len(static.shapes) == 1
    (out_shape,) = static.shapes
    module, _ = build_layer(spec, in_shape, REG)

    module.train()
    x = torch.randn(3, *in_shape, requires_grad=True)
    y = module(x)
    assert tuple(y.shape) == (3, *out_shape), f"{kind} {params}: static {out_shape}, real {tuple(y.shape)}"
    y.float().pow(2).sum().backward()  # pow: softmax's plain sum has a zero gradient
    assert x.grad is not None and torch.isfinite(x.grad).all()
    if any(p.requires_grad for p in module.parameters()):
        assert any(p.grad is not None for p in module.parameters())

    module.eval()
    with torch.no_grad():
        assert tuple(module(torch.zeros(2, *in_shape)).shape) == (2, *out_shape)


def test_every_layer_type_is_covered() -> None:
    assert {e.name for e in REG.layers} <= {kind for kind, _, _ in CASES}


def _value(param: Any, rng: random.Random) -> Any:
    """A random value inside a declared parameter's type and bounds (small, to keep builds fast)."""
    if param.choices:
        return rng.choice(param.choices)
    if param.type == "bool":
        return rng.random() < 0.5
    if param.type == "float":
        lo = param.ge if param.ge is not None else param.gt if param.gt is not None else 0.0
        hi = param.le if param.le is not None else param.lt if param.lt is not None else lo + 1.0
        return round(rng.uniform(lo, hi) * 0.999 + (1e-3 if param.gt is not None else 0.0), 3)
    lo = int(param.ge if param.ge is not None else 0)
    one = lambda: rng.randint(lo, lo + 4)  # noqa: E731
    if param.type == "int_or_pair" and rng.random() < 0.4:
        return (one(), one())
    return one()


def _random_case(entry: Any, rng: random.Random) -> tuple[dict[str, Any], tuple[int, ...]]:
    """Parameters drawn from the layer's declaration (nothing about the layer written here)."""
    params: dict[str, Any] = {}
    for name, param in entry.params.items():
        if param.nullable and rng.random() < 0.7:
            params[name] = None  # inferred sizes: mostly left to inference
        elif param.required or rng.random() < 0.6:
            params[name] = _value(param, rng)
    rank = rng.randint(1, 3)
    in_shape = tuple(rng.randint(1, 6) if axis == 0 else rng.randint(1, 12) for axis in range(rank))
    return params, in_shape


@pytest.mark.parametrize("entry", list(REG.layers), ids=lambda e: e.name)
def test_static_shapes_match_real_forward_passes_for_declared_parameters(entry: Any) -> None:
    """For many parameter sets drawn from each declaration, whatever `validate` accepts builds,
    runs, and has the output shape static inference promised; `validate` cannot pass a model that
    then fails (or changes shape) in torch."""
    rng = random.Random(entry.name)
    accepted = 0
    for _ in range(60):
        params, in_shape = _random_case(entry, rng)
        spec = {"type": entry.name, **params}
        static = infer([spec], in_shape, REG)
        if static.error is not None:
            continue
        accepted += 1
        (out_shape,) = static.shapes
        module, _ = build_layer(spec, in_shape, REG)
        with torch.no_grad():
            y = module.eval()(torch.randn(2, *in_shape))
        assert tuple(y.shape) == (2, *out_shape), f"{spec} on {in_shape}: static says {out_shape}"
        real = sum(p.numel() for p in module.parameters())
        assert static.parameters == real, (
            f"{spec} on {in_shape}: static count {static.parameters}, torch {real}"
        )
    assert accepted >= 5, f"{entry.name}: only {accepted} of 60 random parameter sets were valid"


def test_declared_defaults_reach_builder_and_shape_function() -> None:
    """The declaration is the one place for defaults: a builder and a shape function receive
    every declared parameter, filled in and renamed, whatever their own signatures say."""
    from torch import nn

    from mnistkit.registry import Param, Registries

    seen: list[tuple[str, dict[str, Any]]] = []

    def shape_fn(in_shape: tuple[int, ...], **p: Any) -> tuple[int, ...]:
        seen.append(("shape", p))
        return in_shape

    def builder(in_shape: tuple[int, ...], **p: Any) -> tuple[nn.Module, tuple[int, ...]]:
        seen.append(("build", p))
        return nn.Identity(), shape_fn(in_shape, **p)

    def old_style(
        in_shape: tuple[int, ...], *, std: float = 0.1, class_: int = 0
    ) -> tuple[nn.Module, tuple[int, ...]]:
        seen.append(("old", {"std": std, "class_": class_}))
        return nn.Identity(), in_shape

    reg = Registries()
    declared = {
        "std": Param("float", 0.25, "noise", ge=0),
        "class": Param("int", 3, "a keyword Python reserves", target_name="class_"),
    }
    reg.layers.register("noise", builder, "test layer", declared, shape=shape_fn)
    reg.layers.register("old_noise", old_style, "keyword-style builder (the old plugin way)", declared)

    build_layer({"type": "noise"}, (4,), reg)
    infer([{"type": "noise", "class": 5}], (4,), reg)
    build_layer({"type": "old_noise"}, (4,), reg)
    assert seen == [
        ("build", {"std": 0.25, "class_": 3}),
        ("shape", {"std": 0.25, "class_": 3}),
        ("shape", {"std": 0.25, "class_": 5}),
        ("old", {"std": 0.25, "class_": 3}),  # the declaration's default, not the signature's
    ]
    with pytest.raises(TypeError, match="missing required parameter"):
        build_layer({"type": "linear"}, (4,), REG)


@pytest.mark.parametrize("entry", list(REG.layers), ids=lambda e: e.name)
def test_built_in_layers_repeat_no_parameter(entry: Any) -> None:
    """Built-in builders and shape functions take ``(in_shape, **p)``: names and defaults are
    written once, in the declaration, so there is nothing to keep equal."""
    import inspect

    shape_fn = shapes.shape_function(entry.name, REG)
    assert shape_fn is not None, f"{entry.name}: built-in layers need a shape function"
    for fn in (entry.load(), shape_fn):
        kinds = [p.kind for p in inspect.signature(fn).parameters.values()]
        assert kinds == [inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.VAR_KEYWORD], fn


def test_pair_params_accept_lists_from_yaml() -> None:
    # YAML gives [3, 5]; pydantic turns int_or_pair lists into tuples, but builders must not care.
    module, out = build_layer({"type": "conv2d", "out_channels": 2, "kernel_size": [3, 5]}, (1, 10, 10), REG)
    assert out == (2, 8, 6)
    assert tuple(module(torch.zeros(1, 1, 10, 10)).shape) == (1, 2, 8, 6)


def test_to_sequence_puts_time_first() -> None:
    x = torch.arange(2 * 3 * 4 * 5, dtype=torch.float32).view(2, 3, 4, 5)  # (B, C, F, T)
    module, out = build_layer({"type": "to_sequence"}, (3, 4, 5), REG)
    y = module(x)
    assert out == (5, 12) and y.shape == (2, 5, 12)
    for t in range(5):  # step t holds every (channel, freq) value of frame t, channel-major
        assert torch.equal(y[:, t], x[:, :, :, t].reshape(2, 12))
    # The tutorial's x.view(B, -1, T) is not the same thing: time stays last.
    assert not torch.equal(y, x.view(2, -1, 5))


def test_lstm_last_is_final_state_of_each_direction() -> None:
    torch.manual_seed(0)
    seq, _ = build_layer(
        {"type": "lstm", "hidden_size": 4, "bidirectional": True, "return": "sequence"},
        (6, 3),
        REG,
    )
    last, _ = build_layer(
        {"type": "lstm", "hidden_size": 4, "bidirectional": True, "return": "last"}, (6, 3), REG
    )
    last.load_state_dict(seq.state_dict())
    x = torch.randn(2, 6, 3)
    full, final = seq(x), last(x)
    assert torch.allclose(final[:, :4], full[:, -1, :4])  # forward direction: last step
    assert torch.allclose(final[:, 4:], full[:, 0, 4:])  # backward direction: its last = t 0


def test_attention_pool_is_a_convex_combination_over_time() -> None:
    torch.manual_seed(0)
    module, out = build_layer({"type": "attention_pool", "hidden_size": 8}, (5, 3), REG)
    assert out == (3,)
    same = torch.randn(2, 1, 3).expand(2, 5, 3)
    assert torch.allclose(module(same), same[:, 0], atol=1e-6)  # weights sum to 1
    x = torch.randn(4, 5, 3)
    y = module(x)
    assert (y <= x.max(dim=1).values + 1e-6).all() and (y >= x.min(dim=1).values - 1e-6).all()


def test_parameter_counts_of_the_summary() -> None:
    specs = [
        {"type": "conv2d", "out_channels": 32, "kernel_size": 3, "padding": 1},
        {"type": "maxpool2d", "kernel_size": 2},
        {"type": "to_sequence"},
        {"type": "lstm", "hidden_size": 128, "bidirectional": True},
        {"type": "attention_pool", "hidden_size": 64},
        {"type": "linear", "out_features": 10},
    ]
    _, infos = build_layers(specs, (1, 64, 64), REG)
    assert [i.out_shape for i in infos] == [
        (32, 64, 64),
        (32, 32, 32),
        (32, 1024),
        (32, 256),
        (256,),
        (10,),
    ]
    lstm_params = 2 * 4 * 128 * (1024 + 128 + 2)  # 2 directions x 4 gates x (W_ih, W_hh, 2 biases)
    assert [i.params for i in infos] == [320, 0, 0, lstm_params, 256 * 64 + 64 + 65, 2570]


@pytest.mark.parametrize(
    ("kind", "params", "in_shape", "expected"),
    [
        (
            "lstm",
            {"hidden_size": 8},
            (64, 32, 8),
            "expects a (time, features) sequence, gets (64, 32, 8); add {type: to_sequence} before it",
        ),
        ("gru", {"hidden_size": 8}, (10,), "a flat vector has no time axis"),
        ("linear", {"out_features": 10}, (64, 7, 7), "add {type: flatten} before it"),
        (
            "linear",
            {"out_features": 10, "in_features": 3136},
            (2048,),
            "expects 3136 inputs (in_features: 3136), gets 2048",
        ),
        ("conv2d", {"out_channels": 4, "kernel_size": 3}, (784,), "conv2d must come before flatten"),
        (
            "conv2d",
            {"out_channels": 4, "kernel_size": 3, "in_channels": 3},
            (1, 8, 8),
            "expects 3 input channels",
        ),
        (
            "conv2d",
            {"out_channels": 4, "kernel_size": 5},
            (1, 4, 9),
            "kernel_size 5 is larger than the input's height 4",
        ),
        (
            "conv1d",
            {"out_channels": 5, "kernel_size": 3, "groups": 2},
            (4, 9),
            "out_channels 5 is not divisible by groups 2",
        ),
        ("conv1d", {"out_channels": 4, "kernel_size": 3}, (1, 8, 8), "use the 2-d layer (conv2d)"),
        ("maxpool2d", {"kernel_size": 2}, (64, 1, 1), "kernel_size 2 is larger than the input's height 1"),
        ("maxpool2d", {"kernel_size": 2, "padding": 2}, (1, 8, 8), "padding 2 is more than half"),
        (  # torch halves the kernel_size, not the dilated window
            "maxpool1d",
            {"kernel_size": 3, "dilation": 2, "padding": 2},
            (2, 20),
            "padding 2 is more than half of kernel_size 3",
        ),
        ("avgpool1d", {"kernel_size": 4}, (2, 3), "kernel_size 4 is larger than the input's length 3"),
        ("batchnorm2d", {}, (5, 5), "expects a (channels, height, width) input"),
        ("batchnorm1d", {"num_features": 8}, (6, 9), "expects 8 features/channels (num_features: 8), gets 6"),
        ("lstm", {"hidden_size": 8, "dropout": 0.3}, (5, 4), "num_layers is 1"),
        ("lstm", {"hidden_size": 8, "input_size": 16}, (5, 4), "expects 16 features per step"),
        ("attention_pool", {}, (12,), "put it after an lstm/gru"),
        ("to_sequence", {}, (12,), "expects a (channels, freq, time) or (channels, time) map"),
    ],
)
def test_shape_errors_say_what_is_expected(
    kind: str, params: dict[str, Any], in_shape: tuple[int, ...], expected: str
) -> None:
    spec = _spec(kind, params)
    with pytest.raises(ShapeError) as static:
        shapes.shape_function(kind, REG)(in_shape, **shapes.layer_params(spec, REG))  # type: ignore[misc]
    assert expected in static.value.message
    # The run-time builder refuses the same input with the same explanation, naming the layer
    # (checked against the expected text, not against the shape function's own message).
    with pytest.raises(ShapeError) as built:
        build_layers([{"type": "relu"}, spec], in_shape, REG)
    assert built.value.message.startswith(f"layer 1 ({kind}): ") and expected in built.value.message
    assert built.value.index == 1 and built.value.layer_type == kind


def test_build_layers_names_the_failing_layer() -> None:
    specs = [
        {"type": "conv2d", "out_channels": 4, "kernel_size": 3},
        {"type": "relu"},
        {"type": "linear", "out_features": 10},
    ]
    with pytest.raises(ShapeError, match=r"^layer 2 \(linear\): expects a flat"):
        build_layers(specs, (1, 8, 8), REG)
