"""Shared data containers passed between the dataset loaders and the training layer.

No torch import at module level: importing this module must stay cheap.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np
    import torch

    from mnistkit.data.mapped import Pages


@dataclass
class Split:
    """One split of a dataset: in memory, or rows of a memory-mapped file (``pages``)."""

    x: torch.Tensor  # uint8 [N, 1, H, W] for images; float32 [N, 1, n_mels, frames] for audio
    y: torch.Tensor  # int64 [N]
    # An evaluation split served raw (memory-mapped, issue 25): each batch is moved to mul's
    # device and becomes x * mul + add there (eval_batches), so the split is never held in
    # float32. None: x is served as it is.
    mul: torch.Tensor | None = None
    add: torch.Tensor | None = None
    pages: Pages | None = None  # x is a view of this memory map: batches are read from its file

    @property
    def device(self) -> torch.device:
        """Where this split's batches are served (where the model runs)."""
        return self.mul.device if self.mul is not None else self.x.device

    def inputs(self, idx: np.ndarray) -> torch.Tensor:
        """The model's inputs of rows ``idx`` (normalized as evaluation sees them)."""
        x = self.x[idx]
        if self.mul is None or self.add is None:
            return x
        return x.to(self.mul.device).mul(self.mul).add_(self.add)


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
    # run header; mapped: train.x and test.x are views of a memory-mapped file, read through
    # ``pages`` (mnistkit.data.mapped) so that reading them whole keeps none of it resident.
    cache_note: str = ""
    mapped: bool = False
    pages: Pages | None = None
    # What the samples are, where the loader knows it without reading them: a hash of its
    # decoded cache's index (files, their sizes and mtimes, settings, the sampled checksum of
    # the rows). The data check's identity uses it instead of hashing every sample.
    content_id: str | None = None
