"""Reading a memory-mapped dataset without keeping what was read (issue 25).

The pages of a file mapping that a process has touched count in its resident set until it
unmaps them, although the kernel could drop them: reading a mapped dataset once (an epoch, the
data check, a hash of the test split) would make the process as large as the data. A
:class:`Pages` counts what was read from one map and, every ``budget`` bytes, removes the whole
map's pages from this process (``madvise(MADV_DONTNEED)``). They stay in the page cache, which
keeps what memory allows; the next read maps them again (a minor fault) or reads them from disk.

That is safe on mnistkit's maps because they are copy-on-write (``mmap_mode="c"``) and nothing
writes to them: no page holds a private copy that dropping it would lose.

Numpy only (the data check uses it; no torch import).
"""

from __future__ import annotations

import mmap
from collections.abc import Iterator

import numpy as np

PAGE = mmap.PAGESIZE
#: Bytes read from a map between two releases of its pages: a bound on what the map adds to the
#: resident set, small next to a model and its batches, large enough that releasing (a walk of
#: the map's page tables) costs nothing measurable.
BUDGET = 64 << 20
#: A page fault on a file mapping maps up to this many bytes around the page, of what is in the
#: page cache already (Linux's ``fault_around_bytes``, 64 KiB by default): counted with each read.
FAULT_AROUND = 64 << 10
#: Rows read at a time by :func:`chunks`, in bytes.
CHUNK = 8 << 20


class Pages:
    """The pages of one memory map that this process has read, let go every ``budget`` bytes."""

    def __init__(self, x: np.ndarray, budget: int = BUDGET) -> None:
        base = x
        while base is not None and not isinstance(getattr(base, "_mmap", None), mmap.mmap):
            base = getattr(base, "base", None)
        self._mm: mmap.mmap | None = getattr(base, "_mmap", None)
        self.row_bytes = int(np.prod(x.shape[1:], dtype=np.int64)) * x.itemsize
        self.budget = budget
        self.pending = 0
        self.releases = 0  # how many times the pages were let go (tests, diagnostics)

    def read_rows(self, rows: int) -> None:
        """``rows`` rows read at scattered places: each maps its own pages and a window around."""
        self._add(rows * (-(-self.row_bytes // PAGE) * PAGE + FAULT_AROUND))

    def read_bytes(self, nbytes: int) -> None:
        """``nbytes`` read in one piece (and the window a fault maps around them)."""
        self._add(nbytes + FAULT_AROUND)

    def _add(self, nbytes: int) -> None:
        self.pending += nbytes
        if self.pending >= self.budget:
            self.release()

    def release(self) -> None:
        """Remove every page of the map from this process (they stay in the page cache)."""
        if self._mm is not None and not self._mm.closed:
            self._mm.madvise(mmap.MADV_DONTNEED)
        self.pending = 0
        self.releases += 1


def chunks(
    x: np.ndarray, pages: Pages | None = None, nbytes: int = CHUNK
) -> Iterator[tuple[int, np.ndarray]]:
    """``(start, rows)`` over ``x`` in slices of about ``nbytes``; with ``pages``, what each slice
    read counts toward letting the map's pages go. A slice is a view: use it before the next."""
    row = max(1, int(np.prod(x.shape[1:], dtype=np.int64)) * x.itemsize)
    step = max(1, nbytes // row)
    for start in range(0, len(x), step):
        part = x[start : start + step]
        yield start, part
        if pages is not None:
            pages.read_bytes(part.nbytes)
