"""Shared data containers passed between the dataset loaders and the training layer.

No torch import at module level: importing this module must stay cheap.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch


@dataclass
class Split:
    """One split of a dataset held in memory."""

    x: torch.Tensor  # uint8 [N, 1, H, W] for images; float32 [N, 1, n_mels, frames] for audio
    y: torch.Tensor  # int64 [N]


@dataclass
class LoadedData:
    """A dataset ready for training: both splits, class names and normalization stats."""

    train: Split
    test: Split
    classes: list[str]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    files: list[Path]
    source: str
    # Folder datasets: the file of each test sample (test_files[i] is test sample i), so plots
    # and listings can name a sample; None where samples have no file of their own (MNIST).
    test_files: list[Path] | None = None
    # Folder datasets loaded with data.skip_bad_files: every file left out, and why (the data
    # check lists them).
    bad_files: dict[str, str] = field(default_factory=dict)
    # Folder datasets: which decoded cache serves the samples and why (data.cache), for the
    # run header; mapped: train.x and test.x are views of a memory-mapped file.
    cache_note: str = ""
    mapped: bool = False
