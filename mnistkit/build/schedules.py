"""Learning-rate schedule factories (targets of the scheduler registry).

Each factory takes the optimizer, the run length and the recipe's parameters and returns
``(scheduler, interval)`` where interval is ``"step"`` (call after every optimizer step),
``"epoch"`` (after every epoch) or ``"metric"`` (after every epoch, with the monitored metric).
Warm-up and cosine are written as per-step LambdaLR multipliers: smooth within an epoch, and
their state is a plain dict, so checkpoints stay loadable with ``weights_only=True``.
"""

from __future__ import annotations

import math
from typing import Any

from torch.optim import Optimizer, lr_scheduler

from mnistkit.recipe.metrics import metric_mode


class _Multiplier:
    """lr multiplier; LambdaLR saves its __dict__ (plain numbers), so checkpoints stay weights_only-safe."""

    def __init__(self, total: int, warmup: int, min_ratio: float, cosine: bool) -> None:
        self.total, self.warmup, self.min_ratio, self.cosine = total, warmup, min_ratio, cosine

    def __call__(self, step: int) -> float:
        if self.warmup and step < self.warmup:
            return (step + 1) / self.warmup
        if not self.cosine:
            return 1.0
        progress = min(1.0, (step - self.warmup) / max(1, self.total - self.warmup))
        return self.min_ratio + (1 - self.min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def constant(
    optimizer: Optimizer, *, epochs: int, steps_per_epoch: int, warmup_epochs: float = 0.0
) -> tuple[Any, str]:
    warm = round(warmup_epochs * steps_per_epoch)
    mult = _Multiplier(epochs * steps_per_epoch, warm, 1.0, cosine=False)
    return lr_scheduler.LambdaLR(optimizer, mult), "step"


def step(
    optimizer: Optimizer,
    *,
    epochs: int,
    steps_per_epoch: int,
    step_size: int = 1,
    gamma: float = 0.1,
) -> tuple[Any, str]:
    return lr_scheduler.StepLR(optimizer, step_size=step_size, gamma=gamma), "epoch"


def cosine(
    optimizer: Optimizer,
    *,
    epochs: int,
    steps_per_epoch: int,
    warmup_epochs: float = 0.0,
    min_lr_ratio: float = 0.0,
) -> tuple[Any, str]:
    warm = round(warmup_epochs * steps_per_epoch)
    mult = _Multiplier(epochs * steps_per_epoch, warm, min_lr_ratio, cosine=True)
    return lr_scheduler.LambdaLR(optimizer, mult), "step"


def onecycle(
    optimizer: Optimizer,
    *,
    epochs: int,
    steps_per_epoch: int,
    max_lr: float,
    pct_start: float = 0.3,
    div_factor: float = 25.0,
    final_div_factor: float = 1e4,
    anneal_strategy: str = "cos",
    cycle_momentum: bool = True,
) -> tuple[Any, str]:
    has_momentum = any("momentum" in g or "betas" in g for g in optimizer.param_groups)
    sched = lr_scheduler.OneCycleLR(
        optimizer,
        max_lr=max_lr,
        total_steps=epochs * steps_per_epoch,
        pct_start=pct_start,
        div_factor=div_factor,
        final_div_factor=final_div_factor,
        anneal_strategy=anneal_strategy,  # type: ignore[arg-type]
        # OneCycleLR raises for optimizers without momentum when cycling is on.
        cycle_momentum=cycle_momentum and has_momentum,
    )
    return sched, "step"


def plateau(
    optimizer: Optimizer,
    *,
    epochs: int,
    steps_per_epoch: int,
    factor: float = 0.1,
    patience: int = 2,
    metric: str = "test_loss",
    min_lr: float = 0.0,
) -> tuple[Any, str]:
    mode = metric_mode(metric)
    sched = lr_scheduler.ReduceLROnPlateau(
        optimizer, mode=mode, factor=factor, patience=patience, min_lr=min_lr
    )
    return sched, "metric"
