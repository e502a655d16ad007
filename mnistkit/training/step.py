"""One training step — normalize, forward, loss, backward — eager or compiled (``train.compile``).

:class:`TrainStep` is what the loop calls per batch; the optimizer update stays in the loop (after
the gradient sync of a distributed run and ``train.grad_clip``). With ``train.compile`` the step
function as a whole goes through ``torch.compile``: the uint8 → float normalization, the forward
pass and the loss become one graph, and AOTAutograd compiles the backward pass with it. The
optimizer is already one fused kernel on CPU (build/components.py); compiling its ``step`` too
was no faster in a first measurement (docs/performance.md) and would need the learning rate as a
tensor (else every scheduler step recompiles), which changes what checkpoints and metrics.csv
hold, so it stays eager.

``auto`` compiles when the run has enough steps left to earn the compile time back (see
:data:`AUTO_MIN_STEPS`); the run header says what was decided and why.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from mnistkit.data.batches import Prepared
from mnistkit.training.device import autocast_context, match_layout

# ``train.compile: auto`` compiles a run of at least this many training steps (every epoch's
# steps, counted from where a resumed run starts). Measured for mlp5 on the 2-core dev machine
# (docs/performance.md, "Compiled training step"): compiling costs ~18 CPU seconds (90 s of wall
# time at load 13), and the compiled step was not measurably faster than the eager one (5.5 vs
# 6.1 s per 188-step epoch, within that run's noise). Even granting it 10% of a ~1.7 ms step,
# earning 18 s back takes ~100,000 steps: auto stays off below twice that, which keeps it off
# for every recipe mnistkit ships (mlp5: 9,380 steps).
AUTO_MIN_STEPS = 200_000


def find_cxx() -> str | None:
    """The C++ compiler torch.compile's CPU backend (Inductor) would call, or None.

    Inductor takes ``$CXX`` when set, else g++ / clang++ from PATH (a seam for tests, too)."""
    for name in (os.environ.get("CXX"), "g++", "clang++", "c++"):
        if name and (path := shutil.which(name)):
            return path
    return None


@dataclass(frozen=True)
class CompileChoice:
    compiled: bool
    reason: str  # for the run header: what was decided and why


def decide_compile(
    setting: bool | str, steps_left: int, device: torch.device, distributed: bool
) -> CompileChoice:
    """Whether to compile the training step; ``setting`` is ``train.compile`` (True, False, 'auto')."""
    if setting is False:
        return CompileChoice(False, "off (train.compile: false)")
    if distributed:
        # The step is split by the gradient sync there; compiling it is not supported yet.
        return CompileChoice(False, "off: not with several processes (--nproc); training eagerly")
    if device.type == "cpu" and find_cxx() is None:
        return CompileChoice(
            False, "off: no C++ compiler found (g++, clang++ or $CXX), which torch.compile needs on CPU; "
            "training eagerly. Install one (e.g. apt-get install g++) to compile"
        )  # fmt: skip
    if setting is True:
        return CompileChoice(True, "on (train.compile: true)")
    if steps_left >= AUTO_MIN_STEPS:
        return CompileChoice(True, f"on (auto: {steps_left:,} training steps >= {AUTO_MIN_STEPS:,})")
    return CompileChoice(
        False, f"off (auto: {steps_left:,} training steps < {AUTO_MIN_STEPS:,}, too few to earn back "
        "the compile time; --set train.compile=true forces it)"
    )  # fmt: skip


class TrainStep:
    """``step(raw, yb)`` → (loss, number correct), gradients left in ``.grad`` for the optimizer.

    ``raw`` is a batch as stored (uint8 pixels), normalized here. ``scale`` multiplies the loss
    before backward (a distributed run's global-batch mean); the returned loss is unscaled.
    """

    def __init__(
        self,
        model: nn.Module,
        loss_fn: nn.Module,
        optimizer: torch.optim.Optimizer,
        data: Prepared,
        precision: str,
        device: torch.device,
        channels_last: bool,
        compiled: bool = False,
    ) -> None:
        self.model, self.loss_fn, self.optimizer, self.data = model, loss_fn, optimizer, data
        self.precision, self.device, self.channels_last = precision, device, channels_last
        self.compiled = compiled
        # dynamic=False: one graph per batch size (the full batch and the last partial one), each
        # compiled at warm-up, so a resumed run uses exactly the kernels an uninterrupted one does.
        fn: Callable[..., tuple[torch.Tensor, torch.Tensor]] = self._forward_backward
        self._fn = torch.compile(fn, dynamic=False) if compiled else fn

    def __call__(
        self, raw: torch.Tensor, yb: torch.Tensor, scale: int = 1
    ) -> tuple[torch.Tensor, torch.Tensor]:
        self.optimizer.zero_grad(set_to_none=True)  # frees grads instead of writing zeros
        return self._fn(raw, yb, scale)

    def _forward_backward(
        self, raw: torch.Tensor, yb: torch.Tensor, scale: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        # uint8 → normalized float32 here, per batch (see data.Prepared for why); compiled, the
        # conversion is fused into the first layer's input instead of being a pass of its own.
        xb = match_layout(self.data.inputs(raw), self.channels_last)
        with autocast_context(self.precision, self.device):
            out = self.model(xb)
            loss = self.loss_fn(out.float(), yb)  # fp32 loss under bf16; a no-op in fp32
        (loss * scale if scale != 1 else loss).backward()
        return loss.detach(), (out.detach().argmax(1) == yb).sum()

    def warm_up(self, sizes: list[int]) -> None:
        """Compile the step for every training batch size, before the clock starts, changing nothing.

        Gradients are dropped; buffers (BatchNorm running statistics) and the RNG streams
        (dropout) are restored, so a compiled run starts from exactly the eager run's state.
        """
        rng = torch.get_rng_state()
        cuda_rng = torch.cuda.get_rng_state_all() if self.device.type == "cuda" else None
        buffers = [b.detach().clone() for b in self.model.buffers()]
        was_training = self.model.training
        self.model.train()
        train = self.data.train
        hooks = hasattr(self.loss_fn, "paused")  # the test hooks (training/faults.py) do not count these
        if hooks:
            self.loss_fn.paused = True
        try:
            for size in sorted(set(sizes)):
                self(train.raw(torch.arange(size)).to(self.device), train.y[:size].to(self.device))
        finally:
            if hooks:
                self.loss_fn.paused = False
        self.optimizer.zero_grad(set_to_none=True)
        self.model.train(was_training)
        with torch.no_grad():
            for b, saved in zip(self.model.buffers(), buffers, strict=True):
                b.copy_(saved)
        torch.set_rng_state(rng)
        if cuda_rng is not None:
            torch.cuda.set_rng_state_all(cuda_rng)


def train_batch_sizes(n_train: int, batch_size: int, drop_last: bool) -> list[int]:
    """The batch sizes a training epoch serves: the full batch, and the last partial one."""
    sizes = [min(batch_size, n_train)]
    if n_train % batch_size and not drop_last and n_train > batch_size:
        sizes.append(n_train % batch_size)
    return sizes
