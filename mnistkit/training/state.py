"""What a run's checkpoint holds, and how a run continues from one (``--resume``).

``CHECKPOINT_FORMAT`` is written into every checkpoint (every mnistkit version has written it)
and checked by :func:`check_format` wherever one is loaded: ``--resume``, ``eval``, ``predict``,
``export``. The file itself is written and read safely by
:mod:`mnistkit.training.checkpoint`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from mnistkit.errors import RunError
from mnistkit.recipe.schema import Recipe, resolved_dict
from mnistkit.training import distributed
from mnistkit.training.checkpoint import plain_scheduler_state

CHECKPOINT_FORMAT = 1


def check_format(ckpt: dict[str, Any], path: Any) -> None:
    """A RunError unless ``ckpt`` is in the format this mnistkit reads (:data:`CHECKPOINT_FORMAT`).

    A newer format needs a newer mnistkit; a missing or unknown one was not written by mnistkit.
    """
    fmt = ckpt.get("format")
    if fmt == CHECKPOINT_FORMAT and type(fmt) is int:
        return
    if type(fmt) is int and fmt > CHECKPOINT_FORMAT:
        raise RunError(
            f"{path}: checkpoint format {fmt} was written by a newer mnistkit (this one reads format "
            f"{CHECKPOINT_FORMAT}): upgrade mnistkit (pip install -U mnistkit, or git pull and make setup)"
        )
    what = "has no checkpoint format" if fmt is None else f"has an unknown checkpoint format {fmt!r}"
    raise RunError(
        f"{path} {what}: it was not written by mnistkit (mnistkit writes format {CHECKPOINT_FORMAT})"
    )


@dataclass
class LoopState:
    """Everything needed to continue exactly where a run stopped (saved in checkpoints)."""

    epoch: int = 0  # 0-based epoch in progress (or next to run)
    step: int = 0  # batches already done in that epoch (non-zero after a Ctrl-C mid-epoch)
    order: torch.Tensor | None = None  # that epoch's sample order, when step > 0
    loss_sum: float = 0.0
    correct: int = 0
    seen: int = 0
    elapsed: float = 0.0  # training seconds already spent in that epoch
    rows: list[dict[str, Any]] = field(default_factory=list)
    best: float | None = None
    best_epoch: int | None = None
    bad_epochs: int = 0  # early stopping: epochs without improvement
    stop_reason: str | None = None


def checkpoint_state(
    state: LoopState,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    generator: torch.Generator,
    recipe: Recipe,
    rank_rng: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """Everything --resume needs, as tensors and plain data only (loadable with weights_only).

    A distributed run also saves its number of processes and every rank's RNG streams
    (``rank_rng``: dropout draws differ per rank); a checkpoint without them is from one process.
    """
    dist_part = {"world_size": len(rank_rng), "rank_rng": rank_rng} if rank_rng else {}
    return {
        **dist_part,
        "format": CHECKPOINT_FORMAT,
        "epoch": state.epoch,
        "step": state.step,
        "order": state.order if state.step else None,
        "loss_sum": state.loss_sum,
        "correct": state.correct,
        "seen": state.seen,
        "elapsed": state.elapsed,
        "rows": state.rows,
        "best": state.best,
        "best_epoch": state.best_epoch,
        "bad_epochs": state.bad_epochs,
        "model": unwrap(model).state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": _plain_sched_state(scheduler),
        "torch_rng": torch.get_rng_state(),
        "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "generator": generator.get_state(),
        "recipe": resolved_dict(recipe),
    }


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    return getattr(model, "_orig_mod", model)  # torch.compile wraps the module


def _plain_sched_state(scheduler: Any) -> dict[str, Any] | None:
    return None if scheduler is None else plain_scheduler_state(scheduler)


# Scheduler state that describes the plan rather than the position in it.
PLAN_KEYS = ("total_steps", "_schedule_phases", "lr_lambdas")


def restore(
    ckpt: dict[str, Any],
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    generator: torch.Generator,
    ctx: distributed.Context = distributed.SINGLE,
) -> LoopState:
    unwrap(model).load_state_dict(ckpt["model"])
    optimizer.load_state_dict(ckpt["optimizer"])
    if scheduler is not None and ckpt.get("scheduler") is not None:
        # The plan (length, phases, lr multipliers) comes from the recipe as it is now, so a run
        # resumed with more epochs follows the re-planned schedule; the position comes from the
        # checkpoint.
        fresh = scheduler.state_dict()
        plan = {k: fresh[k] for k in PLAN_KEYS if k in fresh}
        scheduler.load_state_dict({**fresh, **ckpt["scheduler"], **plan})
    saved_rng = ckpt.get("rank_rng") or []
    if ctx.distributed and ctx.rank < len(saved_rng):
        distributed.set_rng_state(saved_rng[ctx.rank])
    elif ctx.rank == 0:  # one process, or rank 0 of a run that had one: rank 0's streams
        # (a rank the run did not have keeps its stream seeded from seed and rank)
        torch.set_rng_state(ckpt["torch_rng"])
        if ckpt.get("cuda_rng") and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(ckpt["cuda_rng"])
    generator.set_state(ckpt["generator"])
    return LoopState(
        epoch=ckpt["epoch"],
        step=ckpt["step"],
        order=ckpt.get("order"),
        loss_sum=ckpt["loss_sum"],
        correct=ckpt["correct"],
        seen=ckpt["seen"],
        elapsed=ckpt["elapsed"],
        rows=list(ckpt["rows"]),
        best=ckpt["best"],
        best_epoch=ckpt["best_epoch"],
        bad_epochs=ckpt["bad_epochs"],
    )
