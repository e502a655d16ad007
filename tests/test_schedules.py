"""Learning-rate schedules follow their documented formulas, stepped as the training loop steps them.

A schedule that decays too early, never warms up, or watches a metric the wrong way round still
trains; only the learning rate of each step tells. Each schedule is built from a recipe through
``build_schedule`` and stepped with ``Schedule.after_step`` / ``after_epoch`` (as the loop does); the
learning rate of every optimizer step is compared with the formula in the scheduler's
description (docs/recipe.md), written out here, or with torch's own class given the same numbers.
"""

from __future__ import annotations

import json
import math
from typing import Any

import pytest
import torch

from mnistkit.build.components import build_optimizer, build_schedule
from mnistkit.recipe.schema import load_recipe_text
from mnistkit.registry import registries

LR, EPOCHS, STEPS = 0.1, 4, 5  # 20 optimizer steps


def lrs(
    scheduler: dict[str, Any],
    metrics: list[dict[str, float]] | None = None,
    optimizer: dict[str, Any] | None = None,
    key: str = "lr",
) -> list[Any]:
    """The learning rate (or ``key`` of the param group) of each of the EPOCHS x STEPS steps."""
    doc = {
        "data": {"dataset": "digits"},
        "model": {"hidden": [4]},
        "optimizer": optimizer or {"name": "sgd", "lr": LR, "momentum": 0.9},
        "scheduler": scheduler,
        "epochs": EPOCHS,
    }
    reg = registries()
    recipe = load_recipe_text(json.dumps(doc), reg=reg)
    opt = build_optimizer(recipe, torch.nn.Linear(2, 2), reg)
    schedule = build_schedule(recipe, opt, STEPS, reg)
    seen = []
    for epoch in range(EPOCHS):
        for _ in range(STEPS):
            seen.append(opt.param_groups[0][key])
            opt.step()
            schedule.after_step()
        schedule.after_epoch(metrics[epoch] if metrics else {})
    return seen


def close(a: list[float], b: list[float]) -> bool:
    return len(a) == len(b) and all(
        math.isclose(x, y, rel_tol=1e-9, abs_tol=1e-15) for x, y in zip(a, b, strict=True)
    )


def test_constant_warms_up_linearly_then_keeps_the_rate() -> None:
    assert lrs({"name": "constant"}) == [LR] * 20
    # warmup_epochs 1 = 5 steps: (k + 1) / 5 of the rate at step k, then the rate itself
    expected = [LR * (k + 1) / 5 for k in range(5)] + [LR] * 15
    assert close(lrs({"name": "constant", "warmup_epochs": 1}), expected)


def test_step_multiplies_by_gamma_every_step_size_epochs() -> None:
    got = lrs({"name": "step", "step_size": 2, "gamma": 0.5})
    assert close(got, [LR] * 10 + [LR * 0.5] * 10)


@pytest.mark.parametrize("warmup", [0, 1])
def test_cosine_decays_to_min_lr_ratio_over_the_run(warmup: int) -> None:
    got = lrs({"name": "cosine", "warmup_epochs": warmup, "min_lr_ratio": 0.2})
    w, total = warmup * STEPS, EPOCHS * STEPS
    expected = [
        LR * (k + 1) / w
        if k < w
        else LR * (0.2 + 0.8 * 0.5 * (1 + math.cos(math.pi * (k - w) / (total - w))))
        for k in range(total)
    ]
    assert close(got, expected)


def test_onecycle_is_torch_s_one_cycle_over_the_whole_run() -> None:
    params = {"max_lr": 0.5, "pct_start": 0.4, "div_factor": 10.0, "final_div_factor": 100.0}
    got = lrs({"name": "onecycle", **params, "anneal_strategy": "linear"})
    opt = torch.optim.SGD(torch.nn.Linear(2, 2).parameters(), lr=LR, momentum=0.9)
    ref = torch.optim.lr_scheduler.OneCycleLR(
        opt, total_steps=EPOCHS * STEPS, anneal_strategy="linear", cycle_momentum=True, **params
    )
    expected = []
    for _ in range(EPOCHS * STEPS):
        expected.append(opt.param_groups[0]["lr"])
        opt.step()
        ref.step()
    assert close(got, expected)
    assert got[0] == pytest.approx(0.05) and max(got) == pytest.approx(0.5)


def test_onecycle_cycles_adam_s_beta1_and_takes_optimizers_without_momentum() -> None:
    # Adam has betas, not momentum: 1cycle moves beta1 from 0.95 down to 0.85 and back up.
    betas = lrs({"name": "onecycle", "max_lr": 0.5}, optimizer={"name": "adam", "lr": LR}, key="betas")
    beta1 = [b[0] for b in betas]
    assert beta1[0] == pytest.approx(0.95) and min(beta1) == pytest.approx(0.85, abs=1e-3)
    # Adagrad has neither: the schedule still runs (only the rate cycles).
    rates = lrs({"name": "onecycle", "max_lr": 0.5}, optimizer={"name": "adagrad", "lr": LR})
    assert rates[0] == pytest.approx(0.02) and max(rates) == pytest.approx(0.5, rel=0.05)


def test_plateau_watches_its_metric_the_right_way_round() -> None:
    # test_acc rises, then stays flat: an accuracy is better higher, so epoch 3 is the first
    # without improvement (patience 0: the rate halves for epoch 4). Read as a loss, epoch 2
    # would already be worse, and the rate would halve twice.
    rows = [{"test_acc": a, "test_loss": 1.0} for a in (0.5, 0.6, 0.6, 0.6)]
    got = lrs({"name": "plateau", "metric": "test_acc", "patience": 0, "factor": 0.5}, rows)
    assert close(got, [LR] * 15 + [LR * 0.5] * 5)
    # min_lr bounds the decay: a flat loss, patience 0, factor 0.1 (0.01), floor 0.05
    rows = [{"test_loss": 1.0}] * 4
    got = lrs({"name": "plateau", "patience": 0, "min_lr": 0.05}, rows)
    assert close(got, [LR] * 10 + [0.05] * 10)
