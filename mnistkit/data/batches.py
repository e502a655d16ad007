"""Preparing loaded data for the loop and serving batches.

Datasets that fit in memory are decoded once into one tensor, placed on the training device once,
and batched by indexing with a fresh permutation every epoch: the same semantics as a shuffled
DataLoader (every sample once per epoch, last partial batch kept unless ``drop_last``), without
per-sample Python. Training batches are normalized as they are served (uint8 stays uint8 in
memory; see :class:`Prepared`). ``data.loader: dataloader`` keeps the classic DataLoader path.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler, TensorDataset

from mnistkit.data.mapped import Rows, chunks
from mnistkit.data.types import LoadedData, Split
from mnistkit.recipe.sections import DataSection, Normalize


@dataclass
class Prepared:
    """The data on the training device, plus what the model needs to know.

    ``train.x`` keeps the dataset's storage type (uint8 pixels for images, float32 for audio
    features) and every batch is normalized as it is served, by :meth:`inputs`; ``test`` and
    ``val`` are normalized once, with the same function, because evaluation, plots and predict use
    them whole (memory-mapped data, issue 25: they stay raw uint8 and each evaluation batch is
    normalized as it is read, :attr:`Split.mul`, so that no split is ever held whole). Why not
    normalize the training set once too: measured on the 2-core dev machine
    (docs/performance.md), a float32 copy of Fashion-MNIST's 60,000 training images is 188 MB
    against 47 MB of uint8, and it bought about 13 µs of a ~1,700 µs training step (index_select of
    64 float rows: 5 µs; of 64 uint8 rows plus the multiply-add below: 18 µs). The 141 MB count
    toward peak memory; the 13 µs are under 1% of a step.
    """

    train: Split  # raw: normalize batches with inputs()
    test: Split  # normalized float32; memory-mapped data: raw, normalized per batch (Split.mul)
    val: Split | None  # as test
    classes: list[str]
    in_shape: tuple[int, ...]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    scale: float  # raw value → [0, 1] factor applied before (x - mean) / std (1/255 for uint8)
    source: str
    files: list[Path]
    x_mul: torch.Tensor | None = None  # inputs(x) = x * x_mul + x_add, per channel, on the device
    x_add: torch.Tensor | None = None
    # the training data's own per-channel mean in [0, 1], whatever data.normalize says (predict
    # uses it to tell light-on-dark datasets from dark-on-light ones)
    pixel_mean: tuple[float, ...] = ()
    test_files: list[Path] | None = None  # LoadedData.test_files, test_limit applied
    # sha256 of the test inputs as stored (before normalization), test_limit applied: which samples
    # a run was tested on, in which order, whatever its normalization (predictions.npz records it;
    # see test_inputs_sha256)
    test_sha256: str = ""
    # data.cache: mmap: the raw test rows, hashed when the hash is first asked for (at the end of
    # the run): reading 1.1 GB of test images at 200,000 files took ~1.5 s of every start
    test_rows: Rows | None = None
    cache_note: str = ""  # LoadedData.cache_note: the run header's "cache" line

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def test_inputs_sha256(self) -> str:
        if not self.test_sha256 and self.test_rows is not None:
            self.test_sha256 = tensor_sha256(self.test_rows)
        return self.test_sha256

    def inputs(self, x: torch.Tensor) -> torch.Tensor:
        """A raw batch (as stored in ``train.x``) → normalized float32 model input."""
        if self.x_mul is None or self.x_add is None:
            self.x_mul, self.x_add = affine(self.mean, self.std, self.scale, x.dim(), x.device)
        return normalize(x, self.x_mul, self.x_add)


def normalize_stats(section: DataSection, loaded: LoadedData) -> tuple[tuple[float, ...], tuple[float, ...]]:
    if isinstance(section.normalize, Normalize):
        return tuple(section.normalize.mean), tuple(section.normalize.std)
    if section.normalize == "none":
        return (0.0,), (1.0,)
    return tuple(loaded.mean), tuple(loaded.std)


def affine(
    mean: tuple[float, ...],
    std: tuple[float, ...],
    scale: float,
    ndim: int,
    device: torch.device | str = "cpu",
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(x * scale - mean) / std`` as one multiply-add: per-channel ``x * mul + add``.

    Computed in float64 and rounded once, shaped ``[1, C, 1, ...]`` to broadcast over a batch.
    """
    shape = (1, -1) + (1,) * (ndim - 2)
    m = torch.tensor(mean, dtype=torch.float64)
    s = torch.tensor(std, dtype=torch.float64)
    mul = (scale / s).to(torch.float32).view(shape).to(device)
    add = (-m / s).to(torch.float32).view(shape).to(device)
    return mul, add


def normalize(x: torch.Tensor, mul: torch.Tensor, add: torch.Tensor) -> torch.Tensor:
    # x.mul() reads uint8 and writes float32 in one pass (type promotion), add_ works in place:
    # two passes over the batch, no intermediate copy.
    return x.mul(mul).add_(add)


def to_float(x: torch.Tensor, mean: tuple[float, ...], std: tuple[float, ...], scale: float) -> torch.Tensor:
    """Raw tensor [N, C, ...] → normalized float32, exactly as training batches (and predict)."""
    mul, add = affine(mean, std, scale, x.dim(), x.device)
    return normalize(x, mul, add)


def raw_test_split(loaded: LoadedData, section: DataSection) -> Split:
    """The test split as the dataset stores it (uint8 pixels, raw features), ``test_limit`` applied.

    What an exported model (mnistkit.export) is evaluated on: it normalizes inside its graph.
    """
    test = loaded.test
    return test.part(slice(0, section.test_limit)) if section.test_limit else Split(test.x, test.y)


def prepare(loaded: LoadedData, section: DataSection, seed: int, device: torch.device) -> Prepared:
    """Limit, split off validation (seeded), move to the device once; normalize test/val once.

    The training split stays raw (see :class:`Prepared`). With ``loader: dataloader`` it also
    stays in CPU memory: that path exists for data that is not meant to live on the device, and
    its batches are copied over (from pinned memory on CUDA) one at a time.
    """
    mean, std = normalize_stats(section, loaded)
    scale = 1 / 255 if str(loaded.train.x.dtype).endswith("uint8") else 1.0
    train = loaded.train
    if section.limit:
        train = train.part(slice(0, section.limit))
    val: Split | None = None
    if section.val_split > 0:
        g = torch.Generator().manual_seed(seed + 1)  # independent of the shuffling stream
        perm = torch.randperm(len(train.y), generator=g)
        n_val = max(1, round(len(train.y) * section.val_split))
        vi, ti = perm[:n_val].sort().values, perm[n_val:].sort().values
        # rows of the file (data.cache: mmap): only row numbers are picked, nothing is read
        val, train = train.part(vi), train.part(ti)
    test = raw_test_split(loaded, section)
    mul, add = affine(mean, std, scale, len(loaded.train.x.shape), device)

    def put(split: Split) -> Split:
        y = split.y.to(torch.int64).to(device)
        if split.in_file:  # raw, read and normalized batch by batch (never whole in float32)
            return Split(split.x, y, mul, add)
        return Split(normalize(split.x.to(device), mul, add), y)  # type: ignore[union-attr]

    # Rows of the cache's file stay there (batches read them and are moved to the device one
    # at a time); copying them would load the whole dataset.
    if train.in_file:
        train_split = Split(train.x, train.y.to(torch.int64))
    else:
        resident = section.loader == "memory"
        train_device = device if resident else torch.device("cpu")
        train_split = Split(train.x.to(train_device), train.y.to(torch.int64).to(train_device))  # type: ignore[union-attr]
    return Prepared(
        train=train_split,
        test=put(test),
        val=put(val) if val is not None else None,
        classes=list(loaded.classes),
        in_shape=tuple(loaded.train.x.shape[1:]),
        mean=mean,
        std=std,
        scale=scale,
        source=loaded.source,
        files=loaded.files,
        x_mul=mul,
        x_add=add,
        pixel_mean=tuple(float(m) for m in loaded.mean),
        test_files=loaded.test_files[: len(test.y)] if loaded.test_files is not None else None,
        test_sha256="" if isinstance(test.x, Rows) else tensor_sha256(test.x),
        test_rows=test.x if isinstance(test.x, Rows) else None,
        cache_note=loaded.cache_note,
    )


def tensor_sha256(x: torch.Tensor | Rows) -> str:
    """sha256 of a tensor's dtype, shape and values (C order): equal exactly when the data is.

    Read in slices of a few MB (rows of a cache's file: read from it, slice by slice)."""
    import hashlib

    arr = x if isinstance(x, Rows) else x.detach().cpu().contiguous().numpy()
    h = hashlib.sha256(f"{arr.dtype.str}{list(arr.shape)}".encode())
    # reshape(-1): memoryview cannot cast a shape with a 0 in it
    for _, part in chunks(arr):
        h.update(memoryview(np.ascontiguousarray(part).reshape(-1)).cast("B"))
    return h.hexdigest()


# -------------------------------------------------------------------------------------- batching
def num_batches(n: int, batch_size: int, drop_last: bool) -> int:
    return n // batch_size if drop_last else -(-n // batch_size)


def epoch_order(
    n: int, shuffle: bool, generator: torch.Generator, weights: torch.Tensor | None = None
) -> torch.Tensor:
    """This epoch's sample order: a fresh ``torch.randperm(n, generator)``, the permutation a
    shuffling DataLoader's RandomSampler draws (it draws and discards a second one per epoch, so
    the streams agree only in the first epoch; the semantics are the same).

    ``weights`` (``data.sampler: balanced``, :func:`balanced_weights`): ``n`` draws with
    replacement instead, sample ``i`` with probability proportional to ``weights[i]`` (what
    torch's WeightedRandomSampler draws, from the same generator)."""
    if weights is not None:
        return torch.multinomial(weights, n, replacement=True, generator=generator)
    return torch.randperm(n, generator=generator) if shuffle else torch.arange(n)


def balanced_weights(y: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Per-sample weights that make every class equally likely: ``1 / count(class of i)``
    (float64 on the CPU, where the shuffling generator lives)."""
    y = y.cpu()
    counts = torch.bincount(y, minlength=num_classes).to(torch.float64)
    return 1.0 / counts[y]


def memory_batches(
    split: Split, batch_size: int, order: torch.Tensor, drop_last: bool, shard: tuple[int, int] = (0, 1)
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Raw batches: the resident tensors indexed with consecutive slices of ``order``.

    index_select, not ``x[idx]``: advanced indexing goes through a general N-d gather that took
    11-36 µs for 64 rows of 784 floats on the dev machine, index_select 5-11 µs.

    ``shard=(rank, world_size)``: in a distributed run each process serves only its contiguous
    part of every global batch (``torch.tensor_split``: sizes differ by at most one, the first
    ``len % world_size`` ranks take one more), so together they see the one seeded order.
    """
    order = order.to(split.device)  # on CUDA the permutation lives there too: no host sync
    n = len(order)
    stop = n - n % batch_size if drop_last else n
    for start in range(0, stop, batch_size):
        idx = shard_part(order[start : start + batch_size], shard)
        yield rows(split, idx), split.y.index_select(0, idx)


def rows(split: Split, idx: torch.Tensor) -> torch.Tensor:
    """``split.x``'s rows ``idx``: read from the cache's file for rows of it (``data.cache:
    mmap``), so that an epoch keeps nothing of the file in this process."""
    if isinstance(split.x, Rows):
        return torch.from_numpy(split.x.take(idx.cpu().numpy()))
    return split.x.index_select(0, idx)


def shard_part(batch: torch.Tensor, shard: tuple[int, int]) -> torch.Tensor:
    """Rank ``shard[0]``'s contiguous part of a global batch (rows), of ``shard[1]`` parts:
    ``torch.tensor_split``'s sizes, the first ``len % parts`` parts one row longer."""
    rank, parts = shard
    return batch.tensor_split(parts)[rank] if parts > 1 else batch


class FileRows(Dataset[tuple[torch.Tensor, torch.Tensor]]):
    """Samples of a cache's file for a DataLoader (``loader: dataloader`` with ``data.cache:
    mmap``): each read from the file when asked for, a batch at a time where the DataLoader asks
    so (``__getitems__``), never all of them."""

    def __init__(self, x: Rows, y: torch.Tensor) -> None:
        self.x, self.y = x, y

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.from_numpy(self.x.take(np.array([i]))[0]), self.y[i]

    def __getitems__(self, idx: list[int]) -> list[tuple[torch.Tensor, torch.Tensor]]:
        xs = torch.from_numpy(self.x.take(np.asarray(idx)))
        return list(zip(xs, self.y[idx], strict=True))


class EpochOrder(Sampler[int]):
    """A sampler whose order is replaced every epoch, so one DataLoader (and its persistent
    workers) serves all epochs while visiting exactly the order the memory path uses."""

    def __init__(self, order: torch.Tensor | None = None) -> None:
        self.order: list[int] = [] if order is None else order.tolist()

    def __iter__(self) -> Iterator[int]:
        return iter(self.order)

    def __len__(self) -> int:
        return len(self.order)


def default_workers() -> int:
    # Measured (docs/performance.md): for tensors already in memory a worker only indexes and
    # collates, and on 2 cores it competes with the 2 compute threads, so the default is none.
    return 0


def make_dataloader(
    split: Split,
    batch_size: int,
    drop_last: bool,
    num_workers: int | None,
    device: torch.device,
) -> DataLoader[Any]:
    """The classic path: a DataLoader over the same (CPU) tensors, per-sample indexing and
    collation, fed each epoch's permutation through its :class:`EpochOrder` sampler."""
    workers = default_workers() if num_workers is None else num_workers
    x = split.x
    dataset = FileRows(x, split.y.cpu()) if isinstance(x, Rows) else TensorDataset(x.cpu(), split.y.cpu())
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=EpochOrder(),
        drop_last=drop_last,
        num_workers=workers,
        persistent_workers=workers > 0,  # fork the workers once, not once per epoch
        pin_memory=device.type == "cuda",  # pinned pages make the copy below asynchronous
    )


def dataloader_batches(
    loader: DataLoader[Any], order: torch.Tensor, device: torch.device
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Raw batches of ``loader`` (from :func:`make_dataloader`) in ``order``, on the device."""
    assert isinstance(loader.sampler, EpochOrder)
    loader.sampler.order = order.tolist()
    for xb, yb in loader:
        yield xb.to(device, non_blocking=True), yb.to(device, non_blocking=True)


def eval_batches(split: Split, batch_size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Consecutive batches of model inputs; a raw split's (``split.mul``) normalized one by one
    on its device."""
    for start in range(0, len(split.y), batch_size):
        stop = min(len(split.y), start + batch_size)
        x = split.x
        xb = torch.from_numpy(x.span(start, stop)) if isinstance(x, Rows) else x[start:stop]
        if split.mul is not None and split.add is not None:
            xb = normalize(xb.to(split.mul.device), split.mul, split.add)
        yield xb, split.y[start:stop]
