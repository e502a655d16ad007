"""Test fault hooks (environment variables, read once per run, no cost when unset; docs/runs.md).

* ``MNISTKIT_KILL_AT=E:S[:SIG]`` sends signal SIG (default KILL; e.g. INT for a Ctrl-C) to this
  process during training step S of epoch E (both 1-based), after that step's forward pass.
  ``MNISTKIT_KILL_AT=0:0[:SIG]``: before the training loop starts (the run folder is made, no
  checkpoint yet; :func:`signal_before_training`), as a Ctrl-C in a run's first seconds.
* ``MNISTKIT_NAN_AT=E:S`` makes the loss of step S of epoch E NaN.
* ``MNISTKIT_RAISE_AT=E:S`` raises a RuntimeError in training step S of epoch E.
* ``MNISTKIT_HOOK_RANK=R``: in a distributed run, the three hooks above act only in the process
  of rank R (default: every process).
* ``MNISTKIT_CRASH_DURING_CHECKPOINT=NAME[:N]`` (:mod:`mnistkit.training.checkpoint`): SIGKILL
  halfway through writing checkpoint NAME (its N-th write).
"""

from __future__ import annotations

import os
import signal
import sys

import torch

from mnistkit.errors import RunError

KILL_ENV = "MNISTKIT_KILL_AT"
NAN_ENV = "MNISTKIT_NAN_AT"
RAISE_ENV = "MNISTKIT_RAISE_AT"
HOOK_RANK_ENV = "MNISTKIT_HOOK_RANK"


class _TestHookLoss(torch.nn.Module):
    """The loss, plus the MNISTKIT_KILL_AT / MNISTKIT_NAN_AT test hooks (see the module doc).

    Training steps are counted in the loss call (evaluation runs without autograd and is not
    counted), so the hooks need nothing in the training loop itself.
    """

    def __init__(
        self,
        inner: torch.nn.Module,
        done: int,
        kill: tuple[int, int] | None,
        nan: int | None,
        fail: int | None = None,
    ) -> None:
        super().__init__()
        self.inner, self.done, self.kill, self.nan, self.fail = inner, done, kill, nan, fail

    paused = False  # set while a compiled step is warmed up (training/step.py): not a training step

    def forward(self, out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        loss = self.inner(out, target)
        if not torch.is_grad_enabled():
            return loss
        return self._hooks(loss)

    # Python side effects: under train.compile this part runs eagerly between the compiled graphs.
    @torch.compiler.disable  # type: ignore[untyped-decorator]
    def _hooks(self, loss: torch.Tensor) -> torch.Tensor:
        if self.paused:
            return loss
        self.done += 1
        if self.kill is not None and self.done == self.kill[0]:
            # Say so first: a test can time how long the job takes to end after the signal.
            print(
                f"{KILL_ENV}: signal {self.kill[1]} at training step {self.done}", file=sys.stderr, flush=True
            )
            os.kill(os.getpid(), self.kill[1])
        if self.done == self.nan:
            loss = loss * float("nan")
        if self.done == self.fail:
            raise RuntimeError(f"{RAISE_ENV}: test failure in training step {self.done}")
        return loss


def _signal(spec: str) -> int:
    name = spec.split(":")[2] if spec.count(":") >= 2 else "KILL"
    try:
        return int(signal.Signals[name if name.startswith("SIG") else "SIG" + name])
    except KeyError:
        raise RunError(f"{KILL_ENV}={spec!r}: unknown signal {name!r}") from None


def signal_before_training(rank: int = 0) -> None:
    """``MNISTKIT_KILL_AT=0:0[:SIG]``: send SIG now (called just before the training loop)."""
    spec = os.environ.get(KILL_ENV, "")
    hook_rank = os.environ.get(HOOK_RANK_ENV)
    if not spec.startswith("0:0") or (hook_rank and hook_rank.strip() != str(rank)):
        return
    sig = _signal(spec)
    print(f"{KILL_ENV}: signal {sig} before training", file=sys.stderr, flush=True)
    os.kill(os.getpid(), sig)


def with_test_hooks(loss_fn: torch.nn.Module, steps: int, done: int, rank: int = 0) -> torch.nn.Module:
    """``loss_fn``, wrapped with the hooks the environment asks for (itself when none); ``done``
    is the number of training steps the run has already taken (a resumed run counts on)."""
    kill_spec, nan_spec = os.environ.get(KILL_ENV), os.environ.get(NAN_ENV)
    raise_spec = os.environ.get(RAISE_ENV)
    if not kill_spec and not nan_spec and not raise_spec:
        return loss_fn
    hook_rank = os.environ.get(HOOK_RANK_ENV)
    if hook_rank and hook_rank.strip() != str(rank):
        return loss_fn

    def global_step(env: str, spec: str) -> tuple[int, str]:
        parts = spec.split(":")
        try:
            epoch, step = int(parts[0]), int(parts[1])
        except (IndexError, ValueError):
            raise RunError(f"{env}={spec!r}: expected EPOCH:STEP, e.g. 2:5") from None
        return (epoch - 1) * steps + step, (parts[2] if len(parts) > 2 else "KILL")

    kill = None
    if kill_spec and not kill_spec.startswith("0:0"):  # 0:0: signal_before_training's
        at, _ = global_step(KILL_ENV, kill_spec)
        kill = (at, _signal(kill_spec))
    nan = global_step(NAN_ENV, nan_spec)[0] if nan_spec else None
    fail = global_step(RAISE_ENV, raise_spec)[0] if raise_spec else None
    return _TestHookLoss(loss_fn, done, kill, nan, fail)
