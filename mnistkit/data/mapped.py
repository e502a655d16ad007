"""Reading a memory-mapped dataset without keeping what was read (issue 25).

The pages of a file mapping that a process has touched count in its resident set until it
unmaps them, although the kernel could drop them: reading a mapped dataset once (an epoch, the
data check, a hash of the test split) would make the process as large as the data. Worse, a
kernel with large page-cache folios (Linux 6.x) maps a whole folio, up to 2 MB, at the first
touch of one byte of it: measured here (Linux 6.18), reading 100 random 27 KB rows of a mapped
file left 127 MB of it resident, 1.3 MB a row.

So what reads a mapped dataset whole does not go through the map:

* batches (training, evaluation) are read from the file with ``os.preadv`` into a fresh buffer
  (:meth:`Pages.rows`, :meth:`Pages.span`): the data passes through the page cache, which keeps
  what memory allows, and is never mapped into the process;
* passes over everything (the data check, hashes) read the map a few MB at a time
  (:func:`chunks`) and, after each slice, remove the map's pages from this process
  (``madvise(MADV_DONTNEED)``; they stay in the page cache).

That is safe on mnistkit's maps because they are copy-on-write (``mmap_mode="c"``) and nothing
writes to them: no page holds a private copy that dropping it would lose.

Numpy only (the data check uses it; no torch import).
"""

from __future__ import annotations

import mmap
import os
from collections.abc import Iterator

import numpy as np

#: Rows read at a time by :func:`chunks`, in bytes.
CHUNK = 8 << 20


class Pages:
    """The file behind a memory-mapped ``.npy`` (``x``, as ``np.load(mmap_mode=...)`` returns
    it): rows of any view of it read from the file, and the map's pages let go.

    The file is opened now, with the map: a rebuild that later deletes it (another run) leaves
    both readable, as a mapping is."""

    def __init__(self, x: np.memmap) -> None:
        self._mm: mmap.mmap | None = getattr(x, "_mmap", None)
        self.row_shape = tuple(x.shape[1:])
        self.dtype = x.dtype
        self.row_bytes = int(np.prod(self.row_shape, dtype=np.int64)) * x.itemsize
        self._addr = int(x.ctypes.data)  # where row 0 is mapped ...
        self._offset = int(x.offset)  # ... and where it is in the file
        self._fd = os.open(str(x.filename), os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
        self.releases = 0  # how many times the map's pages were let go (tests, diagnostics)

    def __del__(self) -> None:
        fd = getattr(self, "_fd", None)
        if fd is not None:
            os.close(fd)

    def _file_offset(self, first: int) -> int:
        """File offset of the row mapped at address ``first`` (a view's first row)."""
        delta = first - self._addr
        if delta < 0 or delta % self.row_bytes:
            raise ValueError("not a row of this map")
        return self._offset + delta

    def rows(self, first: int, idx: np.ndarray) -> np.ndarray:
        """Rows ``idx`` of the view whose row 0 is mapped at address ``first``, read from the
        file (one ``preadv`` a row), as a new array ``[len(idx), *row_shape]``."""
        base = self._file_offset(first)
        out = np.empty((len(idx), *self.row_shape), self.dtype)
        flat = memoryview(out.reshape(len(idx), self.row_bytes // self.dtype.itemsize)).cast("B")
        n = self.row_bytes
        for i, r in enumerate(np.asarray(idx, dtype=np.int64).tolist()):
            self._read(flat[i * n : (i + 1) * n], base + r * n)
        return out

    def span(self, first: int, start: int, stop: int) -> np.ndarray:
        """Rows ``start:stop`` of the view whose row 0 is mapped at ``first``: one read."""
        out = np.empty((max(0, stop - start), *self.row_shape), self.dtype)
        if len(out):
            self._read(
                memoryview(out.reshape(-1)).cast("B"), self._file_offset(first) + start * self.row_bytes
            )
        return out

    def _read(self, into: memoryview, offset: int) -> None:
        got = os.preadv(self._fd, [into], offset)
        while got < len(into):  # a short read (signals, some file systems): read the rest
            more = os.preadv(self._fd, [into[got:]], offset + got)
            if more == 0:
                raise OSError(f"{self.row_bytes}-byte rows: the file ended at {offset + got}")
            got += more

    def release(self) -> None:
        """Remove every page of the map from this process (they stay in the page cache)."""
        if self._mm is not None and not self._mm.closed:
            self._mm.madvise(mmap.MADV_DONTNEED)
        self.releases += 1


def let_go(*arrays: np.ndarray | None) -> None:
    """Remove the pages of each array's memory map (numpy memmaps and their views) from this
    process; plain arrays are left alone. On a shared, writable map (a cache being built) dirty
    pages stay in the page cache and are written back as usual: nothing is lost."""
    for x in arrays:
        mm = getattr(x, "_mmap", None)
        if isinstance(mm, mmap.mmap) and not mm.closed:
            mm.madvise(mmap.MADV_DONTNEED)


def chunks(
    x: np.ndarray, pages: Pages | None = None, nbytes: int = CHUNK
) -> Iterator[tuple[int, np.ndarray]]:
    """``(start, rows)`` over ``x`` in slices of about ``nbytes``; with ``pages`` (``x`` is a view
    of that map), the map's pages are let go after each slice. A slice is a view: use it before
    asking for the next."""
    row = max(1, int(np.prod(x.shape[1:], dtype=np.int64)) * x.itemsize)
    step = max(1, nbytes // row)
    for start in range(0, len(x), step):
        yield start, x[start : start + step]
        if pages is not None:
            pages.release()
