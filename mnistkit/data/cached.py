"""A class folder's samples from the decoded cache, for image and audio folders alike.

Every file is looked up in (or decoded into) the cache of :mod:`mnistkit.data.imagecache`; then
each split is either read into memory or left in the data file as :class:`~mnistkit.data.mapped.Rows`
(``data.cache``, :func:`~mnistkit.data.imagecache.choose_mode`). The loaders keep what differs:
how files are listed and checked, and what their source line says.
"""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mnistkit.data.imagecache import (
    Decoded,
    Progress,
    available_memory,
    choose_mode,
    content_id,
    decode_into,
    mean_std,
)
from mnistkit.data.mapped import Rows
from mnistkit.data.types import FileList, LoadedData, Split


@dataclass
class CachedFolder:
    """The usable files of a folder, training split first: where their rows are, in memory or
    in the file."""

    feats: Decoded
    root: Path
    good: np.ndarray  # bool per file asked for: usable
    n_asked_train: int  # files asked for in the training split (usable or not)
    train_x: Any  # torch.Tensor (in memory) or Rows (in the file)
    test_x: Any
    labels: np.ndarray  # int64 per file asked for
    mode_note: str  # the run header's "cache" line, e.g. "mmap (data.cache: mmap)"
    settings: dict[str, object]
    names: list[str]

    @property
    def n_train(self) -> int:
        return int(self.good[: self.n_asked_train].sum())

    @property
    def n_test(self) -> int:
        return int(self.good[self.n_asked_train :].sum())

    def train_stats(self, per_row: int, scale: float) -> tuple[tuple[float, ...], tuple[float, ...]]:
        """The training split's per-channel mean and std (:func:`mean_std` of its rows' sums)."""
        k = self.n_asked_train
        return mean_std(self.feats.sums[:k][self.good[:k]], per_row, scale)

    def origin(self, noun: str, decoded: str) -> str:
        """How the samples were had: "loaded from cache X in S s" or "<decoded> in S s ..."."""
        f = self.feats
        if f.decoded == 0:
            return f"{noun}loaded from cache {f.path} in {f.seconds:.2f} s"
        procs = f" by {f.processes} processes" if f.processes > 1 else ""
        return f"{decoded} in {f.seconds:.1f} s{procs} ({f.decoded} decoded, {f.reused} reused)"

    def loaded(
        self, classes: list[str], mean: tuple[float, ...], std: tuple[float, ...], source: str
    ) -> LoadedData:
        import torch

        k = self.n_asked_train
        used = (
            [n for n, ok in zip(self.names, self.good.tolist(), strict=True) if ok]
            if self.feats.bad
            else self.names
        )
        sizes, mtimes = self.feats.fingerprints
        files = FileList(self.root, used)
        return LoadedData(
            train=Split(x=self.train_x, y=torch.from_numpy(self.labels[:k][self.good[:k]])),
            test=Split(x=self.test_x, y=torch.from_numpy(self.labels[k:][self.good[k:]])),
            classes=classes,
            mean=mean,
            std=std,
            files=files,  # files[i] is train sample i, files[n_train + j] test sample j
            source=source,
            test_files=files[self.n_train :],
            bad_files={str(self.root / name): reason for name, reason in self.feats.bad.items()},
            cache_note="; ".join([self.mode_note, *self.feats.notes]),
            content_id=content_id(self.settings, used, sizes[self.good], mtimes[self.good]),
        )


def load_cached(
    dataset: str,
    root: Path,
    train_names: Sequence[tuple[str, str]],
    test_names: Sequence[tuple[str, str]],
    classes: list[str],
    settings: dict[str, object],
    decode: Callable[[Path], np.ndarray],
    shape: tuple[int, ...],
    dtype: np.dtype | str,
    cache_dir: Path | None,
    cache_mode: str,
    progress: Progress | None,
    workers: int | None = None,
) -> CachedFolder:
    """``train_names``/``test_names`` ((relative name, class) pairs) from the cache, decoding
    what it lacks; each split in memory or left in the file, as ``cache_mode`` says. Without a
    cache folder, the files are decoded into one that goes away, after they were read."""
    import torch

    names = [n for n, _ in train_names] + [n for n, _ in test_names]
    with tempfile.TemporaryDirectory() if cache_dir is None else contextlib.nullcontext() as tmp:
        folder = Path(tmp) if cache_dir is None else Path(cache_dir)
        feats = decode_into(dataset, root, names, settings, decode, shape, folder, progress, workers, dtype)
        good = feats.rows >= 0
        if cache_dir is None:
            mode, why = "memory", "no cache folder"
        else:
            mode, why = choose_mode(cache_mode, int(good.sum()) * feats.file.row_bytes, available_memory())
        k = len(train_names)
        train_x: Any = Rows(feats.file, feats.rows[:k][good[:k]])
        test_x: Any = Rows(feats.file, feats.rows[k:][good[k:]])
        if mode == "memory":  # read once into memory; the file is not used again
            train_x, test_x = torch.from_numpy(train_x.read_all()), torch.from_numpy(test_x.read_all())
    label = {c: i for i, c in enumerate(classes)}
    labels = np.fromiter((label.get(c, -1) for _, c in [*train_names, *test_names]), np.int64, len(names))
    return CachedFolder(feats, root, good, k, train_x, test_x, labels, f"{mode} ({why})", settings, names)
