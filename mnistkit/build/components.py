"""Recipe → torch objects. Each ``build_*`` reads one recipe section and asks a registry.

This is the only place where recipe names become torch objects; there is no other lookup path
(no import paths in YAML). Shapes come from the dataset: ``in_shape`` and ``num_classes``.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from mnistkit.data.augment import Augment
from mnistkit.errors import RunError, set_hint
from mnistkit.layers.modules import Shape, build_layers
from mnistkit.layers.shapes import LayerInfo
from mnistkit.recipe.model_check import layer_specs
from mnistkit.recipe.schema import Recipe
from mnistkit.registry.core import Registries


def spec_params(spec: Any) -> dict[str, Any]:
    """Parameters of a registry spec (``{name: sgd, lr: ...}`` → ``{lr: ...}``), tuples kept."""
    data = spec.model_dump()
    data.pop("name", None)
    data.pop("type", None)
    return data


def model_layer_specs(recipe: Recipe, num_classes: int, reg: Registries) -> list[dict[str, Any]]:
    """The model as an explicit layer list; the MLP shorthand expands to the same vocabulary.

    The expansion lives in :func:`mnistkit.recipe.model_check.layer_specs` (torch-free) so that
    ``mnistkit validate`` checks exactly the list that is built here.
    """
    return [ls.spec for ls in layer_specs(recipe, num_classes, reg)]


def build_model(
    recipe: Recipe, in_shape: Shape, num_classes: int, reg: Registries
) -> tuple[nn.Sequential, list[LayerInfo]]:
    return build_layers(model_layer_specs(recipe, num_classes, reg), in_shape, reg)


def build_loss(recipe: Recipe, reg: Registries, counts: list[int] | None = None) -> nn.Module:
    """The loss; ``loss.class_weights`` becomes its ``weight`` (``auto``: from ``counts``, the
    training split's samples per class, see :func:`resolve_class_weights`)."""
    params = spec_params(recipe.loss)
    if params.get("class_weights") is not None:
        weights = resolve_class_weights(params["class_weights"], counts)
        params["class_weights"] = torch.tensor(weights, dtype=torch.float32)
    return reg.losses.create(recipe.loss.name, **params)


def class_counts(y: torch.Tensor, num_classes: int) -> list[int]:
    """Samples per class of the labels ``y``."""
    return [int(c) for c in torch.bincount(y.cpu(), minlength=num_classes)[:num_classes]]


def resolve_class_weights(given: Any, counts: list[int] | None) -> list[float]:
    """``loss.class_weights`` as one weight per class, for the training ``counts`` per class.

    ``auto``: inverse frequency, ``n / (classes x count_c)`` (scikit-learn's "balanced": every
    class then weighs as much in total, and the weights average 1 over the samples). A list is
    checked against the number of classes (validation already checks it where the dataset
    declares its class count; for folder datasets it is known only here). Without ``counts``
    (a loss built apart from any data) a list is taken as given.
    """
    if counts is None:
        if given == "auto":
            raise RunError("loss.class_weights: auto needs the training split's class counts")
        return [float(w) for w in given]
    n, k = sum(counts), len(counts)
    if given != "auto":
        if len(given) != k:
            raise RunError(
                f"loss.class_weights has {len(given)} weight(s) but the data has {k} classes: give "
                f"one per class, or {set_hint('loss.class_weights', 'auto')} (inverse frequency)"
            )
        return [float(w) for w in given]
    empty = [i for i, c in enumerate(counts) if c == 0]
    if empty:
        raise RunError(
            f"loss.class_weights: auto cannot weigh class(es) {empty}: no training sample. "
            f"Give the weights as a list (--set loss.class_weights=[...]) or remove the key"
        )
    return [n / (k * c) for c in counts]


def build_optimizer(recipe: Recipe, model: nn.Module, reg: Registries) -> torch.optim.Optimizer:
    entry = reg.optimizers.get(recipe.optimizer.name)
    params = spec_params(recipe.optimizer)
    accepts = inspect.signature(entry.load()).parameters
    # The fastest implementation the optimizer and device support. fused: one kernel updates
    # every parameter; foreach: multi-tensor ops, one call per operation for all parameters
    # instead of one per parameter; else torch's default. Neither is torch's default on CPU.
    # Measured for mlp5 at batch 64 on the 2-core CPU (µs per training step, docs/performance.md):
    # AdamW fused 1,654, foreach 2,371, default 2,854; SGD momentum 1,573, 1,661, 1,634.
    for flag in ("fused", "foreach"):
        if flag in accepts:
            try:
                return entry.create(model.parameters(), **params, **{flag: True})  # type: ignore[no-any-return]
            except (RuntimeError, ValueError):  # not implemented for this device or dtype
                pass
    return entry.create(model.parameters(), **params)  # type: ignore[no-any-return]


@dataclass
class Schedule:
    """A built LR scheduler and when to step it ('step', 'epoch' or 'metric')."""

    scheduler: Any
    interval: str
    metric: str | None = None

    def after_step(self) -> None:
        if self.scheduler is not None and self.interval == "step":
            self.scheduler.step()

    def after_epoch(self, metrics: dict[str, float | None]) -> None:
        if self.scheduler is None:
            return
        if self.interval == "epoch":
            self.scheduler.step()
        elif self.interval == "metric":
            value = metrics.get(self.metric or "test_loss")
            if value is not None:
                self.scheduler.step(value)


def build_schedule(
    recipe: Recipe, optimizer: torch.optim.Optimizer, steps_per_epoch: int, reg: Registries
) -> Schedule:
    if recipe.scheduler is None:
        return Schedule(None, "none")
    params = spec_params(recipe.scheduler)
    sched, interval = reg.schedulers.create(
        recipe.scheduler.name,
        optimizer=optimizer,
        epochs=recipe.epochs,
        steps_per_epoch=steps_per_epoch,
        **params,
    )
    return Schedule(sched, interval, params.get("metric"))


def build_augment(recipe: Recipe, reg: Registries) -> Augment | None:
    """The ``data.augment`` list as one callable for the training loop; None when empty."""
    if not recipe.data.augment:
        return None
    ops = [reg.augmentations.create(a.type, **spec_params(a)) for a in recipe.data.augment]
    return Augment(ops, [a.type for a in recipe.data.augment])
