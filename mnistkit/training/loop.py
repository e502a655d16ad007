"""The training loop: one function, read it top to bottom.

Everything it needs is built before it starts (runner.py); everything it produces goes to the
reporter (display) and to the run directory (metrics.csv, checkpoints). Choices that matter for
speed are commented where they are made.
"""

from __future__ import annotations

import contextlib
import math
import signal
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from mnistkit.build.components import Schedule
from mnistkit.data.augment import Augment
from mnistkit.data.batches import (
    Prepared,
    balanced_weights,
    dataloader_batches,
    epoch_order,
    make_dataloader,
    memory_batches,
    num_batches,
    shard_part,
)
from mnistkit.errors import set_hint
from mnistkit.recipe.metrics import run_metrics
from mnistkit.recipe.schema import Recipe
from mnistkit.training.device import uses_channels_last
from mnistkit.training.distributed import SINGLE, Context, GradSync
from mnistkit.training.evaluation import evaluate
from mnistkit.training.rules import judge_epoch
from mnistkit.training.state import LoopState
from mnistkit.training.step import TrainStep

PROGRESS_INTERVAL_S = 0.25  # live display refresh: often enough to look alive, rare enough to be free


class NonFiniteLoss(Exception):
    def __init__(self, epoch: int, step: int, value: float) -> None:
        self.epoch, self.step, self.value = epoch, step, value
        super().__init__(
            f"loss became {value} at epoch {epoch}, step {step}: training stopped. "
            f"Lower optimizer.lr, {set_hint('train.grad_clip', '1.0')}, or check the data. "
            "The last good checkpoint is kept."
        )


@dataclass
class Hooks:
    """Where the loop hands results out: display, metrics file, checkpoints."""

    on_epoch_start: Callable[[int, int], None]
    on_progress: Callable[[int, int, float, float, float], None]  # step, steps, loss, acc, samples/s
    on_epoch_end: Callable[[dict[str, Any], bool], None]  # row, improved
    save_checkpoint: Callable[[LoopState, bool], None]  # state, is_best
    message: Callable[[str], None]
    before_step: Callable[[], None] | None = None  # train.threads: auto's probe (training/threads.py)


class StopRequest:
    """Turns the first Ctrl-C into a request to stop at the next safe point (a second one kills)."""

    def __init__(self) -> None:
        self.requested = False
        self._previous: Any = None

    def __enter__(self) -> StopRequest:
        with contextlib.suppress(ValueError):  # not the main thread: leave signals alone
            self._previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True

    def __exit__(self, *exc: object) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)


def train_loop(
    recipe: Recipe,
    data: Prepared,
    model: nn.Module,
    loss_fn: nn.Module,
    optimizer: torch.optim.Optimizer,
    schedule: Schedule,
    state: LoopState,
    generator: torch.Generator,
    hooks: Hooks,
    device: torch.device,
    augment: Augment | None = None,
    ctx: Context = SINGLE,
    train_step: TrainStep | None = None,
) -> LoopState:
    """Train from ``state`` to ``recipe.epochs``; returns the final state (with stop_reason).

    ``augment`` (from ``data.augment``) changes each raw training batch before it is normalized,
    drawing from ``generator``: the stream the checkpoint saves, so a resumed run draws the same
    augmentations an uninterrupted one would.

    Distributed (``ctx``, see training/distributed.py): every rank walks the same seeded order
    and trains on its part of each global batch; ``GradSync`` averages the gradients over the
    global batch and hands back the global loss, correct count and stop decision, so every rank
    holds the same counters and takes the same branches below. Only the hooks differ by rank.

    ``train_step`` (training/step.py) runs forward and backward for a batch; the session passes a
    compiled one for ``train.compile``, else an eager one is made here.
    """
    d, t = recipe.data, recipe.train
    n_train = len(data.train.y)
    steps = num_batches(n_train, d.batch_size, d.drop_last)
    metrics = run_metrics(recipe)
    es = t.early_stopping

    # On CPU reading a scalar costs nothing to wait for (measured: 0.4 µs for loss.item() plus
    # isfinite, against a ~1,700 µs step), so non-finite losses are caught at the exact step; on
    # an accelerator it would be a host sync per step, stalling the queue of launched kernels, so
    # there it is checked only at display refreshes and epoch ends.
    check_every_step = device.type == "cpu"
    if train_step is None:
        train_step = TrainStep(
            model, loss_fn, optimizer, data, t.precision, device, uses_channels_last(model, device)
        )
    loader = None  # the DataLoader path is built once: its workers (if any) persist across epochs
    sync = GradSync(model, ctx) if ctx.distributed else None  # None: one process, no collectives
    shard = (ctx.rank, ctx.world_size)
    # Augmenting with several processes: each takes the whole global batch, augments it with the
    # draws one process would make, then keeps its part (the same samples as ``shard``). Were
    # each to augment only its part, parts of unequal size would draw unequal amounts from the
    # generator, which also shuffles: the ranks' epoch orders would drift apart. It costs each
    # rank the augmentation of the whole batch (crop + flip: ~0.1 ms per 128 images on CPU).
    whole_batches = augment is not None and ctx.distributed
    draw_weights = balanced_weights(data.train.y, data.num_classes) if d.sampler == "balanced" else None
    if d.loader == "dataloader":
        loader = make_dataloader(data.train, d.batch_size, d.drop_last, d.num_workers, device)

    with StopRequest() as stop:
        while state.epoch < recipe.epochs:
            epoch = state.epoch
            hooks.on_epoch_start(epoch + 1, steps)
            model.train()
            if state.step == 0 or state.order is None:
                state.order = epoch_order(n_train, d.shuffle, generator, draw_weights)
                state.loss_sum, state.correct, state.seen, state.elapsed = 0.0, 0, 0, 0.0
            # Resuming mid-epoch: serve only the batches not trained on yet (same order).
            first = state.step
            todo = state.order[first * d.batch_size :]
            if loader is None:
                batches: Iterator[tuple[torch.Tensor, torch.Tensor]] = memory_batches(
                    data.train, d.batch_size, todo, d.drop_last, (0, 1) if whole_batches else shard
                )
                if data.train.device != device:  # rows of the cache file: read on the host
                    batches = ((xb.to(device), yb.to(device)) for xb, yb in batches)
            else:
                batches = dataloader_batches(loader, todo, device)
            # Accumulate on the device; read back only at refreshes and the epoch end.
            # Resuming mid-epoch, the sums start from the saved ones: the same float64 additions
            # in the same order as an uninterrupted epoch, so train_loss comes out bit-identical
            # (adding the saved sum at the end instead rounds differently in the last digit).
            loss_acc = torch.tensor(state.loss_sum, dtype=torch.float64, device=device)
            correct_acc = torch.tensor(state.correct, dtype=torch.int64, device=device)
            seen = state.seen
            start = time.perf_counter()
            last_refresh = start
            for step, (raw, yb) in enumerate(batches, start=first):
                if hooks.before_step is not None:
                    hooks.before_step()
                if augment is not None:  # training batches only, on the device, still raw
                    raw = augment(raw, generator)
                    if whole_batches:  # this rank's part of the augmented global batch
                        raw, yb = shard_part(raw, shard), shard_part(yb, shard)
                # normalize, forward, loss, backward: eager or compiled (training/step.py)
                if sync is None:
                    loss, batch_correct = train_step(raw, yb)
                    n_batch, stop_now = len(yb), stop.requested
                else:  # global-batch mean: see GradSync
                    loss, batch_correct = train_step(raw, yb, scale=len(yb))
                    loss, batch_correct, n_batch, stop_now = sync(
                        loss, batch_correct, len(yb), stop.requested
                    )
                if t.grad_clip is not None:  # after the sync: the norm of the global gradient
                    nn.utils.clip_grad_norm_(model.parameters(), t.grad_clip)
                optimizer.step()
                schedule.after_step()
                loss_acc += loss.detach()
                correct_acc += batch_correct
                seen += n_batch
                if check_every_step and not math.isfinite(loss.item()):
                    raise NonFiniteLoss(epoch + 1, step + 1, loss.item())
                now = time.perf_counter()
                if now - last_refresh >= PROGRESS_INTERVAL_S:
                    last_refresh = now
                    done = step + 1
                    mean_loss = loss_acc.item() / done
                    if not math.isfinite(mean_loss):
                        raise NonFiniteLoss(epoch + 1, done, mean_loss)
                    acc = correct_acc.item() / max(1, seen)
                    rate = (seen - state.seen) / max(1e-9, now - start)
                    hooks.on_progress(done, steps, mean_loss, acc, rate)
                if stop_now:
                    # (Distributed: any rank's Ctrl-C stops every rank after the same step.)
                    # A safe point: the step is complete. Save it so --resume continues here.
                    state.step = step + 1
                    state.loss_sum = loss_acc.item()
                    state.correct = int(correct_acc.item())
                    state.seen = seen
                    state.elapsed += time.perf_counter() - start
                    state.stop_reason = "interrupted"
                    hooks.save_checkpoint(state, False)
                    return state
            train_seconds = state.elapsed + time.perf_counter() - start
            done_steps = max(1, steps)
            train_loss = loss_acc.item() / done_steps
            if not math.isfinite(train_loss):
                raise NonFiniteLoss(epoch + 1, steps, train_loss)
            train_acc = correct_acc.item() / max(1, seen)

            row: dict[str, Any] = {
                "epoch": epoch + 1,
                "train_loss": train_loss,
                "train_acc": train_acc,
            }
            splits = (
                (("val", data.val), ("test", data.test)) if data.val is not None else (("test", data.test),)
            )
            # Per-rank BatchNorm statistics (gloo/CPU) → rank 0's, so all ranks evaluate (and
            # rank 0 checkpoints) one model. A no-op for one process.
            ctx.broadcast_module(model, buffers_only=True)
            for prefix, split in splits:
                ev = evaluate(
                    model, split, d.eval_batch_size, precision=t.precision, loss_fn=loss_fn, ctx=ctx
                )
                row[f"{prefix}_loss"], row[f"{prefix}_acc"] = ev.loss, ev.accuracy
            row["lr"] = optimizer.param_groups[0]["lr"]
            row["seconds"] = train_seconds
            row["samples_per_s"] = seen / max(1e-9, train_seconds)
            schedule.after_epoch(row)

            state.rows.append(row)
            verdict = judge_epoch(
                state.rows, metrics, state.best, state.best_epoch, state.bad_epochs, es, t.target_accuracy
            )
            better = verdict.is_best
            state.best, state.best_epoch, state.bad_epochs = (
                verdict.best,
                verdict.best_epoch,
                verdict.bad_epochs,
            )
            state.stop_reason = verdict.stop_reason
            state.epoch, state.step, state.order = epoch + 1, 0, None
            state.loss_sum, state.correct, state.seen, state.elapsed = 0.0, 0, 0, 0.0
            hooks.on_epoch_end(row, better)
            hooks.save_checkpoint(state, better)
            if state.stop_reason:
                return state
            if ctx.any(stop.requested):  # every rank agrees (one process: the flag itself)
                state.stop_reason = "interrupted"
                return state
    state.stop_reason = state.stop_reason or "finished"
    return state
