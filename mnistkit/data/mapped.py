"""The samples of a decoded cache, read from its data file as needed (issue 25).

A cached folder's decoded rows live in one uncompressed data file (:mod:`mnistkit.data.imagecache`).
A split of it is :class:`Rows`: that file plus, for each sample, the row that holds it. Shuffling
permutes sample indices, a validation split or ``data.limit`` takes some of them, a rank takes
its part: none of it copies data.

Rows are read with ``os.preadv`` into a fresh buffer, never through a memory map. The pages of a
file mapping that a process has touched count in its resident set until it unmaps them, and a
kernel with large page-cache folios (Linux 6.x) maps a whole folio, up to 2 MB, at the first
touch of one byte of it: measured here (Linux 6.18), reading 100 random 27 KB rows through a map
left 127 MB of it resident, 1.3 MB a row. Read with ``preadv``, the data passes through the page
cache, which keeps what memory allows, and the process holds only the batch it asked for. Runs
of consecutive rows (a test split, a pass over everything) are read with one call each.

Numpy only (the data check uses it; no torch import).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np

#: Rows read at a time by :meth:`Rows.chunks`, in bytes.
CHUNK = 8 << 20


class DataFile:
    """``rows`` rows of ``row_shape`` and ``dtype`` stored back to back from ``offset`` of a file.

    The file is opened now: a rebuild that later replaces it (another run) leaves this one
    readable, as an open file outlives its name."""

    def __init__(
        self, path: Path, dtype: np.dtype | str, row_shape: tuple[int, ...], rows: int, offset: int = 0
    ) -> None:
        self.path = Path(path)
        self.dtype = np.dtype(dtype)
        self.row_shape = tuple(int(s) for s in row_shape)
        self.rows = int(rows)
        self.offset = int(offset)
        self.row_bytes = int(np.prod(self.row_shape, dtype=np.int64)) * self.dtype.itemsize
        self._fd: int | None = os.open(str(path), os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))

    def __del__(self) -> None:
        fd = getattr(self, "_fd", None)
        if fd is not None:
            os.close(fd)
            self._fd = None

    def __getstate__(self) -> dict[str, object]:  # a DataLoader worker reopens the file
        return {k: v for k, v in self.__dict__.items() if k != "_fd"}

    def __setstate__(self, state: dict[str, object]) -> None:
        self.__dict__.update(state)
        self._fd = os.open(str(self.path), os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))

    def read(self, rows: np.ndarray) -> np.ndarray:
        """Rows ``rows`` (file row numbers, any order, repeats allowed) as a new array
        ``[len(rows), *row_shape]``: one ``preadv`` per run of consecutive rows."""
        rows = np.asarray(rows, dtype=np.int64).reshape(-1)
        out = np.empty((len(rows), *self.row_shape), self.dtype)
        if not len(rows):
            return out
        if rows.min() < 0 or rows.max() >= self.rows:
            raise IndexError(f"row {int(rows.max())} of a {self.rows}-row data file")
        flat = memoryview(out.reshape(-1).view(np.uint8))
        n = self.row_bytes
        breaks = np.flatnonzero(np.diff(rows) != 1) + 1
        starts = np.concatenate(([0], breaks)).tolist()
        stops = np.concatenate((breaks, [len(rows)])).tolist()
        first = rows[starts].tolist()
        for a, b, r in zip(starts, stops, first, strict=True):
            self._read(flat[a * n : b * n], self.offset + r * n)
        return out

    def _read(self, into: memoryview, offset: int) -> None:
        assert self._fd is not None
        got = os.preadv(self._fd, [into], offset)
        while got < len(into):  # a short read (signals, some file systems): read the rest
            more = os.preadv(self._fd, [into[got:]], offset + got)
            if more == 0:
                raise OSError(f"{self.path.name}: the file ended at byte {offset + got}")
            got += more


class Rows:
    """A split of a cached dataset: sample ``i`` is row ``rows[i]`` of ``file``.

    What a split's ``x`` is when its data stays in the file (``data.cache: mmap``). Indexing with
    a slice or an index array gives another :class:`Rows` (no data read); :meth:`take`,
    :meth:`span` and :meth:`chunks` read."""

    def __init__(self, file: DataFile, rows: np.ndarray) -> None:
        self.file = file
        self.rows = np.asarray(rows, dtype=np.int64).reshape(-1)

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def shape(self) -> tuple[int, ...]:
        return (len(self.rows), *self.file.row_shape)

    @property
    def dtype(self) -> np.dtype:
        return self.file.dtype

    @property
    def nbytes(self) -> int:
        return len(self.rows) * self.file.row_bytes

    def __getitem__(self, key: slice | np.ndarray | list[int]) -> Rows:
        if isinstance(key, slice):
            return Rows(self.file, self.rows[key])
        idx = np.asarray(key)
        if idx.dtype == bool or idx.ndim != 1:
            raise TypeError("Rows takes a slice or a 1-d array of sample indices")
        return Rows(self.file, self.rows[idx.astype(np.int64)])

    def take(self, idx: np.ndarray) -> np.ndarray:
        """Samples ``idx`` (indices into this split), read."""
        return self.file.read(self.rows[np.asarray(idx, dtype=np.int64)])

    def span(self, start: int, stop: int) -> np.ndarray:
        """Samples ``start:stop``, read."""
        return self.file.read(self.rows[start:stop])

    def read_all(self) -> np.ndarray:
        """Every sample, read into memory (``data.cache: memory``)."""
        return self.file.read(self.rows)

    def chunks(self, nbytes: int = CHUNK) -> Iterator[tuple[int, np.ndarray]]:
        """``(start, samples)`` over this split, about ``nbytes`` at a time."""
        step = max(1, nbytes // max(1, self.file.row_bytes))
        for start in range(0, len(self.rows), step):
            yield start, self.span(start, start + step)


def chunks(x: np.ndarray | Rows, nbytes: int = CHUNK) -> Iterator[tuple[int, np.ndarray]]:
    """``(start, rows)`` over ``x`` in slices of about ``nbytes``: read from the file for
    :class:`Rows`, views for an array. Use a slice before asking for the next."""
    if isinstance(x, Rows):
        yield from x.chunks(nbytes)
        return
    row = max(1, int(np.prod(x.shape[1:], dtype=np.int64)) * x.itemsize)
    step = max(1, nbytes // row)
    for start in range(0, len(x), step):
        yield start, x[start : start + step]
