"""The one evaluation pass: training's val/test rows, ``mnistkit eval``, ``predict`` and the plots.

Whatever reads a model's outputs runs them through :func:`evaluate`, with the run's precision
(bf16 autocast for ``train.precision: bf16``) and memory layout, so ``mnistkit eval --checkpoint
last`` of a finished run reproduces the last row of metrics.csv (accuracy exactly; the loss to
float rounding, as BLAS kernels may round differently).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from mnistkit.data.batches import eval_batches
from mnistkit.data.types import Split
from mnistkit.training.device import autocast_context, match_layout, uses_channels_last
from mnistkit.training.distributed import SINGLE, Context


@dataclass
class Evaluation:
    loss: float | None  # mean loss per sample (None without a loss function)
    accuracy: float
    probs: np.ndarray | None  # class probabilities [N, C] (float32), when asked for


def evaluate(
    model: nn.Module,
    split: Split,
    batch_size: int,
    *,
    precision: str = "fp32",
    loss_fn: nn.Module | None = None,
    keep_probs: bool = False,
    ctx: Context = SINGLE,
) -> Evaluation:
    """Loss and accuracy of ``model`` on ``split``, in large batches without autograd bookkeeping.

    The loss is summed as ``mean batch loss * batch size`` in float64 on the device and read
    back once. Probabilities are the softmax of the outputs, right for raw logits and for
    log-probabilities (log_softmax output) alike. The model's train/eval mode is restored.

    Distributed (``ctx``, training only): each rank evaluates its contiguous part of the split
    (no padding, no sample twice) and the two sums are all-reduced, so every rank gets what one
    process would. Probabilities are not sharded (plots and predict run on rank 0 alone).
    """
    assert not (keep_probs and ctx.distributed), "probabilities are computed by one process"
    device = split.device
    was_training = model.training
    model.eval()
    channels_last = uses_channels_last(model, device)
    total = torch.zeros((), dtype=torch.float64, device=device)
    correct = torch.zeros((), dtype=torch.int64, device=device)
    probs: list[torch.Tensor] = []
    try:
        with torch.inference_mode(), autocast_context(precision, device):
            for xb, yb in eval_batches(ctx.shard_split(split), batch_size):
                out = model(match_layout(xb, channels_last)).float()  # fp32 loss under bf16
                if loss_fn is not None:
                    # reduction="sum" semantics without a second loss object: mean * n.
                    total += loss_fn(out, yb).double() * len(yb)
                correct += (out.argmax(1) == yb).sum()
                if keep_probs:
                    probs.append(torch.softmax(out, dim=1).cpu())
    finally:
        model.train(was_training)
    if ctx.distributed:
        sums = ctx.all_reduce_sum(torch.stack([total, correct.double()]))
        total, correct = sums[0], sums[1]
    n = max(1, len(split.y))
    kept = None
    if keep_probs:
        kept = torch.cat(probs).numpy() if probs else np.zeros((0, 0), dtype=np.float32)
    return Evaluation(total.item() / n if loss_fn is not None else None, correct.item() / n, kept)


def probabilities(model: nn.Module, x: torch.Tensor, batch_size: int, precision: str = "fp32") -> np.ndarray:
    """Class probabilities ``[N, C]`` of unlabelled inputs (``mnistkit predict``)."""
    unlabelled = Split(x, torch.zeros(len(x), dtype=torch.int64, device=x.device))  # accuracy unused
    result = evaluate(model, unlabelled, batch_size, precision=precision, keep_probs=True)
    assert result.probs is not None
    return result.probs
