"""The training device and its threads: which device, how many CPU threads, GPU math settings."""

from __future__ import annotations

import contextlib
import os
from typing import Any

import torch
from torch import nn

from mnistkit.errors import RunError, set_hint
from mnistkit.recipe.sections import RecipeBase
from mnistkit.training.threads import available_cores, candidates, core_share, load_average


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise RunError("train.device is 'cuda' but no CUDA device is available; use device: auto or cpu")
    if name == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise RunError("train.device is 'mps' but MPS is not available; use device: auto or cpu")
    return torch.device(name)


def configure_device(recipe: RecipeBase, device: torch.device) -> int:
    """Set torch's thread count: ``train.threads`` as given, else (auto) this process's share of
    the cores, which the probe (:class:`ThreadProbe`, started by the session) may lower."""
    threads = recipe.train.threads if isinstance(recipe.train.threads, int) else core_share()
    torch.set_num_threads(threads)
    if device.type == "cuda":
        # TF32 tensor cores for fp32 matmuls and convolutions: several times the fp32 rate for a
        # 10-bit mantissa in the products, which these classifiers do not notice.
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        # Input shapes are fixed for a whole run: let cuDNN time its conv algorithms once.
        torch.backends.cudnn.benchmark = True
    return threads


def probe_candidates(recipe: RecipeBase, device: torch.device, distributed: bool) -> list[int]:
    """The thread counts ``train.threads: auto`` will time; fewer than two: nothing to probe.

    Only one CPU process probes: the ranks of a distributed job wait for each other every step,
    so one rank's step time says little about its own thread count; they keep their share."""
    if isinstance(recipe.train.threads, int) or device.type != "cpu" or distributed:
        return []
    return candidates(core_share())


def threads_note(recipe: RecipeBase, threads: int, probing: list[int]) -> str:
    """The run header's word on threads: what was chosen, and why."""
    if isinstance(recipe.train.threads, int):
        return f"{_n_threads(threads)}{_busy_note(threads)}"
    load = load_average()
    at_load = f"; load {load:.1f}" if load is not None else ""
    if len(probing) > 1:
        tried = ", ".join(map(str, probing))
        return f"threads: auto, timing the first steps at {tried} threads{at_load}"
    cores, share = available_cores(), core_share()
    why = f"{cores} cores shared by {cores // share} processes" if share < cores else f"{cores} core(s)"
    return f"{_n_threads(threads)} (auto: {why}{at_load})"


def _n_threads(n: int) -> str:
    return f"{n} thread{'s' * (n != 1)}"


def _busy_note(threads: int) -> str:
    """A hint when other jobs load the CPU and the user fixed several threads: torch's threads
    wait for each other, so one busy core can make a 2-thread step several times slower."""
    load = load_average()
    if load is not None and threads > 1 and load >= threads:  # a core-count of other work
        return f"; load average {load:.1f}: if other jobs are running and training is slow, " + set_hint(
            "train.threads", "auto"
        )
    return ""


def autocast_context(precision: str, device: torch.device) -> Any:
    """bf16 autocast for ``train.precision: bf16``: matmuls and convolutions run in bfloat16
    (tensor cores on CUDA), weights and the loss stay fp32; bf16 keeps fp32's exponent range, so
    unlike fp16 no loss scaling is needed."""
    if precision != "bf16":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)


def uses_channels_last(model: nn.Module, device: torch.device) -> bool:
    """Convolutions on CUDA run fastest in NHWC ("channels_last"): cuDNN's tensor-core kernels
    want it, and with it no layout transposes are inserted around every conv. On CPU the gain is
    not established for these sizes, so the layout is left alone there."""
    return device.type == "cuda" and any(isinstance(m, nn.Conv2d) for m in model.modules())


def match_layout(x: torch.Tensor, channels_last: bool) -> torch.Tensor:
    # A no-op unless the model was converted (runner) and the batch is an image batch [N, C, H, W].
    if channels_last and x.dim() == 4:
        return x.contiguous(memory_format=torch.channels_last)
    return x


def device_memory(device: torch.device) -> int | None:
    """Bytes of memory on ``device``: the GPU's, or the machine's RAM for the CPU; None if unknown."""
    if device.type == "cuda":
        return int(torch.cuda.get_device_properties(device).total_memory)
    if device.type == "cpu":
        try:
            return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
        except (ValueError, OSError, AttributeError):
            return None
    return None


def check_weights_fit(parameters: int | None, device: torch.device) -> None:
    """Refuse, before any data is loaded, a model whose float32 weights alone exceed the device's
    memory (training needs several times that: gradients, optimizer state, activations)."""
    memory = device_memory(device)
    if parameters is None or memory is None or parameters * 4 <= memory:
        return
    raise RunError(
        f"the model has {parameters:,} parameters: {parameters * 4 / 1e9:,.1f} GB of float32 weights "
        f"alone, more than the {memory / 1e9:,.1f} GB of memory on {device}. Make the model smaller "
        "(model.hidden / model.layers); `mnistkit validate` shows the size of a recipe's model"
    )
