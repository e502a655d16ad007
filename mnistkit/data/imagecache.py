"""The decoded cache of an image folder: one uncompressed uint8 ``.npy`` plus a JSON index.

Why ``.npy``: it is numpy's own format (a short header, then the raw C-order bytes), so
``np.load(path, mmap_mode=...)`` maps it without reading it, and needs no new dependency; the
OS page cache then keeps whatever part of it memory allows. A training batch reads its rows by
index; shuffling permutes indices, never the data.

Layout under the cache folder, per image folder and image settings (``<key>``):

* ``image_folder-<key>.json``: the index (format version, root, settings, shape; every file's
  name, size, mtime, label, split and row; unreadable files with their reason; the data file's
  name, size and a sampled checksum; the training split's pixel mean/std);
* ``image_folder-<key>-<build>.npy``: rows ``[N, C, H, W]`` in the order of the index: the
  training split, then the test split, so each split is one contiguous slice (no copy).

A build writes a new ``.npy`` under a temporary name, renames it, then replaces the index (also
write-then-rename), then deletes the previous ``.npy``: an interrupted build leaves the previous
cache intact and nothing a later run trusts. Rows of files whose size and mtime are unchanged are
copied from the previous cache; only new or changed files are decoded again.

While it decodes, a build commits every :data:`PARTIAL_CHUNK` files to
``image_folder-<key>.partial/`` (a ``chunk-<id>.npy`` of their rows, then a ``chunk-<id>.json``
naming each file's size and mtime and the ``.npy``'s size and sha256). A build stopped midway
(Ctrl-C, a kill) leaves these; the next build takes the rows of every chunk whose record exists
and matches, decodes the rest, and removes the folder once the cache is complete.

What opening checks (cheaply, at every start): the ``.npy`` has the size the index recorded, and
a sha256 of 16 blocks of 64 KiB spread over it (the first and the last included) matches. That
catches a truncated file and any block overwritten in place; a bit flipped between two sampled
blocks is left to the file system (a full checksum would read the whole dataset at every start).
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import shutil
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import numpy as np

from mnistkit.data.mapped import let_go
from mnistkit.fsutil import atomic_write_text, fsync_dir, tmp_path

log = logging.getLogger("mnistkit.images")

INDEX_VERSION = 1
_BLOCK = 64 * 1024
_BLOCKS = 16

Progress = Callable[[int, int], None]


@dataclass(frozen=True)
class Item:
    """One file of the folder, in the row order the caller wants: relative name, label, split."""

    name: str
    label: str
    split: str  # "train" or "test"


@dataclass
class Decoded:
    """The decoded rows of the usable files, in the order they were asked for."""

    x: np.ndarray  # uint8 [len(good), C, H, W]: an np.memmap of the cache, or in memory
    good: list[str]
    bad: dict[str, str]
    path: Path | None  # the .npy, None when nothing was cached
    reused: int  # files whose rows (or whose failure) came from the previous cache
    decoded: int  # files decoded now
    seconds: float
    mean: tuple[float, ...] = ()  # per channel in [0, 1], over the rows of the training split
    std: tuple[float, ...] = ()
    notes: list[str] = field(default_factory=list)  # e.g. why the previous cache was not used
    processes: int = 1  # how many processes decoded
    content: str = ""  # content_id() of the cache's index


def fingerprints(base: Path, names: Sequence[str]) -> list[tuple[int, int]]:
    """(size, mtime_ns) of every file; (-1, -1) for one that cannot be read now (decoding records
    why). os.stat on strings: pathlib costs ~25 µs a file, a second per 40,000 files."""
    prefix = os.path.join(str(base), "")
    out = []
    for name in names:
        try:
            st = os.stat(prefix + name)
            out.append((st.st_size, st.st_mtime_ns))
        except OSError:
            out.append((-1, -1))
    return out


def cache_key(dataset: str, root: Path, settings: dict[str, object]) -> str:
    material = json.dumps({"dataset": dataset, "root": str(root.resolve()), **settings}, sort_keys=True)
    return hashlib.sha256(material.encode()).hexdigest()[:20]


def sampled_sha256(path: Path, size: int) -> str:
    """sha256 of ``_BLOCKS`` blocks spread evenly over the file, the first and last included."""
    h = hashlib.sha256(str(size).encode())
    starts = sorted({int(i * max(0, size - _BLOCK) / (_BLOCKS - 1)) for i in range(_BLOCKS)})
    with open(path, "rb") as f:
        for s in starts:
            f.seek(s)
            h.update(f.read(_BLOCK))
    return h.hexdigest()


def content_id(index: dict) -> str:
    """What the rows of a cache are, from its index alone: every file's name, size, mtime,
    label, split and row, the unreadable ones, the decoding settings, and the data file's size
    and sampled checksum (not its name: rebuilding the same files gives the same id).

    It stands for the decoded pixels as far as the cache itself does: a file of unchanged size
    and mtime is taken as unchanged (the rule that decides what is decoded again), and the data
    file is checked by its size and sampled blocks at every start."""
    keys = ("version", "settings", "shape", "files", "bad", "nbytes", "sampled_sha256")
    material = json.dumps([index[k] for k in keys], sort_keys=True)
    return hashlib.sha256(material.encode()).hexdigest()


def _read_index(index_path: Path) -> dict | None:
    try:
        index = json.loads(index_path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as e:
        raise ValueError(f"unreadable index ({e})") from None
    if not isinstance(index, dict) or index.get("version") != INDEX_VERSION:
        raise ValueError("index of another format version")
    return index


def open_cached(folder: Path, index: dict, shape: tuple[int, ...]) -> np.ndarray:
    """The index's ``.npy`` as a copy-on-write memmap, after the size and sampled-checksum checks.

    ``mmap_mode="c"``: pages are read from the file and never written back, and the array is
    writable as torch.from_numpy wants (nothing writes to it)."""
    path = folder / str(index["data"])
    size = path.stat().st_size  # FileNotFoundError is an OSError: the caller rebuilds
    if size != index["nbytes"]:
        raise ValueError(f"{path.name} is {size:,} bytes, the index says {index['nbytes']:,}: truncated")
    if sampled_sha256(path, size) != index["sampled_sha256"]:
        raise ValueError(f"{path.name} does not match its checksum: overwritten or corrupted")
    x = np.load(path, mmap_mode="c", allow_pickle=False)
    if x.dtype != np.uint8 or tuple(x.shape) != (len(index["files"]), *shape):
        raise ValueError(f"{path.name} holds {x.dtype} {tuple(x.shape)}, not the index's rows")
    return x


def _shrink_npy(path: Path, rows: int, shape: tuple[int, ...]) -> None:
    """Rewrite a uint8 ``.npy``'s header to ``rows`` rows (fewer than allocated: unreadable files
    left gaps at the end) and cut the file after them. The new header is padded to the old
    header's length, so the data does not move."""
    with open(path, "r+b") as f:
        f.seek(8)
        header_len = int.from_bytes(f.read(2), "little")
        text = f"{{'descr': '|u1', 'fortran_order': False, 'shape': {(rows, *shape)!r}, }}"
        f.seek(10)
        f.write(text.ljust(header_len - 1).encode("latin1") + b"\n")
        f.truncate(10 + header_len + rows * int(np.prod(shape)))


def pixel_stats(x: np.ndarray, rows: int) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std in [0, 1] of ``x[:rows]``, exactly, from per-channel value
    counts (one pass, in chunks: never a float copy of the data)."""
    channels = x.shape[1]
    counts = np.zeros((channels, 256), dtype=np.int64)
    step = max(1, (16 << 20) // max(1, int(np.prod(x.shape[1:]))))
    for start in range(0, rows, step):
        chunk = np.asarray(x[start : min(rows, start + step)])
        for c in range(channels):
            counts[c] += np.bincount(chunk[:, c].ravel(), minlength=256)
        let_go(x)  # a memory map's pages: read once, not kept in this process
    values = np.arange(256, dtype=np.float64)
    n = counts.sum(axis=1).astype(np.float64)
    n = np.where(n > 0, n, 1)
    mean = (counts * values).sum(axis=1) / n
    var = (counts * (values[None, :] - mean[:, None]) ** 2).sum(axis=1) / n
    std = np.sqrt(var) / 255
    std = np.where(std > 0, std, 1.0)  # a constant channel: scale only, never divide by 0
    return tuple(float(m) for m in mean / 255), tuple(float(s) for s in std)


def decode_into(
    dataset: str,
    base: Path,
    items: Sequence[Item],
    settings: dict[str, object],
    decode: Callable[[Path], np.ndarray],
    shape: tuple[int, ...],
    cache_dir: Path,
    progress: Progress | None,
    workers: int | None = None,
) -> Decoded:
    """Rows of every usable file of ``items``, in that order, as a memmap of the cache.

    From the cache as it is when the index matches ``items`` exactly; else rebuilt, reusing the
    rows (and failures) of unchanged files and decoding only the others, with ``workers``
    processes (default: one per core this process may use; :func:`decode_all`).
    ``progress(done, total)`` counts the files decoded now."""
    t0 = time.perf_counter()
    cache_dir = Path(cache_dir)
    settings = json.loads(json.dumps(dict(settings)))  # as the index stores it
    key = cache_key(dataset, base, settings)
    index_path = cache_dir / f"{dataset}-{key}.json"
    prints = fingerprints(base, [it.name for it in items])
    wanted = [[it.name, *fp, it.label, it.split] for it, fp in zip(items, prints, strict=True)]
    notes: list[str] = []
    old_x: np.ndarray | None = None
    index: dict | None = None
    try:
        index = _read_index(index_path)
        if index is not None and (index["settings"] != settings or index["shape"] != list(shape)):
            index = None  # another key's collision: cannot happen short of sha256 breaking
        if index is not None:
            old_x = open_cached(cache_dir, index, shape)
    except (OSError, ValueError, KeyError, TypeError) as e:
        msg = f"image cache {index_path} is unusable ({e}): decoding again"
        log.warning("%s", msg)
        notes.append(msg)
        index, old_x = None, None
    if index is not None and old_x is not None:
        if _same_rows(index, wanted):
            bad = {f[0]: f[5] for f in index["bad"]}
            stats = index["stats"]
            return Decoded(
                old_x,
                [f[0] for f in index["files"]],
                bad,
                cache_dir / index["data"],
                len(items),
                0,
                time.perf_counter() - t0,
                tuple(stats["mean"]),
                tuple(stats["std"]),
                notes,
                content=str(index["content"]) if "content" in index else content_id(index),
            )
    return _build(
        dataset,
        key,
        settings,
        base,
        items,
        wanted,
        index,
        old_x,
        decode,
        shape,
        cache_dir,
        progress,
        workers or default_workers(),
        notes,
        t0,
    )


def _same_rows(index: dict, wanted: list[list[object]]) -> bool:
    """Whether the cache holds exactly ``wanted``'s files with the same fingerprints, usable ones
    in the same order (failures may sit anywhere: they have no row)."""
    good = [f[:5] for f in index["files"]]
    bad = {tuple(f[:5]) for f in index["bad"]}
    rest = [w for w in wanted if tuple(w) not in bad]
    return len(rest) + len(bad) == len(wanted) and rest == good


Fp = tuple[str, int, int]  # a file's name, size and mtime_ns: unchanged when all three are


def _build(
    dataset: str,
    key: str,
    settings: dict[str, object],
    base: Path,
    items: Sequence[Item],
    wanted: list[list[object]],
    index: dict | None,
    old_x: np.ndarray | None,
    decode: Callable[[Path], np.ndarray],
    shape: tuple[int, ...],
    cache_dir: Path,
    progress: Progress | None,
    workers: int,
    notes: list[str],
    t0: float,
) -> Decoded:
    # What is known without decoding: the previous cache's rows and failures, then what the
    # finished chunks of an interrupted build hold.
    known: dict[Fp, np.ndarray | str] = {}
    if index is not None and old_x is not None:
        known = {(f[0], f[1], f[2]): old_x[int(f[5])] for f in index["files"]}
        known.update({(f[0], f[1], f[2]): str(f[5]) for f in index["bad"]})
    cache_dir.mkdir(parents=True, exist_ok=True)
    partial = cache_dir / f"{dataset}-{key}.partial"
    resumed = {fp: got for fp, got in read_partial(partial, shape).items() if fp not in known}
    known.update(resumed)
    data_name = f"{dataset}-{key}-{uuid.uuid4().hex[:8]}.npy"
    final = cache_dir / data_name
    tmp = tmp_path(final)
    todo: list[Fp] = [(str(r[0]), int(r[1]), int(r[2])) for r in wanted if (r[0], r[1], r[2]) not in known]
    used_resumed = sum(1 for r in wanted if (r[0], r[1], r[2]) in resumed)
    if used_resumed:
        notes.append(f"{used_resumed} file(s) decoded by an interrupted build were reused")
    try:
        out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=(max(1, len(items)), *shape))
        results = decode_all(base, [fp[0] for fp in todo], decode, workers, progress)
        try:
            committed = _committing(results, todo, partial, shape)
            files, bad_rows = _fill(out, wanted, known, committed, [out, old_x])
        finally:
            results.close()  # stops the worker processes, also on Ctrl-C
        w = len(files)
        n_train = sum(1 for f in files if f[4] == "train")
        mean, std = pixel_stats(out, n_train)
        out.flush()
        del out
        _shrink_npy(tmp, w, shape)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, final)
        fsync_dir(cache_dir)
    except BaseException:
        tmp.unlink(missing_ok=True)  # never leave a half-written file behind
        raise
    # Mapped now, before the index names it: another run building the same cache at the same
    # time may delete this file as stale, and a mapping outlives the file's name. (That run's
    # index then wins; a later start that finds its file gone rebuilds, with a message.)
    x = np.load(final, mmap_mode="c", allow_pickle=False)
    nbytes = final.stat().st_size
    new_index = {
        "version": INDEX_VERSION,
        "dataset": dataset,
        "root": str(base.resolve()),
        "settings": settings,
        "shape": list(shape),
        "data": data_name,
        "nbytes": nbytes,
        "sampled_sha256": sampled_sha256(final, nbytes),
        "files": files,  # [name, size, mtime_ns, label, split, row]
        "bad": bad_rows,  # [name, size, mtime_ns, label, split, reason]
        "stats": {"mean": list(mean), "std": list(std)},
    }
    new_index["content"] = content_id(new_index)  # kept: hashing a 200k-file index takes ~0.3 s
    atomic_write_text(cache_dir / f"{dataset}-{key}.json", json.dumps(new_index))
    del old_x, known, resumed
    shutil.rmtree(partial, ignore_errors=True)  # the chunks are in the cache now
    for stale in cache_dir.glob(f"{dataset}-{key}-*.npy"):
        if stale.name != data_name:
            stale.unlink(missing_ok=True)
    bad = {str(r[0]): str(r[5]) for r in bad_rows}
    good = [str(f[0]) for f in files]
    processes = workers if len(todo) >= PARALLEL_MIN_FILES else 1
    took = time.perf_counter() - t0
    decoded = len(todo)
    return Decoded(
        x,
        good,
        bad,
        final,
        len(items) - decoded,
        decoded,
        took,
        mean,
        std,
        notes,
        processes,
        str(new_index["content"]),
    )


def _fill(
    out: np.ndarray,
    wanted: list[list[object]],
    known: dict[Fp, np.ndarray | str],
    results: Iterator[np.ndarray | str],
    maps: list[np.ndarray | None],
) -> tuple[list[list[object]], list[list[object]]]:
    """Write the usable rows into ``out`` in ``wanted``'s order: ``known``'s row (or failure) for
    files it has, else the next of ``results`` (the other files decoded, in the same order).
    Returns the index's ``files`` and ``bad`` rows. Every :data:`LET_GO_BYTES` of rows the pages of
    ``maps`` (the cache being written, the previous one) leave this process (page cache only)."""
    files: list[list[object]] = []
    bad_rows: list[list[object]] = []
    every = max(1, LET_GO_BYTES // max(1, out[0].nbytes))
    for i, row in enumerate(wanted, start=1):
        if i % every == 0:
            let_go(*maps)
        fp = (row[0], row[1], row[2])
        got = known[fp] if fp in known else next(results)  # type: ignore[index]
        if isinstance(got, str):
            bad_rows.append([*row, got])
            continue
        out[len(files)] = got
        files.append([*row, len(files)])
    let_go(*maps)
    return files, bad_rows


#: Bytes of rows a build writes between two releases of its maps' pages (:func:`let_go`).
LET_GO_BYTES = 32 << 20

# ------------------------------------------------------------------------------- resuming
#: Files per chunk that a build commits as it decodes (issue 25): a build stopped midway keeps
#: its finished chunks, and the next build decodes only the files that are in none of them.
PARTIAL_CHUNK = 512


def _committing(
    results: Iterator[np.ndarray | str], todo: list[Fp], folder: Path, shape: tuple[int, ...]
) -> Iterator[np.ndarray | str]:
    """``results`` (the files of ``todo``, decoded in order) passed on unchanged, every
    :data:`PARTIAL_CHUNK` of them also committed to ``folder`` (:func:`commit_chunk`)."""
    rows: list[np.ndarray] = []
    meta: list[list[object]] = []
    for fp, got in zip(todo, results, strict=False):
        if isinstance(got, str):
            meta.append([*fp, got])
        else:
            meta.append([*fp, len(rows)])
            rows.append(got)
        yield got
        if len(meta) >= PARTIAL_CHUNK:
            try:
                commit_chunk(folder, rows, meta, shape)
            except OSError as e:  # a full disk, a folder removed by a build finishing at once
                log.warning("image cache: could not keep decoded files for a resumed build (%s)", e)
            rows, meta = [], []


def commit_chunk(
    folder: Path, rows: list[np.ndarray], meta: list[list[object]], shape: tuple[int, ...]
) -> None:
    """One chunk of decoded files: ``chunk-<id>.npy`` (their rows), then ``chunk-<id>.json``
    (every file's name, size, mtime and row in the chunk or why it failed; the ``.npy``'s size
    and sha256), each written under a temporary name and renamed. Only a chunk whose ``.json``
    exists, and whose ``.npy`` matches it, is ever read back (:func:`read_partial`)."""
    folder.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    np.save(buf, np.stack(rows) if rows else np.zeros((0, *shape), np.uint8), allow_pickle=False)
    blob = buf.getvalue()
    name = f"chunk-{uuid.uuid4().hex[:12]}"
    tmp = tmp_path(folder / f"{name}.npy")
    tmp.write_bytes(blob)
    os.replace(tmp, folder / f"{name}.npy")
    record = {
        "data": f"{name}.npy",
        "nbytes": len(blob),
        "sha256": hashlib.sha256(blob).hexdigest(),
        "files": meta,
    }
    atomic_write_text(folder / f"{name}.json", json.dumps(record))


def read_partial(folder: Path, shape: tuple[int, ...]) -> dict[Fp, np.ndarray | str]:
    """What the committed chunks of an interrupted build hold: each file's row (a view of its
    chunk, mapped) or why it failed. A chunk whose ``.npy`` does not match its record (size,
    sha256: the chunk is read whole, which costs little next to decoding it) is left out, with a
    warning; a ``.npy`` without a record (stopped in between) is never looked at."""
    found: dict[Fp, np.ndarray | str] = {}
    for record_path in sorted(folder.glob("chunk-*.json")) if folder.is_dir() else []:
        try:
            record = json.loads(record_path.read_text())
            npy = folder / str(record["data"])
            blob = npy.read_bytes()
            if len(blob) != record["nbytes"] or hashlib.sha256(blob).hexdigest() != record["sha256"]:
                raise ValueError(f"{npy.name} does not match its record")
            rows = np.load(npy, mmap_mode="c", allow_pickle=False)
            if rows.dtype != np.uint8 or tuple(rows.shape[1:]) != shape:
                raise ValueError(f"{npy.name} holds {rows.dtype} {rows.shape}")
            for name, size, mtime, got in record["files"]:
                found[(str(name), int(size), int(mtime))] = rows[got] if isinstance(got, int) else str(got)
        except (OSError, ValueError, KeyError, TypeError, IndexError) as e:
            log.warning("image cache: a chunk of an interrupted build is not used (%s)", e)
    return found


#: Fewer files than this are decoded in this process: starting worker processes (each imports
#: numpy and Pillow) would cost more than it saves.
PARALLEL_MIN_FILES = 200


def default_workers() -> int:
    """One decoding process per core this process may run on."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def _decode_or_reason(decode: Callable[[Path], np.ndarray], path: Path) -> np.ndarray | str:
    try:
        return decode(path)
    except Exception as e:  # any decode failure makes this one file "bad"
        return f"{type(e).__name__}: {e}".strip()


def decode_all(
    base: Path,
    names: Sequence[str],
    decode: Callable[[Path], np.ndarray],
    workers: int,
    progress: Progress | None,
) -> Iterator[np.ndarray | str]:
    """``decode(base / name)`` of every name, in order: the array, or why it failed.

    With ``workers`` > 1 (and at least :data:`PARALLEL_MIN_FILES` files) in a pool of that many
    spawned processes (spawn, not fork: this process may hold torch's threads), in chunks of up
    to 64 files so that results come back steadily and in order; ``decode`` must then be
    picklable. Ctrl-C cancels what is not started yet.
    """
    total = len(names)
    every = max(1, total // 200)
    if progress is not None and total:
        progress(0, total)
    paths = [base / n for n in names]
    pool = None
    if workers > 1 and total >= PARALLEL_MIN_FILES:  # (keep in step with Decoded.processes)
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"))
        chunk = max(1, min(64, total // (workers * 8)))
        results: Iterator[np.ndarray | str] = pool.map(
            partial(_decode_or_reason, decode), paths, chunksize=chunk
        )
    else:
        results = (_decode_or_reason(decode, p) for p in paths)
    try:
        for i, got in enumerate(results, start=1):
            if progress is not None and (i % every == 0 or i == total):
                progress(i, total)
            yield got
    finally:
        if pool is not None:
            pool.shutdown(wait=False, cancel_futures=True)


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
