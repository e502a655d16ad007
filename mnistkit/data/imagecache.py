"""The decoded cache of a folder of files: one append-only data file of rows, a table, an index.

Layout under the cache folder, per folder and decoding settings (``<key>``):

* ``<dataset>-<key>-<gen>.rows``: the decoded rows, uncompressed, back to back (``[C, H, W]``
  uint8 for an image), in the order they were decoded. Nothing else is in it: a row is found
  by its number, read with ``preadv`` (:mod:`mnistkit.data.mapped`), and the OS page cache
  keeps whatever part of the file memory allows. A split is a list of row numbers; shuffling
  permutes sample indices, never the data;
* ``<dataset>-<key>-<tag>.npz``: the table, one entry per usable file: its name, size, mtime
  and row, and the per-channel sum and sum of squares of its row (the training split's mean and
  std are summed from these exactly, for whichever files a seed puts in it); numpy arrays, so
  a cached start at 200,000 files reads it in milliseconds;
* ``<dataset>-<key>.json``: the index: format version, root, settings, row shape and type, the
  data file's name, how many of its rows are valid, their bytes and a sampled checksum, the
  table's name, the unreadable files with their reason, and how many rows are dead.

**Incremental.** Files added or changed since (a different size or mtime) are decoded and their
rows *appended* to the data file; the rows of unchanged files stay where they are, so adding 1 %
of the files writes 1 % of the data. Rows of removed or changed files are dead; when more than
half of the file would be dead, the build writes a fresh data file with the live rows instead.

**Nothing half-written is trusted.** The index is the only thing that says which rows are
valid. A build appends (or writes a new file), ``fsync``s, writes the table under a new name,
then replaces the index (write, then rename), then deletes what the old index named and the
new one does not: stopped at any point, the previous index still describes valid rows, and a
run that is reading the file meanwhile is not disturbed (appending leaves its rows alone; a
replaced file stays readable to whoever has it open). The next build cuts off whatever an
interrupted append left past the index's rows (or its last commit). Builds of one cache take a lock
(``<dataset>-<key>.lock``), so two runs (or two ranks) never append at once; the second finds
the first's index and decodes nothing.

**A stopped build continues.** Every :data:`PARTIAL_CHUNK` files a build makes the rows it
wrote durable (``fsync``) and records them in ``<dataset>-<key>.partial/commit-<row>.json``: the
data file it writes (a fresh one is written as ``<name>.rows.part`` and renamed when complete),
each file's name, size, mtime and row (or why it failed), the rows' sums and a CRC-32 of their
bytes. The rows themselves are written once, into the data file. A build stopped midway (Ctrl-C,
a kill) leaves these; the next build checks each commit's rows against its CRC, in order, takes
the files of every commit that matches, cuts the file after them and goes on decoding the rest;
the folder is removed once an index names the rows.

What opening checks (cheaply, at every start): the data file holds at least the bytes the index
names, and a sha256 of 16 blocks of 64 KiB spread over them (the first and the last included)
matches. That catches a truncated file and any block overwritten in place; a bit flipped between
two sampled blocks is left to the file system (a full checksum would read the whole dataset at
every start). The table is a zip whose members carry a CRC, which numpy's reader checks.
"""

from __future__ import annotations

import fcntl
import hashlib
import io
import json
import logging
import os
import shutil
import time
import uuid
import zipfile
import zlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from mnistkit.data.cacheprogress import Commits, Fp, Known, crc, resumable
from mnistkit.data.mapped import DataFile
from mnistkit.fsutil import atomic_write_text, fsync_dir, tmp_path

if TYPE_CHECKING:
    from concurrent.futures import Executor

log = logging.getLogger("mnistkit.images")

INDEX_VERSION = 2
_BLOCK = 64 * 1024
_BLOCKS = 16

#: A build writes a fresh data file (only live rows) when more than this fraction of the rows
#: would otherwise be dead (removed or changed files): the file never grows past twice the data.
COMPACT_DEAD_FRACTION = 0.5

Progress = Callable[[int, int], None]


@dataclass
class Decoded:
    """Where every file asked for is in the cache: ``rows[i]`` is file ``i``'s row of ``file``,
    -1 for an unreadable one (``bad`` says why)."""

    file: DataFile
    rows: np.ndarray  # int64 [len(names)]
    sums: np.ndarray  # [len(names), C, 2]: per-channel sum and sum of squares of each row
    bad: dict[str, str]
    reused: int  # files whose rows (or whose failure) came from the cache
    decoded: int  # files decoded now
    seconds: float
    fingerprints: tuple[np.ndarray, np.ndarray]  # every file's size and mtime_ns, as looked at
    notes: list[str] = field(default_factory=list)  # e.g. why the previous cache was not used
    processes: int = 1  # how many processes decoded

    @property
    def path(self) -> Path:
        return self.file.path


def fingerprints(base: Path, names: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """(sizes, mtimes in ns) of every file, as int64 arrays; -1 for one that cannot be read now
    (decoding records why). os.stat on strings: pathlib costs ~25 µs a file, a second per
    40,000 files."""
    prefix = os.path.join(str(base), "")
    sizes = np.empty(len(names), np.int64)
    mtimes = np.empty(len(names), np.int64)
    stat = os.stat
    for i, name in enumerate(names):
        try:
            st = stat(prefix + name)
            sizes[i], mtimes[i] = st.st_size, st.st_mtime_ns
        except OSError:
            sizes[i], mtimes[i] = -1, -1
    return sizes, mtimes


def cache_key(dataset: str, root: Path, settings: dict[str, object]) -> str:
    material = json.dumps({"dataset": dataset, "root": str(root.resolve()), **settings}, sort_keys=True)
    return hashlib.sha256(material.encode()).hexdigest()[:20]


def sampled_sha256(path: Path, size: int) -> str:
    """sha256 of ``_BLOCKS`` blocks spread evenly over the first ``size`` bytes of the file, the
    first and last included."""
    h = hashlib.sha256(str(size).encode())
    starts = sorted({int(i * max(0, size - _BLOCK) / (_BLOCKS - 1)) for i in range(_BLOCKS)})
    with open(path, "rb") as f:
        for s in starts:
            f.seek(s)
            h.update(f.read(max(0, min(_BLOCK, size - s))))
    return h.hexdigest()


def content_id(
    settings: dict[str, object], names: Sequence[str], sizes: np.ndarray, mtimes: np.ndarray
) -> str:
    """What the decoded rows of ``names`` (in this order) are, without reading them: the decoding
    settings and every file's name, size and mtime. A file of unchanged size and mtime is taken as
    unchanged: the rule that decides what is decoded again. The data check's identity uses it."""
    h = hashlib.sha256(json.dumps([INDEX_VERSION, settings], sort_keys=True).encode())
    h.update("\0".join(names).encode("utf-8", "surrogateescape"))
    h.update(np.ascontiguousarray(sizes, np.int64).tobytes())
    h.update(np.ascontiguousarray(mtimes, np.int64).tobytes())
    return h.hexdigest()


def row_sums(x: np.ndarray) -> np.ndarray:
    """Per-channel sum and sum of squares of each row of ``x`` ``[N, C, ...]``: ``[N, C, 2]``,
    int64 for integer data (exact), float64 otherwise."""
    n, c = x.shape[0], x.shape[1]
    flat = x.reshape(n, c, -1)
    kind = np.int64 if np.issubdtype(x.dtype, np.integer) else np.float64
    wide = flat.astype(kind)
    return np.stack([wide.sum(axis=2), np.einsum("ncp,ncp->nc", wide, wide)], axis=2)


def mean_std(sums: np.ndarray, per_row: int, scale: float) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std of ``scale`` times the values of the rows whose
    :func:`row_sums` are ``sums`` (``per_row`` values per channel in a row). Integer sums are
    combined exactly (Python integers), then divided once."""
    channels = sums.shape[1]
    means, stds = [], []
    for c in range(channels):
        if np.issubdtype(sums.dtype, np.integer):
            s, q = int(sums[:, c, 0].sum()), int(sums[:, c, 1].sum())
        else:
            s, q = float(sums[:, c, 0].sum()), float(sums[:, c, 1].sum())
        n = max(1, len(sums) * per_row)
        mean = s / n
        var = max(0.0, (q * n - s * s) / (n * n))
        std = var**0.5 * scale
        means.append(float(mean * scale))
        stds.append(float(std) if std > 0 else 1.0)  # a constant channel: never divide by 0
    return tuple(means), tuple(stds)


# ----------------------------------------------------------------------------- the cache as it is
@dataclass
class _Cache:
    """A cache as its index and table describe it, checked."""

    index: dict
    names: list[str]
    sizes: np.ndarray
    mtimes: np.ndarray
    rows: np.ndarray
    sums: np.ndarray
    file: DataFile
    # Looked up for the files a build asks for (decode_into): each one's position in the table
    # (-1: not there unchanged), and those the index lists as unreadable, unchanged since.
    pos: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    bad: dict[str, str] = field(default_factory=dict)


def _paths(cache_dir: Path, dataset: str, key: str) -> tuple[Path, Path, Path]:
    stem = f"{dataset}-{key}"
    return cache_dir / f"{stem}.json", cache_dir / f"{stem}.partial", cache_dir / f"{stem}.lock"


def _open(
    index_path: Path, settings: dict[str, object], shape: tuple[int, ...], dtype: np.dtype
) -> _Cache | None:
    """The cache behind ``index_path``; None when there is none; ValueError/OSError (with the
    reason) when it is unusable."""
    try:
        index = json.loads(index_path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as e:
        raise ValueError(f"unreadable index ({e})") from None
    if not isinstance(index, dict) or index.get("version") != INDEX_VERSION:
        raise ValueError("index of another format version")
    if index["settings"] != settings or index["shape"] != list(shape) or index["dtype"] != dtype.str:
        raise ValueError("index of other settings")  # a key collision: short of sha256 breaking
    folder = index_path.parent
    path = folder / str(index["data"])
    size = path.stat().st_size  # FileNotFoundError is an OSError: the caller rebuilds
    nbytes = int(index["nbytes"])
    if size < nbytes:
        raise ValueError(f"{path.name} is {size:,} bytes, the index says {nbytes:,}: truncated")
    if sampled_sha256(path, nbytes) != index["sampled_sha256"]:
        raise ValueError(f"{path.name} does not match its checksum: overwritten or corrupted")
    try:
        with np.load(folder / str(index["table"]), allow_pickle=False) as t:
            names_blob, sizes, mtimes, rows, sums = (
                t[k] for k in ("names", "sizes", "mtimes", "rows", "sums")
            )
    except (zipfile.BadZipFile, KeyError) as e:
        raise ValueError(f"unreadable table {index['table']} ({e})") from None
    names = names_blob.tobytes().decode("utf-8", "surrogateescape").split("\0") if len(names_blob) else []
    if not (len(names) == len(sizes) == len(mtimes) == len(rows) == len(sums) == int(index["count"])):
        raise ValueError(f"table {index['table']} does not match its index")
    file = DataFile(path, dtype, shape, int(index["rows"]))
    if len(rows) and (rows.min() < 0 or rows.max() >= file.rows):
        raise ValueError(f"table {index['table']} names rows outside {path.name}")
    return _Cache(index, names, sizes, mtimes, rows, sums, file)


def _lookup(cache: _Cache, names: Sequence[str], sizes: np.ndarray, mtimes: np.ndarray) -> np.ndarray:
    """For every file, its position in the cache's table if it is there unchanged, else -1."""
    if cache.names == list(names):  # the common case, a cached start: same files, same order
        pos = np.arange(len(names), dtype=np.int64)
    else:
        where = {n: i for i, n in enumerate(cache.names)}
        pos = np.fromiter((where.get(n, -1) for n in names), np.int64, len(names))
    found = pos >= 0
    safe = np.where(found, pos, 0)
    same = found & (cache.sizes[safe] == sizes) & (cache.mtimes[safe] == mtimes) if len(pos) else found
    return np.where(same, pos, -1)


def decode_into(
    dataset: str,
    base: Path,
    names: Sequence[str],
    settings: dict[str, object],
    decode: Callable[[Path], np.ndarray],
    shape: tuple[int, ...],
    cache_dir: Path,
    progress: Progress | None,
    workers: int | None = None,
    dtype: np.dtype | str = np.uint8,
) -> Decoded:
    """Where every file of ``names`` (relative to ``base``) is in the cache, decoding (with
    ``workers`` processes, default one per core: :func:`decode_all`) only those the cache does
    not hold unchanged. ``progress(done, total)`` counts the files decoded now."""
    t0 = time.perf_counter()
    cache_dir = Path(cache_dir)
    dtype = np.dtype(dtype)
    settings = json.loads(json.dumps(dict(settings)))  # as the index stores it
    key = cache_key(dataset, base, settings)
    index_path, partial_dir, lock_path = _paths(cache_dir, dataset, key)
    sizes, mtimes = fingerprints(base, names)
    notes: list[str] = []

    def current() -> _Cache | Decoded | None:
        """The cache when it holds every file (as a Decoded), else the cache as it is (None:
        there is none, or it is unusable)."""
        try:
            cache = _open(index_path, settings, shape, dtype)
        except (OSError, ValueError, KeyError, TypeError) as e:
            msg = f"image cache {index_path} is unusable ({e}): decoding again"
            log.warning("%s", msg)
            notes.append(msg)
            return None
        if cache is None:
            return None
        pos = _lookup(cache, names, sizes, mtimes)
        cache.bad = _known_bad(cache.index, names, sizes, mtimes, pos)
        cache.pos = pos
        if all(p >= 0 or n in cache.bad for p, n in zip(pos.tolist(), names, strict=True)):
            rows = np.where(pos >= 0, cache.rows[np.maximum(pos, 0)], -1)
            sums = cache.sums[np.maximum(pos, 0)] if len(pos) else cache.sums[:0]
            took = time.perf_counter() - t0
            fps = (sizes, mtimes)
            return Decoded(cache.file, rows, sums, cache.bad, len(names), 0, took, fps, notes)
        return cache

    got = current()
    if isinstance(got, Decoded):
        return got
    workers = workers or default_workers()
    # The decoding processes start now, when there will be enough files for them: each takes
    # ~0.25 s of CPU to start (Python, numpy, the decoder's module), which then overlaps the
    # build's planning instead of following it.
    todo = len(names) if got is None else int((got.pos < 0).sum())
    pool = start_pool(workers, decode) if workers > 1 and todo >= PARALLEL_MIN_FILES else None
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
        with open(lock_path, "a+b") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # one build at a time; released when the file closes
            notes.clear()
            got = current()  # another process may have built it while this one waited
            if isinstance(got, Decoded):
                return got
            return _build(
                dataset, key, settings, base, names, sizes, mtimes, got, decode, shape, dtype,
                cache_dir, partial_dir, progress, workers, notes, t0, pool,
            )  # fmt: skip
    finally:
        if pool is not None:
            pool.shutdown(wait=False, cancel_futures=True)  # (a second shutdown is a no-op)


def _known_bad(
    index: dict, names: Sequence[str], sizes: np.ndarray, mtimes: np.ndarray, pos: np.ndarray
) -> dict[str, str]:
    """The files asked for that the index lists as unreadable, unchanged since: name → why."""
    recorded = {str(b[0]): (int(b[1]), int(b[2]), str(b[3])) for b in index["bad"]}
    if not recorded:
        return {}
    out = {}
    for i in np.flatnonzero(pos < 0).tolist():
        got = recorded.get(names[i])
        if got is not None and got[0] == sizes[i] and got[1] == mtimes[i]:
            out[names[i]] = got[2]
    return out


def _build(
    dataset: str,
    key: str,
    settings: dict[str, object],
    base: Path,
    names: Sequence[str],
    sizes: np.ndarray,
    mtimes: np.ndarray,
    cache: _Cache | None,
    decode: Callable[[Path], np.ndarray],
    shape: tuple[int, ...],
    dtype: np.dtype,
    cache_dir: Path,
    partial_dir: Path,
    progress: Progress | None,
    workers: int,
    notes: list[str],
    t0: float,
    pool: Executor | None,
) -> Decoded:
    n = len(names)
    fps = [(names[i], int(sizes[i]), int(mtimes[i])) for i in range(n)]
    pos = cache.pos if cache is not None else np.full(n, -1, np.int64)
    bad = dict(cache.bad) if cache is not None else {}
    row_bytes = int(np.prod(shape)) * dtype.itemsize
    rows = np.full(n, -1, np.int64)
    sums = np.zeros((n, shape[0], 2), np.int64 if np.issubdtype(dtype, np.integer) else np.float64)
    path, fresh, start, known = _target(partial_dir, cache, cache_dir, dataset, key, row_bytes, pos)
    if not fresh:  # rows of unchanged files are where the table says
        assert cache is not None
        hit = pos >= 0
        rows[hit], sums[hit] = cache.rows[pos[hit]], cache.sums[pos[hit]]
    reused_from_progress = 0
    for i, fp in enumerate(fps):
        got = known.get(fp)
        if got is not None and rows[i] < 0 and fp[0] not in bad:
            reused_from_progress += 1
            if isinstance(got[0], str):
                bad[fp[0]] = got[0]
            else:
                rows[i], sums[i] = got[0], got[1]
    to_copy = [i for i in range(n) if fresh and pos[i] >= 0 and rows[i] < 0]  # compaction
    decode_now = [i for i in range(n) if pos[i] < 0 and rows[i] < 0 and fps[i][0] not in bad]
    if reused_from_progress:
        notes.append(f"{reused_from_progress} file(s) decoded by an interrupted build were reused")
    writing = path.with_name(path.name + ".part") if fresh else path
    committer = Commits(partial_dir, writing.name, fresh, start)
    work = _Found(fps, rows, sums, bad, committer)
    try:
        with open(writing, "r+b" if writing.exists() else "w+b") as out:
            out.truncate(start * row_bytes)  # an interrupted build's tail: never committed
            out.seek(start * row_bytes)
            next_row = start
            if to_copy:
                assert cache is not None
                next_row = work.copy(out, cache, pos, to_copy, next_row, row_bytes)
            out.flush()  # the decoding processes write the next rows themselves
            writer = _RowWriter(decode, dtype.str, shape, str(writing), row_bytes)
            next_row = work.decode(out, base, decode_now, writer, workers, progress, next_row, pool)
            out.flush()
            os.fsync(out.fileno())
        if fresh:
            os.replace(writing, path)
            fsync_dir(cache_dir)
    except BaseException:
        if fresh and not committer.commits:
            writing.unlink(missing_ok=True)  # nothing of it can be continued: leave nothing
        raise
    file = DataFile(path, dtype, shape, next_row)
    _publish(cache_dir, dataset, key, settings, base, file, work, sizes, mtimes)
    shutil.rmtree(partial_dir, ignore_errors=True)  # the index names their rows now
    processes = workers if len(decode_now) >= PARALLEL_MIN_FILES else 1
    decoded = len(decode_now)  # the files an interrupted build committed count as reused
    took = time.perf_counter() - t0
    return Decoded(file, rows, sums, bad, n - decoded, decoded, took, (sizes, mtimes), notes, processes)


def _target(
    partial_dir: Path,
    cache: _Cache | None,
    cache_dir: Path,
    dataset: str,
    key: str,
    row_bytes: int,
    pos: np.ndarray,
) -> tuple[Path, bool, int, Known]:
    """Where a build's rows go: (the data file, whether it is a fresh one, the first row to
    write, what an interrupted build committed). The cache's own file, appended to; a fresh file
    when there is no usable cache or over :data:`COMPACT_DEAD_FRACTION` of the rows would be
    dead; the file an interrupted build was writing, when it committed progress."""
    resumed = resumable(partial_dir, cache, cache_dir, dataset, key, row_bytes)
    if resumed is not None:
        return resumed
    shutil.rmtree(partial_dir, ignore_errors=True)  # progress of another target: of no use
    if cache is not None:
        live = len(np.unique(cache.rows[pos[pos >= 0]]))
        dead = cache.file.rows - live
        if dead <= COMPACT_DEAD_FRACTION * (cache.file.rows + int((pos < 0).sum())):
            return cache.file.path, False, cache.file.rows, {}
    return cache_dir / f"{dataset}-{key}-{uuid.uuid4().hex[:8]}.rows", True, 0, {}


@dataclass
class _Found:
    """What a build has found out so far, per file asked for: its row (-1: none yet) and sums,
    the unreadable files, and the progress commits."""

    fps: list[Fp]
    rows: np.ndarray
    sums: np.ndarray
    bad: dict[str, str]
    committer: Commits

    def copy(
        self,
        out: io.BufferedRandom,
        cache: _Cache,
        pos: np.ndarray,
        todo: list[int],
        next_row: int,
        row_bytes: int,
    ) -> int:
        """Compaction: the rows of files ``todo`` (unchanged, in the previous data file) written
        at ``next_row`` on, in their old order; the next free row."""
        order = sorted(todo, key=lambda i: int(cache.rows[pos[i]]))
        step = max(1, (8 << 20) // row_bytes)
        for lo in range(0, len(order), step):
            part = order[lo : lo + step]
            block = cache.file.read(cache.rows[pos[part]])
            out.write(memoryview(block.reshape(-1).view(np.uint8)))
            for k, i in enumerate(part):
                self.rows[i], self.sums[i] = next_row + k, cache.sums[pos[i]]
                self.committer.add(self.fps[i], next_row + k, self.sums[i], crc(block[k]))
            self.committer.span += len(part)
            next_row += len(part)
        self.committer.commit(out)
        return next_row

    def decode(
        self,
        out: io.BufferedRandom,
        base: Path,
        todo: list[int],
        writer: _RowWriter,
        workers: int,
        progress: Progress | None,
        first: int,
        pool: Executor | None,
    ) -> int:
        """Files ``todo`` decoded, file k's row written at row ``first + k`` by the process that
        decoded it (os.pwrite: the rows cross no pipe and this process does not copy them; an
        unreadable file leaves its row empty, a dead row); the next free row."""
        prefix = os.path.join(str(base), "")  # strings: a Path costs ~10 µs a file to pickle
        items = [(prefix + self.fps[i][0], first + k) for k, i in enumerate(todo)]
        results = decode_all(items, writer, workers, progress, pool)
        next_row = first
        try:
            for k, (i, got) in enumerate(zip(todo, results, strict=True)):
                if isinstance(got, str):
                    self.bad[self.fps[i][0]] = got
                    self.committer.add(self.fps[i], got, None, None)
                else:
                    self.rows[i], self.sums[i] = first + k, got[0]
                    self.committer.add(self.fps[i], first + k, got[0], got[1])
                self.committer.span += 1
                next_row = first + k + 1
                if self.committer.pending >= PARTIAL_CHUNK:
                    self.committer.commit(out)
        finally:
            results.close()  # stops the worker processes, also on Ctrl-C
            _close_files()
        return next_row


def _publish(
    cache_dir: Path,
    dataset: str,
    key: str,
    settings: dict[str, object],
    base: Path,
    file: DataFile,
    work: _Found,
    sizes: np.ndarray,
    mtimes: np.ndarray,
) -> None:
    """The table under a new name, then the index that names it and the data file (write, then
    rename), then what no index names any more."""
    good = work.rows >= 0
    table = f"{dataset}-{key}-{uuid.uuid4().hex[:8]}.npz"
    good_names = [work.fps[i][0] for i in np.flatnonzero(good).tolist()]
    _write_table(cache_dir / table, good_names, sizes[good], mtimes[good], work.rows[good], work.sums[good])
    nbytes = file.rows * file.row_bytes
    index = {
        "version": INDEX_VERSION,
        "dataset": dataset,
        "root": str(base.resolve()),
        "settings": settings,
        "shape": list(file.row_shape),
        "dtype": file.dtype.str,
        "data": file.path.name,
        "rows": file.rows,
        "nbytes": nbytes,
        "sampled_sha256": sampled_sha256(file.path, nbytes),
        "table": table,
        "count": int(good.sum()),
        "dead": file.rows - int(len(np.unique(work.rows[good]))),
        "bad": [[*fp, work.bad[fp[0]]] for fp in work.fps if fp[0] in work.bad],
    }
    atomic_write_text(cache_dir / f"{dataset}-{key}.json", json.dumps(index))
    for stale in cache_dir.glob(f"{dataset}-{key}-*"):
        if stale.name not in (file.path.name, table):
            stale.unlink(missing_ok=True)


def _write_table(
    path: Path, names: list[str], sizes: np.ndarray, mtimes: np.ndarray, rows: np.ndarray, sums: np.ndarray
) -> None:
    """The table, written under a temporary name and renamed."""
    blob = np.frombuffer("\0".join(names).encode("utf-8", "surrogateescape"), np.uint8)
    tmp = tmp_path(path)
    with open(tmp, "wb") as f:
        np.savez(f, names=blob, sizes=sizes, mtimes=mtimes, rows=rows, sums=sums)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


# ------------------------------------------------------------------------------- resuming
#: Files per commit of a build's progress (issue 25): a build stopped midway keeps what it
#: committed, and the next build decodes only the files of no commit.
PARTIAL_CHUNK = 512


# ------------------------------------------------------------------------------- decoding
#: Fewer files than this are decoded in this process: starting worker processes (each imports
#: numpy and Pillow) would cost more than it saves.
PARALLEL_MIN_FILES = 200


def default_workers() -> int:
    """One decoding process per core this process may run on."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


@dataclass(frozen=True)
class _RowWriter:
    """Decode one file and write its row into the data file at its place; picklable when
    ``decode`` is, for the decoding processes. Returns the row's :func:`row_sums` and CRC-32."""

    decode: Callable[[Path], np.ndarray]
    dtype: str
    shape: tuple[int, ...]
    path: str
    row_bytes: int

    def __call__(self, item: tuple[str, int]) -> tuple[list[list[Any]], int]:
        path, row = item
        data = np.ascontiguousarray(self.decode(Path(path)), dtype=self.dtype)
        if data.shape != self.shape:
            raise ValueError(f"decoded to {data.shape}, the cache holds {self.shape}")
        flat = memoryview(data.reshape(-1).view(np.uint8))
        fd = _FILES.get(self.path)
        if fd is None:
            fd = _FILES[self.path] = os.open(self.path, os.O_WRONLY | getattr(os, "O_CLOEXEC", 0))
        done = 0
        while done < len(flat):
            done += os.pwrite(fd, flat[done:], row * self.row_bytes + done)
        return row_sums(data[None])[0].tolist(), zlib.crc32(flat)  # lists: cheaper to send


#: The data files a process writes rows into (:class:`_RowWriter`), opened once per process.
_FILES: dict[str, int] = {}


def _close_files() -> None:
    while _FILES:
        os.close(_FILES.popitem()[1])


def _decode_or_reason(decode: Callable[[Any], Any], item: Any) -> Any:
    try:
        return decode(item)
    except Exception as e:  # any decode failure makes this one file "bad"
        return f"{type(e).__name__}: {e}".strip()


def _started(decode: Any) -> None:
    """Nothing: sent to a new decoding process so that it imports ``decode``'s module now."""


def start_pool(workers: int, decode: Any) -> Executor:
    """``workers`` spawned decoding processes (spawn, not fork: this process may hold torch's
    threads), started now and importing ``decode``'s module while the caller goes on."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"))
    for _ in range(workers):  # one task per process: each submit to a busy pool starts one more
        pool.submit(_started, decode)
    return pool


def decode_all(
    items: Sequence[Any],
    decode: Callable[[Any], Any],
    workers: int,
    progress: Progress | None,
    pool: Executor | None = None,
) -> Iterator[Any]:
    """``decode(item)`` of every item, in order: what it returns, or why it failed.

    With ``workers`` > 1 (and at least :data:`PARALLEL_MIN_FILES` files) in ``pool`` or a new
    :func:`start_pool` of that many processes, in chunks of up to 64 files so that results come
    back steadily and in order; ``decode`` must then be picklable. The pool is shut down at the
    end; Ctrl-C cancels what is not started yet.
    """
    total = len(items)
    every = max(1, total // 200)
    if progress is not None and total:
        progress(0, total)
    if workers > 1 and total >= PARALLEL_MIN_FILES:  # (keep in step with Decoded.processes)
        pool = pool or start_pool(workers, decode)
        chunk = max(1, min(64, total // (workers * 8)))  # one task and one answer per chunk
        results: Iterator[Any] = pool.map(partial(_decode_or_reason, decode), items, chunksize=chunk)
    else:
        results = (_decode_or_reason(decode, it) for it in items)
    try:
        for i, got in enumerate(results, start=1):
            if progress is not None and (i % every == 0 or i == total):
                progress(i, total)
            yield got
    finally:
        if pool is not None:
            pool.shutdown(wait=False, cancel_futures=True)


# ------------------------------------------------------------------------------- memory or map
def available_memory() -> int | None:
    """Bytes of memory available to new allocations (Linux: MemAvailable), None if unknown."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


#: ``data.cache: auto`` keeps the decoded data in memory when it takes at most this fraction of
#: the memory available when the run starts, else maps it.
AUTO_MEMORY_FRACTION = 0.25


def choose_mode(requested: str, nbytes: int, available: int | None) -> tuple[str, str]:
    """(``memory`` or ``mmap``, why) for ``data.cache`` = ``requested``."""
    from mnistkit.data.cache import human_size

    if requested != "auto":
        return requested, f"data.cache: {requested}"
    if available is None:
        return "memory", "available memory unknown"
    limit = int(available * AUTO_MEMORY_FRACTION)
    if nbytes <= limit:
        return "memory", f"{human_size(nbytes)} <= 1/4 of {human_size(available)} available"
    return "mmap", f"{human_size(nbytes)} > 1/4 of {human_size(available)} available"
