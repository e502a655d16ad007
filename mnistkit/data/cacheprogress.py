"""Progress of a decoded-cache build, committed so that a stopped build continues (issue 25).

Every :data:`~mnistkit.data.imagecache.PARTIAL_CHUNK` files a build makes the rows it wrote durable
and records them (:class:`Commits`); the next build takes what matches (:func:`resumable`). The
rows themselves are only ever in the data file: a commit names them, with a CRC-32 of each.
"""

from __future__ import annotations

import io
import json
import logging
import os
import zlib
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from mnistkit.fsutil import atomic_write_text

if TYPE_CHECKING:
    from mnistkit.data.imagecache import _Cache

log = logging.getLogger("mnistkit.images")

Fp = tuple[str, int, int]  # a file's name, size and mtime_ns: unchanged when all three are
Known = dict[Fp, tuple[int | str, np.ndarray | None]]  # a file's row (and its sums) or why it failed


class Commits:
    """Commits of a build's progress: after every :data:`PARTIAL_CHUNK` files, the rows written
    since the last commit are made durable (``fsync``), then ``commit-<first row>.json`` records
    which file each row holds (or why a file failed), the rows' per-channel sums and each row's
    CRC-32. The rows are written once, into the data file itself; a commit only names them."""

    def __init__(self, folder: Path, target: str, fresh: bool, start: int) -> None:
        self.folder, self.target, self.fresh = folder, target, fresh
        self.first = start  # first row of the pending commit
        self.span = 0  # rows it covers (an unreadable file's row stays empty)
        self.files: list[list[object]] = []
        self.commits = 0

    @property
    def pending(self) -> int:
        return len(self.files)

    def add(self, fp: Fp, row: int | str, sums: np.ndarray | list | None, crc: int | None) -> None:
        listed = sums.tolist() if isinstance(sums, np.ndarray) else sums
        self.files.append([*fp, row, listed, crc])

    def commit(self, out: io.BufferedRandom) -> None:
        if not self.files:
            return
        try:
            out.flush()
            os.fsync(out.fileno())  # every process's writes to the file, not only this one's
            self.folder.mkdir(parents=True, exist_ok=True)
            record = {
                "target": self.target,
                "fresh": self.fresh,
                "first": self.first,
                "rows": self.span,
                "files": self.files,
            }
            atomic_write_text(self.folder / f"commit-{self.first:012d}.json", json.dumps(record))
            self.commits += 1
        except OSError as e:  # a full disk: the build goes on, it only cannot be continued
            log.warning("image cache: could not record progress for a resumed build (%s)", e)
        self.first += self.span
        self.files, self.span = [], 0


def crc(row: np.ndarray) -> int:
    return zlib.crc32(memoryview(np.ascontiguousarray(row).reshape(-1).view(np.uint8)))


def resumable(
    folder: Path, cache: _Cache | None, cache_dir: Path, dataset: str, key: str, row_bytes: int
) -> tuple[Path, bool, int, Known] | None:
    """What an interrupted build committed, if it can be continued: (the data file it was
    writing, whether that is a fresh file, the row to continue at, every committed file's row or
    failure). Commits are taken in row order, from the row the build started at, while each one's
    rows are in the file and match its CRC-32 (read back: cheap next to decoding them); the
    first that does not ends it, with a warning."""
    if not folder.is_dir():
        return None
    records = []
    for p in sorted(folder.glob("commit-*.json")):
        try:
            records.append(json.loads(p.read_text()))
        except (OSError, ValueError) as e:
            log.warning("image cache: progress record %s is not used (%s)", p.name, e)
            break
    if not records:
        return None
    first = records[0]
    target, fresh = str(first["target"]), bool(first["fresh"])
    if fresh:
        path = cache_dir / target.removesuffix(".part")
        expect = 0
    elif cache is not None and cache.file.path.name == target:
        path, expect = cache.file.path, cache.file.rows
    else:
        return None  # progress of an append to a data file that is no longer the cache's
    known: Known = {}
    writing = cache_dir / target
    try:
        with open(writing, "rb") as f:
            for rec in records:
                if rec["target"] != target or rec["first"] != expect:
                    break
                f.seek(expect * row_bytes)
                blob = f.read(int(rec["rows"]) * row_bytes)
                got_rows: Known = {}
                for name, size, mtime, row, row_sums_, row_crc in rec["files"]:
                    if isinstance(row, str):
                        got_rows[(str(name), int(size), int(mtime))] = (row, None)
                        continue
                    at = (int(row) - expect) * row_bytes
                    if (
                        not 0 <= at <= len(blob) - row_bytes
                        or zlib.crc32(blob[at : at + row_bytes]) != row_crc
                    ):
                        break
                    got_rows[(str(name), int(size), int(mtime))] = (int(row), np.asarray(row_sums_))
                else:
                    known.update(got_rows)
                    expect += int(rec["rows"])
                    continue
                log.warning("image cache: rows %d+ of %s do not match their progress record", expect, target)
                break
    except (OSError, KeyError, TypeError, ValueError) as e:
        log.warning("image cache: an interrupted build cannot be continued (%s)", e)
        return None
    if fresh and not known:
        return None
    return path, fresh, expect, known
