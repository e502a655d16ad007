"""Shared data containers passed between the dataset loaders and the training layer.

No torch import at module level: importing this module must stay cheap.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, overload

if TYPE_CHECKING:
    import numpy as np
    import torch

    from mnistkit.data.mapped import Rows


def _in_file(x: object) -> bool:
    from mnistkit.data.mapped import Rows

    return isinstance(x, Rows)


@dataclass
class Split:
    """One split of a dataset: in memory (a tensor), or rows of a cache's data file (:class:`Rows`,
    ``data.cache: mmap``: read batch by batch, never whole; issue 25)."""

    x: torch.Tensor | Rows  # uint8 [N, C, H, W] for images; float32 [N, 1, n_mels, frames] for audio
    y: torch.Tensor  # int64 [N]
    # An evaluation split served raw (from the file, issue 25): each batch is moved to mul's
    # device and becomes x * mul + add there (eval_batches), so the split is never held in
    # float32. None: x is served as it is.
    mul: torch.Tensor | None = None
    add: torch.Tensor | None = None

    @property
    def in_file(self) -> bool:
        """Whether the samples stay in the cache's file (read batch by batch)."""
        return _in_file(self.x)

    @property
    def device(self) -> torch.device:
        """Where this split's batches are served (where the model runs)."""
        import torch

        if self.mul is not None:
            return self.mul.device
        return torch.device("cpu") if _in_file(self.x) else self.x.device  # type: ignore[union-attr]

    def raw(self, idx: np.ndarray | torch.Tensor) -> torch.Tensor:
        """Samples ``idx`` as stored (uint8 pixels, raw features)."""
        import numpy as np
        import torch

        if _in_file(self.x):
            i = idx.cpu().numpy() if isinstance(idx, torch.Tensor) else np.asarray(idx)
            return torch.from_numpy(self.x.take(i))  # type: ignore[union-attr]
        return self.x[idx]

    def part(self, idx: slice | np.ndarray | torch.Tensor) -> Split:
        """The samples ``idx`` (a slice or indices) as a split of their own; no data is read from
        a file (a :class:`Rows` keeps only their row numbers)."""
        if _in_file(self.x) and not isinstance(idx, slice):
            x: torch.Tensor | Rows = self.x[idx.cpu().numpy() if hasattr(idx, "cpu") else idx]
        else:
            x = self.x[idx]
        return Split(x, self.y[idx], self.mul, self.add)

    def inputs(self, idx: np.ndarray) -> torch.Tensor:
        """The model's inputs of rows ``idx`` (normalized as evaluation sees them)."""
        x = self.raw(idx)
        if self.mul is None or self.add is None:
            return x
        return x.to(self.mul.device).mul(self.mul).add_(self.add)


class FileList(Sequence[Path]):
    """``root / name`` for every name, made when asked for: a cached start of a 200,000-file
    folder would spend over a second building the ``Path`` objects it may never use."""

    def __init__(self, root: Path, names: Sequence[str]) -> None:
        self.root = Path(root)
        self.names = list(names)

    def __len__(self) -> int:
        return len(self.names)

    @overload
    def __getitem__(self, i: int) -> Path: ...
    @overload
    def __getitem__(self, i: slice) -> FileList: ...
    def __getitem__(self, i: int | slice) -> Path | FileList:
        if isinstance(i, slice):
            return FileList(self.root, self.names[i])
        return self.root / self.names[i]

    def __iter__(self) -> Iterator[Path]:
        root = self.root
        return (root / n for n in self.names)

    def __contains__(self, item: object) -> bool:
        try:
            name = Path(item).relative_to(self.root).as_posix()  # type: ignore[arg-type]
        except (TypeError, ValueError):
            return False
        return name in self.names

    def __eq__(self, other: object) -> bool:
        if isinstance(other, FileList):
            return self.root == other.root and self.names == other.names
        if isinstance(other, list):
            return list(self) == other
        return NotImplemented

    def __repr__(self) -> str:
        return f"FileList({self.root}, {len(self.names)} files)"


@dataclass
class LoadedData:
    """A dataset ready for training: both splits, class names and normalization stats."""

    train: Split
    test: Split
    classes: list[str]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    files: Sequence[Path]
    source: str
    # Folder datasets: the file of each test sample (test_files[i] is test sample i), so plots
    # and listings can name a sample; None where samples have no file of their own (MNIST).
    test_files: Sequence[Path] | None = None
    # Folder datasets loaded with data.skip_bad_files: every file left out, and why (the data
    # check lists them).
    bad_files: dict[str, str] = field(default_factory=dict)
    # Folder datasets: which decoded cache serves the samples and why (data.cache), for the
    # run header; mapped: train.x and test.x are Rows of the cache's data file, read batch by
    # batch (mnistkit.data.mapped), so that a pass over them keeps none of it in memory.
    cache_note: str = ""
    # What the samples are, where the loader knows it without reading them: a hash of its
    # decoded cache's index (files, their sizes and mtimes, settings, the sampled checksum of
    # the rows). The data check's identity uses it instead of hashing every sample.
    content_id: str | None = None

    @property
    def mapped(self) -> bool:
        """Whether the samples stay in the cache's data file (``data.cache: mmap``)."""
        return self.train.in_file
