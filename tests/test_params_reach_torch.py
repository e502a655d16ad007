"""Every declared parameter of every registry entry reaches the torch object that is built (issue 17).

A parameter dropped on its way to torch (``loss.label_smoothing`` never given to
``CrossEntropyLoss``, a scheduler factory ignoring ``gamma``) validates, trains and reports
numbers; nothing looks wrong. This test walks every registry, and for every entry and every
parameter it declares builds the object twice through the builders a run uses
(:mod:`mnistkit.build.components`, from a validated recipe): once with the parameter at its
baseline value, once at another value. The two built objects must differ where torch shows the
parameter: a loss's value on fixed logits, an optimizer's ``param_groups`` and the weights after
three steps, a schedule's learning rate and momentum over six epochs stepped as the training
loop steps it, a model's outputs and state, an augmentation's output on a fixed batch.

So a new entry, or a new parameter, is covered the day it is added. Where the generic choice of
"another value" cannot show a parameter, the test fails and says what to add here: a value in
``VALUES``, a context in ``CONTEXT``, a layer input in ``LAYER_INPUTS``, or a reason in
``INFERRED``. A new kind of registry fails until it has a site in ``SITES``.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import torch

from mnistkit.build.components import build_augment, build_loss, build_model, build_optimizer, build_schedule
from mnistkit.errors import RecipeError
from mnistkit.layers.shapes import ShapeError
from mnistkit.recipe.schema import load_recipe_text
from mnistkit.registry import Entry, Param, Registries, registries
from mnistkit.registry.builtins import register_builtins

IN_SHAPE = (1, 8, 8)  # the digits the recipes below name
CLASSES = 10
EPOCHS, STEPS = 6, 4  # a schedule's length: epochs x optimizer steps per epoch

# Another value where the generic one (x2 or /2 inside the bounds, a bound's half from 0, the
# other bool or choice) cannot show the parameter. Key: (kind, entry, parameter).
VALUES: dict[tuple[str, str, str], list[Any]] = {
    # x2 (40) or /2 (10): softplus differs from x above 10 by at most 5e-5, invisible in float32.
    ("activations", "softplus", "threshold"): [1.0],
    # The default (None) means "= kernel_size"; 1 overlaps the windows.
    ("layers", "maxpool1d", "stride"): [1],
    ("layers", "maxpool2d", "stride"): [1],
    ("layers", "avgpool1d", "stride"): [1],
    ("layers", "avgpool2d", "stride"): [1],
    # one weight per class (the digits' 10), not all equal: equal weights leave the mean as it is
    ("losses", "cross_entropy", "class_weights"): [[float(i) for i in range(1, CLASSES + 1)]],
    ("losses", "nll", "class_weights"): [[float(i) for i in range(1, CLASSES + 1)]],
}

# Values of *other* parameters a parameter needs to show at all. Key: (kind, entry).
CONTEXT: dict[tuple[str, str], dict[str, Any]] = {
    # dropout acts between stacked recurrent layers only
    ("layers", "lstm"): {"num_layers": 2},
    ("layers", "gru"): {"num_layers": 2},
    # count_include_pad only matters with padding; ceil_mode only where the last window is partial
    # and starts inside the input: (8 + 2 - 3) / 2 + 1 = 4.5 windows
    ("layers", "avgpool1d"): {"padding": 1, "stride": 2},
    ("layers", "avgpool2d"): {"padding": 1, "stride": 2},
    # groups: 2 groups need an even number of output channels
    ("layers", "conv1d"): {"out_channels": 4},
    ("layers", "conv2d"): {"out_channels": 4},
    # nesterov needs momentum
    ("optimizers", "sgd"): {"momentum": 0.9},
}

# What a layer is put after, tried in order until a value shows: the digits' (1, 8, 8) image, a
# (time 8, features 5) sequence (not square: time and features cannot be mixed up unseen), a
# (8, 8) sequence, a flat (64,) vector, a 4-channel image (for groups).
LAYER_INPUTS: list[list[dict[str, Any]]] = [
    [],
    [{"type": "to_sequence"}, {"type": "linear", "out_features": 5}],
    [{"type": "to_sequence"}],
    [{"type": "flatten"}],
    [{"type": "conv2d", "out_channels": 4, "kernel_size": 1}],
]

# Sizes inferred from the input: a given value is only compared with the inferred one (the right
# value builds the same module by design), so what reaches the check is a wrong value, refused.
INFERRED = {"in_features", "in_channels", "num_features", "input_size"}

# A recipe around the parameter: digits, a small MLP, six epochs.
BASE: dict[str, Any] = {
    "name": "params",
    "seed": 0,
    "data": {"dataset": "digits", "batch_size": 8},
    "model": {"hidden": [16]},
    "epochs": EPOCHS,
}


# ------------------------------------------------------------------------- another value
def _bounds(p: Param) -> tuple[float | None, float | None]:
    lo = p.ge if p.ge is not None else p.gt
    hi = p.le if p.le is not None else p.lt
    return lo, hi


def _inside(p: Param, v: float) -> bool:
    return (
        (p.ge is None or v >= p.ge)
        and (p.gt is None or v > p.gt)
        and (p.le is None or v <= p.le)
        and (p.lt is None or v < p.lt)
    )


def _scalar_others(p: Param, kind: str, current: Any) -> list[Any]:
    lo, hi = _bounds(p)
    if kind == "float":
        if current is None or current == 0:
            base = hi if hi is not None else (lo + 1.0 if lo is not None else 1.0)
            cands = [base / 2 if hi is not None else base, 0.5, 2.0]
        else:
            cands = [current * 2, current / 2]
        return list(dict.fromkeys(float(v) for v in cands if _inside(p, v) and v != current))
    # int
    start = int(current) if current is not None else int(lo if lo is not None else 0)
    cands = [start + 1, start - 1, start + 2] if current is not None else [start + 2, start + 1, start]
    return list(dict.fromkeys(v for v in cands if _inside(p, v) and v != current))


def other_values(kind: str, name: str, pname: str, p: Param, current: Any) -> list[Any]:
    """Values for ``pname`` other than ``current``, inside its declaration, to try in order."""
    if (kind, name, pname) in VALUES:
        return VALUES[(kind, name, pname)]
    if p.choices:
        return [c for c in p.choices if c != current]
    if p.type == "bool":
        return [not current]
    if p.type in ("float", "int"):
        return _scalar_others(p, p.type, current)
    if p.type == "int_or_pair":
        return _scalar_others(p, "int", current if not isinstance(current, tuple | list) else None)
    if p.type in ("float_pair", "int_pair"):
        item = "float" if p.type == "float_pair" else "int"
        pair = list(current) if current is not None else [None, None]
        firsts, seconds = (_scalar_others(p, item, c) for c in pair)
        return [[a, b] for a, b in zip(firsts, seconds, strict=False) if a <= b]
    raise AssertionError(
        f"{kind}.{name}.{pname}: this test cannot choose a value of type {p.type!r}; add one to "
        "VALUES in tests/test_params_reach_torch.py"
    )


def baseline(kind: str, entry: Entry) -> dict[str, Any]:
    """The entry's parameters for the baseline build: required ones chosen, CONTEXT applied."""
    params: dict[str, Any] = {}
    for pname, p in entry.params.items():
        if p.required:
            params[pname] = other_values(kind, entry.name, pname, p, None)[0]
    return {**params, **CONTEXT.get((kind, entry.name), {})}


# ------------------------------------------------------------------- building and observing
def recipe_of(doc: dict[str, Any], reg: Registries) -> Any:
    return load_recipe_text(json.dumps(doc), "<params test>", reg=reg)


def attributes(module: torch.nn.Module) -> list[dict[str, Any]]:
    """The public settings torch keeps on every (sub)module: negative_slope, stride, inplace..."""
    return [
        {k: v for k, v in vars(m).items() if not k.startswith("_") and k != "training"}
        for m in module.modules()
    ]


def run_outputs(model: torch.nn.Module, x: torch.Tensor) -> list[Any]:
    """Every module's settings, every layer's output in train mode (seeded: dropout), the state
    after it (running statistics), the eval-mode output."""
    seen: list[Any] = [attributes(model)]
    torch.manual_seed(1)
    model.train()
    h = x
    for m in model:  # type: ignore[attr-defined]
        h = m(h)
        seen.append(h.detach().clone())
    seen.append({k: v.clone() for k, v in model.state_dict().items()})
    model.eval()
    with torch.no_grad():
        seen.append(model(x))
    return seen


def observe_model(doc: dict[str, Any], reg: Registries) -> list[Any]:
    recipe = recipe_of(doc, reg)
    torch.manual_seed(0)
    model, _ = build_model(recipe, IN_SHAPE, CLASSES, reg)
    x = torch.linspace(-30, 30, 2 * 64).reshape(2, *IN_SHAPE)
    return run_outputs(model, x)


def observe_loss(doc: dict[str, Any], reg: Registries) -> list[Any]:
    recipe = recipe_of(doc, reg)
    loss = build_loss(recipe, reg)
    logits = torch.randn(6, CLASSES, generator=torch.Generator().manual_seed(0))
    if reg.losses.get(recipe.loss.name).meta.get("expects") == "log_probs":
        logits = torch.log_softmax(logits, 1)
    return [attributes(loss), loss(logits, torch.arange(6) % CLASSES)]


def _small_model(recipe: Any, reg: Registries) -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model(recipe, IN_SHAPE, CLASSES, reg)[0]


def observe_optimizer(doc: dict[str, Any], reg: Registries) -> list[Any]:
    recipe = recipe_of(doc, reg)
    model = _small_model(recipe, reg)
    opt = build_optimizer(recipe, model, reg)
    seen: list[Any] = [{k: v for k, v in opt.param_groups[0].items() if k != "params"}]
    x = torch.linspace(-1, 1, 4 * 64).reshape(4, *IN_SHAPE)
    for _ in range(3):
        opt.zero_grad()
        model(x).pow(2).mean().backward()
        opt.step()
    seen.append([p.detach().clone() for p in model.parameters()])
    return seen


def epoch_metrics(epoch: int) -> dict[str, float]:
    """Per-epoch metrics for metric-driven schedules: the losses and accuracies that stay flat
    (test_loss, test_acc: a plateau) and the ones that keep improving differ, so which one a
    schedule watches shows."""
    return {
        "train_loss": 1 / epoch,
        "test_loss": 1.0,
        "test_acc": 0.5,
        "val_loss": 1 / epoch,
        "val_acc": epoch,
    }


def observe_schedule(doc: dict[str, Any], reg: Registries) -> list[Any]:
    doc = {**doc, "optimizer": {"name": "sgd", "lr": 0.1, "momentum": 0.9}}
    recipe = recipe_of(doc, reg)
    opt = build_optimizer(recipe, _small_model(recipe, reg), reg)
    schedule = build_schedule(recipe, opt, STEPS, reg)
    seen = []
    group = opt.param_groups[0]
    for epoch in range(1, EPOCHS + 1):  # stepped as the training loop steps it
        for _ in range(STEPS):
            opt.step()
            schedule.after_step()
            seen.append((group["lr"], group["momentum"]))
        schedule.after_epoch(epoch_metrics(epoch))
        seen.append((group["lr"], group["momentum"]))
    return seen


def observe_augment(doc: dict[str, Any], reg: Registries) -> list[Any]:
    recipe = recipe_of(doc, reg)
    augment = build_augment(recipe, reg)
    assert augment is not None
    x = torch.randint(0, 256, (32, *IN_SHAPE), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    return [augment(x, torch.Generator().manual_seed(1))]


def _with(key: str, value: Any) -> dict[str, Any]:
    """BASE with ``key`` (``loss``, ``data.augment``) set to ``value``."""
    out = json.loads(json.dumps(BASE))
    head, _, sub = key.partition(".")
    if sub:
        out[head][sub] = value
    else:
        out[head] = value
    return out


HEAD = {"type": "linear", "out_features": CLASSES}  # an activation may not end the list
Site = tuple[str, Callable[[str, dict[str, Any]], list[dict[str, Any]]], Callable[..., list[Any]]]

# kind -> the places in a recipe where its entries are used: (label, the recipe(s) that use the
# entry with these parameters, how to observe the built object). Layers have several inputs.
SITES: dict[str, list[Site]] = {
    "losses": [("loss", lambda n, p: [_with("loss", {"name": n, **p})], observe_loss)],
    "optimizers": [("optimizer", lambda n, p: [_with("optimizer", {"name": n, **p})], observe_optimizer)],
    "schedulers": [("scheduler", lambda n, p: [_with("scheduler", {"name": n, **p})], observe_schedule)],
    "activations": [
        (
            "model.activation",
            lambda n, p: [_with("model", {"hidden": [16], "activation": {"name": n, **p}})],
            observe_model,
        ),
        (
            "model.layers",
            lambda n, p: [_with("model", {"layers": [{"type": "flatten"}, {"type": n, **p}, HEAD]})],
            observe_model,
        ),
    ],
    "layers": [
        (
            "model.layers",
            lambda n, p: [
                _with("model", {"layers": [*pre, {"type": n, **p}, {"type": "flatten"}]})
                for pre in LAYER_INPUTS
            ],
            observe_model,
        )
    ],
    "augmentations": [
        ("data.augment", lambda n, p: [_with("data.augment", [{"type": n, **p}])], observe_augment)
    ],
}
# Registries whose entries build no torch object from declared parameters.
NO_PARAMS = {"datasets": "data sources: a recipe sets their options as data.* keys, tested with the data"}


# ------------------------------------------------------------------------------ the check
def same(a: Any, b: Any) -> bool:
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return (
            isinstance(a, torch.Tensor)
            and isinstance(b, torch.Tensor)
            and a.shape == b.shape
            and a.dtype == b.dtype
            and torch.equal(a, b)
        )
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, list | tuple) and isinstance(b, list | tuple):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    return type(a) is type(b) and a == b


def _built(observe: Callable[..., list[Any]], doc: dict[str, Any], reg: Registries) -> list[Any] | str:
    """The observation, or why the recipe was refused (a value outside what validation allows)."""
    try:
        return observe(doc, reg)
    except RecipeError as exc:
        return "; ".join(f"{p.field}: {p.message}" for p in exc.problems)
    except ShapeError as exc:
        return str(exc)
    except Exception as exc:  # what a builder raises: the entry, the parameter and the error
        raise AssertionError(f"building {json.dumps(doc)} raised {type(exc).__name__}: {exc}") from exc


def check_param(
    kind: str, entry: Entry, pname: str, site: Site, reg: Registries, baselines: dict[Any, Any]
) -> str | None:
    """None when ``pname`` shows on the built object at ``site``, else what went wrong."""
    label, docs_of, observe = site
    where = f"{kind}: {entry.name}.{pname} (at {label})"
    base = baseline(kind, entry)
    p = entry.params[pname]
    current = base.get(pname, None if p.required else p.default)
    if pname in INFERRED:
        for doc in docs_of(entry.name, {**base, pname: 999}):
            if isinstance(_built(observe, doc, reg), list):
                return f"{where}: a wrong {pname} (999) was accepted; it must be checked against the input"
        return None
    others = other_values(kind, entry.name, pname, p, current)
    refused: list[str] = []
    built_alike = 0
    for value in others:
        for base_doc, doc in zip(
            docs_of(entry.name, base), docs_of(entry.name, {**base, pname: value}), strict=True
        ):
            key = (label, json.dumps(base_doc, sort_keys=True))
            if key not in baselines:  # each baseline built twice: what it shows is deterministic
                baselines[key] = _built(observe, base_doc, reg)
                again = _built(observe, base_doc, reg)
                assert same(baselines[key], again), f"{where}: the same recipe built twice differs"
            before = baselines[key]
            after = _built(observe, doc, reg)
            if isinstance(after, str) or isinstance(before, str):
                refused.append(f"{value!r}: {after if isinstance(after, str) else before}")
                continue
            if not same(before, after):
                return None
            built_alike += 1
    if built_alike:
        return (
            f"{where}: setting it to {others} instead of {current!r} changed nothing on the built torch "
            "object. Either it does not reach torch (a bug), or it shows only in a context this test "
            "does not build: add values to VALUES, other parameters to CONTEXT or a layer input to "
            "LAYER_INPUTS in tests/test_params_reach_torch.py"
        )
    return (
        f"{where}: no other value could be built ({'; '.join(refused[:3])}); add one that validates "
        "to VALUES (or a CONTEXT) in tests/test_params_reach_torch.py"
    )


@pytest.fixture
def one_thread() -> Iterator[None]:
    """Small tensors: one thread is faster, and the cores are shared with other tests."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# One case per registry, read from the registries themselves (a new kind is a new case): each
# kind alone is a few seconds, and mutation testing runs only the kinds that reach a mutant.
@pytest.mark.parametrize("kind", list(registries().by_kind()))
def test_every_declared_parameter_reaches_the_built_torch_object(kind: str, one_thread: None) -> None:
    reg = registries()
    registry = reg.by_kind()[kind]
    if kind in NO_PARAMS:
        with_params = [f"{e.name} {list(e.params)}" for e in registry if e.params]
        assert not with_params, (
            f"{kind} are not built from declared parameters ({NO_PARAMS[kind]}), but these declare "
            f"some: {with_params}; give {kind} a site in SITES in tests/test_params_reach_torch.py"
        )
        return
    assert kind in SITES, (
        f"registry {kind!r} has no site in tests/test_params_reach_torch.py: add to SITES where a "
        "recipe uses its entries and how to observe the torch object built from them"
    )
    problems: list[str] = []
    checked, baselines = 0, {}
    for entry in registry:
        for pname in entry.params:
            for site in SITES[kind]:
                found = check_param(kind, entry, pname, site, reg, baselines)
                problems += [found] if found else []
                checked += 1
    assert not problems, f"{len(problems)} of {checked} parameters:\n" + "\n".join(problems)
    assert checked >= MIN_CHECKED[kind]  # the registry was walked (as many as when this was written)


MIN_CHECKED = {
    "losses": 1,
    "optimizers": 25,
    "schedulers": 15,
    "activations": 10,
    "layers": 65,
    "augmentations": 11,
}


def plain_sgd(params: Any, *, lr: float, momentum: float = 0.0) -> torch.optim.Optimizer:
    """A plugin's optimizer factory that takes neither ``fused`` nor ``foreach``."""
    return torch.optim.SGD(params, lr=lr, momentum=momentum, foreach=False)


def test_a_plugin_optimizer_without_fused_or_foreach_gets_its_parameters(one_thread: None) -> None:
    # The built-ins all take fused or foreach; a plugin's may take neither, and build_optimizer's
    # last fallback must still pass the recipe's parameters.
    reg = Registries()
    register_builtins(reg)
    entry = reg.optimizers.register(
        "plain_sgd",
        plain_sgd,
        "SGD without the fast paths",
        {
            "lr": Param("float", 0.01, "learning rate", gt=0),
            "momentum": Param("float", 0.0, "momentum", ge=0, lt=1),
        },
    )
    problems = [check_param("optimizers", entry, p, SITES["optimizers"][0], reg, {}) for p in entry.params]
    assert problems == [None, None], problems
