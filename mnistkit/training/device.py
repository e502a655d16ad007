"""The training device and its threads: which device, how many CPU threads, GPU math settings."""

from __future__ import annotations

import contextlib
import os
from typing import Any

import torch
from torch import nn

from mnistkit.errors import RunError
from mnistkit.recipe.sections import RecipeBase


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


def default_threads() -> int:
    # One intra-op thread per core we may run on. Measured on the 2-core dev machine (mlp5,
    # batch 64, docs/performance.md): 2 threads 1.6 s/epoch, 1 thread 2.2 s. More threads than
    # cores only adds contention, and torch's own default can count hyperthreads or the whole
    # host inside a container. (The inter-op pool is left alone: eager training never uses it.)
    # N processes on one machine (torchrun's LOCAL_WORLD_SIZE, see training/distributed.py)
    # share the cores equally.
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:
        cores = os.cpu_count() or 1
    local = os.environ.get("LOCAL_WORLD_SIZE", "")
    return max(1, cores // (int(local) if local.isdigit() and int(local) > 0 else 1))


def configure_device(recipe: RecipeBase, device: torch.device) -> int:
    threads = recipe.train.threads or default_threads()
    torch.set_num_threads(threads)
    if device.type == "cuda":
        # TF32 tensor cores for fp32 matmuls and convolutions: several times the fp32 rate for a
        # 10-bit mantissa in the products, which these classifiers do not notice.
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        # Input shapes are fixed for a whole run: let cuDNN time its conv algorithms once.
        torch.backends.cudnn.benchmark = True
    return threads


def _busy_note(threads: int) -> str:
    """A hint when other jobs load the CPU: torch's threads spin-wait for each other, so one busy
    core can make a 2-thread step 5-10x slower (measured in docs/performance.md)."""
    try:
        load = os.getloadavg()[0]
    except (OSError, AttributeError):
        return ""
    if threads > 1 and load >= threads:  # a whole core-count of other work: a concurrent job
        return (
            f"; load average {load:.1f}: if other jobs are running and training is slow, set train.threads: 1"
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
