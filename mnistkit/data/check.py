"""The data check (issue 22): class balance, duplicates, train/test leaks, unusable files.

``mnistkit data check RECIPE`` and every run's header use it; both work on the dataset exactly as
its loader returns it (:class:`~mnistkit.data.types.LoadedData`, before ``limit``/``val_split``):

* per split, the class counts and the imbalance ratio (largest class / smallest);
* exact duplicates within each split and between train and test, by the bytes of the decoded
  samples (images: the uint8 pixels training sees; audio: the decoded samples at
  ``data.features.sample_rate``), so renamed or re-encoded copies count. Images are compared
  as rows of bytes (``numpy.unique`` on a void view, one sort: ~0.1 s for Fashion-MNIST's
  70,000 images), audio clips by a SHA-1 of their samples;
* near-duplicates of images: samples with the same 64-bit difference hash (dHash: 9x8 block
  means, one bit per horizontal neighbour pair) whose pixels differ. A candidate, not a verdict:
  two plain images can share a dHash;
* folder datasets: files that cannot be read (the loader's own list) and images whose size or
  mode (L, RGB, P, ...) differs from the folder's most common one.

The result is a plain dict (written as ``data_check.json``) cached under the user cache
(``checks/``), keyed by a hash of the decoded data, so a run's header reuses it instead of
recomputing (see :func:`cached_check`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from mnistkit.data.mapped import Rows, chunks
from mnistkit.fsutil import atomic_path

log = logging.getLogger("mnistkit.data.check")

#: Bump when the report's content or meaning changes: it is part of the cache key.
CHECK_VERSION = 1
#: How many file names or indices a report lists per finding.
EXAMPLES = 5


# ------------------------------------------------------------------------------- hashing
def row_keys(x: np.ndarray | Rows) -> np.ndarray:
    """One opaque, comparable value per sample: its bytes as a numpy void scalar, or the SHA-1
    of its bytes when that is shorter (rows wider than 20 bytes). Digests keep the keys small:
    the rows themselves would be copied (concatenated, sorted) whole, several times the size of
    dataset kept in a cache's file (issue 25). Read a few MB at a time (rows of a file: read from
    it slice by slice)."""
    width = int(np.prod(x.shape[1:])) * x.dtype.itemsize
    if not width:
        return np.zeros(len(x), "V1")
    if width <= 20:
        whole = x.read_all() if isinstance(x, Rows) else x
        flat = whole.reshape(len(whole), -1)
        return np.ascontiguousarray(flat).view(np.dtype((np.void, width))).ravel()
    parts = [digest_keys(list(part.reshape(len(part), -1))) for _, part in chunks(x)]
    return np.concatenate(parts) if parts else np.zeros(0, np.dtype((np.void, 20)))


def digest_keys(arrays: list[np.ndarray]) -> np.ndarray:
    """SHA-1 of each array's bytes (variable-length samples such as audio clips), as void keys."""
    digests = b"".join(hashlib.sha1(np.ascontiguousarray(a).tobytes()).digest() for a in arrays)
    return np.frombuffer(digests, dtype=np.dtype((np.void, 20))).copy()


def group_ids(keys: np.ndarray) -> np.ndarray:
    """Every sample's exact-duplicate group: samples with equal keys share an id (one sort of
    the keys, ``numpy.unique``; everything after works on these ints)."""
    if len(keys) == 0:
        return np.zeros(0, dtype=np.int64)
    return np.unique(keys, return_inverse=True)[1].ravel().astype(np.int64)


def within(ids: np.ndarray, y: np.ndarray, names: list[str] | None) -> dict[str, Any]:
    """Exact duplicates inside one split (``ids``: its samples' :func:`group_ids`).

    ``copies``: samples that repeat an earlier one (n - distinct); ``groups``: distinct samples
    that occur more than once; ``conflicting``: of those groups, how many carry different labels.
    """
    if len(ids) == 0:
        return {"copies": 0, "groups": 0, "conflicting": 0, "examples": []}
    distinct, inverse, counts = np.unique(ids, return_inverse=True, return_counts=True)
    dup_groups = np.flatnonzero(counts > 1)
    conflicting = 0
    if dup_groups.size:
        in_dup = np.isin(inverse, dup_groups)
        pairs = np.unique(np.stack([inverse[in_dup], y[in_dup]]), axis=1)  # distinct (group, label)
        conflicting = int(np.count_nonzero(np.bincount(pairs[0]) > 1))
    examples = []
    for g in dup_groups[:EXAMPLES]:
        members = np.flatnonzero(inverse == g)[:3]
        examples.append([_name(int(i), names) for i in members])
    return {
        "copies": int(len(ids) - len(distinct)),
        "groups": int(dup_groups.size),
        "conflicting": conflicting,
        "examples": examples,
    }


def across(
    train_ids: np.ndarray,
    test_ids: np.ndarray,
    train_names: list[str] | None,
    test_names: list[str] | None,
) -> dict[str, Any]:
    """Test samples identical to some training sample (a leak): count and examples (ids: the
    :func:`group_ids` of both splits' keys together)."""
    leaked = np.flatnonzero(np.isin(test_ids, train_ids))
    examples = []
    if leaked.size:
        first_train: dict[int, int] = {}
        for i, g in enumerate(train_ids.tolist()):
            first_train.setdefault(g, i)
        for j in leaked[:EXAMPLES]:
            examples.append(
                {
                    "test": _name(int(j), test_names),
                    "train": _name(first_train[int(test_ids[j])], train_names),
                }
            )
    return {"test_samples": int(leaked.size), "examples": examples}


def _name(i: int, names: list[str] | None) -> str:
    return names[i] if names is not None else f"#{i}"


def dhash(x: np.ndarray | Rows) -> np.ndarray:
    """64-bit difference hash of every image of ``x`` (uint8 ``[N, C, H, W]``), as uint64.

    Grey (channel mean) → 8 rows x 9 columns of block means (``np.add.reduceat`` over bands of
    rows and columns, so no per-image Python) → bit = left block brighter than its right
    neighbour. Needs images of at least 8x9 pixels.
    """
    n, c, h, w = x.shape
    rows = np.linspace(0, h, 9).astype(int)[:-1]
    cols = np.linspace(0, w, 10).astype(int)[:-1]
    sizes = np.diff(np.append(rows, h))[:, None] * np.diff(np.append(cols, w))[None, :]
    out = np.empty(n, dtype=np.uint64)
    for a, part in chunks(x):  # a few MB of pixels at a time: bounded memory
        grey = part[:, 0] if c == 1 else part.sum(axis=1, dtype=np.uint32)  # sum: same bits as mean
        sums = np.add.reduceat(
            np.add.reduceat(grey, rows, axis=1, dtype=np.uint32), cols, axis=2, dtype=np.uint32
        )
        blocks = sums / sizes
        bits = (blocks[:, :, :-1] > blocks[:, :, 1:]).reshape(len(part), 64)
        out[a : a + len(part)] = np.packbits(bits, axis=1).view(">u8").ravel()
    return out


def near_duplicates(
    train_x: np.ndarray | Rows, test_x: np.ndarray | Rows, inverse: np.ndarray
) -> dict[str, Any]:
    """Near-duplicate candidates: same dHash, different pixels (within train; test vs train).

    ``inverse``: the exact-duplicate group of every train then test sample (:func:`group_ids`
    of both splits' keys)."""
    if len(train_x.shape) != 4 or train_x.shape[2] < 8 or train_x.shape[3] < 9:
        return {"method": None, "why": "images smaller than 8x9 pixels: no dHash"}
    n = len(train_x)
    ht, he = dhash(train_x), dhash(test_x)
    # within train: samples sharing their dHash with a training sample of other pixels
    pair = np.unique(np.stack([ht, inverse[:n].astype(np.uint64)]), axis=1)
    hashes, per_hash = np.unique(pair[0], return_counts=True)
    train_near = int(np.count_nonzero(np.isin(ht, hashes[per_hash > 1])))
    # test vs train: a test image with a training image's dHash that is no exact copy of one
    exact = np.isin(inverse[n:], inverse[:n])
    test_near = int(np.count_nonzero(np.isin(he, ht) & ~exact))
    return {
        "method": "64-bit difference hash (dHash), pixels differ",
        "train_samples": train_near,
        "test_samples": test_near,
    }


# ------------------------------------------------------------------------------- files
def image_files(files: list[Path]) -> dict[str, Any]:
    """Size and mode of every image file (headers only: Pillow decodes nothing here), and the
    files that differ from the most common size and mode."""
    from PIL import Image

    seen: list[tuple[Path, tuple[int, int], str]] = []
    for f in files:
        try:
            with Image.open(f) as img:
                seen.append((f, img.size, img.mode))
        except Exception:  # noqa: S112 - unreadable files are the loader's list
            continue
    if not seen:
        return {"usual": None, "unusual": 0, "examples": []}
    (size, mode), _ = Counter((s, m) for _, s, m in seen).most_common(1)[0]
    odd = [(f, s, m) for f, s, m in seen if (s, m) != (size, mode)]
    return {
        "usual": {"size": list(size), "mode": mode},
        "unusual": len(odd),
        "examples": [{"file": str(f), "size": list(s), "mode": m} for f, s, m in odd[:EXAMPLES]],
    }


# ------------------------------------------------------------------------------- report
def class_counts(y: np.ndarray, num_classes: int) -> dict[str, Any]:
    counts = np.bincount(y, minlength=num_classes)[:num_classes] if len(y) else np.zeros(num_classes, int)
    present = counts[counts > 0]
    ratio = float(counts.max() / counts.min()) if counts.min() > 0 else None
    return {
        "n": int(len(y)),
        "counts": [int(c) for c in counts],
        "imbalance": ratio,  # largest class / smallest; None when a class has no sample
        "empty_classes": int(num_classes - present.size),
    }


def check_arrays(
    train_x: np.ndarray,
    train_y: np.ndarray,
    test_x: np.ndarray,
    test_y: np.ndarray,
    classes: list[str],
    *,
    train_keys: np.ndarray | None = None,
    test_keys: np.ndarray | None = None,
    train_names: list[str] | None = None,
    test_names: list[str] | None = None,
    hashed: str = "decoded samples",
) -> dict[str, Any]:
    """The array part of the check: counts, exact duplicates, leaks, near-duplicates (uint8 only).

    ``*_keys`` (default: the rows' bytes, :func:`row_keys`) are what makes two samples equal.
    ``*_x``: arrays, or :class:`Rows` of a cache's file (read a few MB at a time).
    """
    t0 = time.perf_counter()
    k_tr = row_keys(train_x) if train_keys is None else train_keys
    k_te = row_keys(test_x) if test_keys is None else test_keys
    ids = group_ids(np.concatenate([k_tr, k_te]))
    ids_tr, ids_te = ids[: len(k_tr)], ids[len(k_tr) :]
    report: dict[str, Any] = {
        "version": CHECK_VERSION,
        "classes": list(classes),
        "hashed": hashed,
        "splits": {
            "train": class_counts(train_y, len(classes)),
            "test": class_counts(test_y, len(classes)),
        },
        "duplicates": {
            "train": within(ids_tr, train_y, train_names),
            "test": within(ids_te, test_y, test_names),
            "train_test": across(ids_tr, ids_te, train_names, test_names),
        },
    }
    if train_x.dtype == np.uint8 and train_keys is None and len(train_x) and len(test_x):
        report["near_duplicates"] = near_duplicates(train_x, test_x, ids)
    report["seconds"] = round(time.perf_counter() - t0, 3)
    return report


def identity(loaded: Any, extra: str = "") -> str:
    """A hash of the decoded data (both splits' samples and labels, the classes) and ``extra``:
    what the cached check belongs to. BLAKE2b runs at ~1 GB/s: ~0.05 s for Fashion-MNIST.

    Where the loader knows what its samples are without reading them (``loaded.content_id``:
    an image folder's decoded cache, whose index names every file's size and mtime and the
    rows' checksum), that stands for the samples, and only the labels are hashed: a cached run
    of 200,000 images would otherwise read gigabytes at every start (issue 25)."""
    h = hashlib.blake2b(digest_size=16)
    h.update(f"v{CHECK_VERSION}|{extra}|{json.dumps(list(map(str, loaded.classes)))}".encode())
    content = loaded.content_id
    if content:
        h.update(f"|content {content}".encode())
    for split in (loaded.train, loaded.test):
        for t in (split.x, split.y):
            arr = _samples(t)
            h.update(f"{arr.dtype}{tuple(arr.shape)}".encode())
            if not (content and t is split.x):
                for _, part in chunks(arr):
                    h.update(memoryview(np.ascontiguousarray(part).reshape(-1)).cast("B"))
    return h.hexdigest()


def read_cached(folder: Path, key: str) -> dict[str, Any] | None:
    path = folder / f"{key}.json"
    try:
        report = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return report if isinstance(report, dict) and report.get("identity") == key else None


def write_cached(folder: Path, report: dict[str, Any]) -> None:
    """Keep ``report`` for the next run; a cache that cannot be written only costs time."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        write_json(folder / f"{report['identity']}.json", report)
    except OSError as e:
        log.warning("could not write the data check cache in %s: %s", folder, e)


def write_json(path: Path, report: dict[str, Any]) -> None:
    with atomic_path(path) as tmp:
        Path(tmp).write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")


# ------------------------------------------------------------------------------- a loaded dataset
def _samples(x: Any) -> np.ndarray | Rows:
    """A split's samples as numpy sees them: a tensor's array, or the file's :class:`Rows`."""
    return x if isinstance(x, Rows) else x.numpy()


def _per_sample_files(loaded: Any) -> tuple[list[Path], list[Path]] | None:
    """(train files, test files) where every sample has a file of its own (folder datasets)."""
    n_train, n_test = len(loaded.train.y), len(loaded.test.y)
    if len(loaded.files) != n_train + n_test or loaded.test_files is None:
        return None
    return list(loaded.files[:n_train]), list(loaded.files[n_train:])


def check_loaded(loaded: Any, kind: str, sample_rate: int | None, *, files: bool) -> dict[str, Any]:
    """:func:`check_arrays` of a loaded dataset; audio is compared by its decoded samples (read
    again from the files: what the loader keeps are features). ``files``: also look at the image
    files' sizes and modes (``mnistkit data check``; the run header skips it)."""
    per_file = _per_sample_files(loaded)
    names = None if per_file is None else [[str(f) for f in fs] for fs in per_file]
    keys: list[np.ndarray | None] = [None, None]
    hashed = "decoded pixels (uint8, as training sees them)"
    if kind == "audio" and per_file is not None and sample_rate is not None:
        from mnistkit.data.audio import read_audio

        keys = [digest_keys([read_audio(f, sample_rate) for f in fs]) for fs in per_file]
        hashed = f"decoded audio samples (float32 at {sample_rate} Hz)"
    elif kind == "audio":
        hashed = "features (no file per sample)"
    report = check_arrays(
        _samples(loaded.train.x),
        loaded.train.y.numpy(),
        _samples(loaded.test.x),
        loaded.test.y.numpy(),
        [str(c) for c in loaded.classes],
        train_keys=keys[0],
        test_keys=keys[1],
        train_names=names[0] if names else None,
        test_names=names[1] if names else None,
        hashed=hashed,
    )
    report["unreadable"] = [{"file": f, "reason": r} for f, r in sorted(loaded.bad_files.items())]
    if files and kind == "image" and per_file is not None:
        report["image_files"] = image_files([*per_file[0], *per_file[1]])
    return report


def cached_check(
    loaded: Any, kind: str, sample_rate: int | None, folder: Path, *, files: bool = False
) -> tuple[dict[str, Any], bool]:
    """The check of ``loaded``, from ``folder`` (the user cache's ``checks/``) when this very
    data was checked before, else computed and kept there: (report, whether it was cached).

    A cached report without the file part counts as a miss when ``files`` asks for it."""
    t0 = time.perf_counter()
    key = identity(loaded, f"{kind}|{sample_rate}|{sorted(loaded.bad_files.items())}")
    found = read_cached(folder, key)
    wants_files = files and kind == "image" and _per_sample_files(loaded) is not None
    if found is not None and (not wants_files or "image_files" in found):
        found["lookup_seconds"] = round(time.perf_counter() - t0, 3)
        return found, True
    report = {"identity": key, **check_loaded(loaded, kind, sample_rate, files=files)}
    report["seconds"] = round(time.perf_counter() - t0, 3)
    write_cached(folder, report)
    return report, False


# ------------------------------------------------------------------------------- text
def _ratio(split: dict[str, Any]) -> str:
    r = split["imbalance"]
    return f"{r:.2f}" if r is not None else f"inf ({split['empty_classes']} empty classes)"


def _split_line(split: dict[str, Any]) -> str:
    counts = split["counts"]
    return (
        f"{split['n']:,} samples, {min(counts):,} to {max(counts):,} per class, "
        f"imbalance {_ratio(split)} (largest / smallest class)"
    )


def _examples(found: list[Any]) -> str:
    def short(v: Any) -> str:
        return Path(v).name if isinstance(v, str) and not v.startswith("#") else str(v)

    bits = [
        f"{short(e['test'])} = train {short(e['train'])}"
        if isinstance(e, dict)
        else " = ".join(map(short, e))
        for e in found
    ]
    return "; ".join(bits)


def leak_warning(report: dict[str, Any]) -> str | None:
    """The train/test leak in words (count and a few samples), or None without one."""
    leak = report["duplicates"]["train_test"]
    if not leak["test_samples"]:
        return None
    n = leak["test_samples"]
    return (
        f"{n:,} test sample{'s are' if n != 1 else ' is an'} exact cop{'ies' if n != 1 else 'y'} "
        f"of training samples (a train/test leak: test accuracy overstates), e.g. "
        f"{_examples(leak['examples'][:3])}; `mnistkit data check` lists more"
    )


def short_form(report: dict[str, Any], cached: bool) -> str:
    """One header line: sizes, imbalance, duplicates, where the figures came from."""
    s, d = report["splits"], report["duplicates"]
    took = report.get("lookup_seconds" if cached else "seconds", 0.0)
    return (
        f"imbalance {_ratio(s['train'])} train / {_ratio(s['test'])} test; exact duplicates: "
        f"{d['train']['copies']:,} in train, {d['test']['copies']:,} in test, "
        f"{d['train_test']['test_samples']:,} test in train "
        f"({'cached' if cached else 'checked'}, {took:.2f} s)"
    )


def summary_lines(report: dict[str, Any]) -> list[tuple[str, str]]:
    """``mnistkit data check``'s output as (label, text) lines."""
    s, d = report["splits"], report["duplicates"]
    out = [
        ("dataset", f"{report.get('dataset', '?')}: {report.get('source', '')}"),
        ("classes", f"{len(report['classes'])}: {', '.join(report['classes'])}"),
        ("train", _split_line(s["train"])),
        ("test", _split_line(s["test"])),
        ("compared", str(report["hashed"])),
    ]
    for split in ("train", "test"):
        w = d[split]
        text = f"{w['copies']:,} copies of other samples"
        if w["copies"]:
            text += (
                f" ({w['groups']:,} samples occur more than once, {w['conflicting']:,} of them "
                f"with different labels), e.g. {_examples(w['examples'][:3])}"
            )
        out.append((f"dups {split}", text))
    leak = leak_warning(report)
    out.append(("train/test", leak or "no test sample is a copy of a training sample"))
    near = report.get("near_duplicates")
    if near is not None:
        out.append(
            (
                "near dups",
                f"{near['train_samples']:,} train, {near['test_samples']:,} test samples share "
                f"a {near['method']} (candidates, not verdicts)"
                if near["method"]
                else str(near["why"]),
            )
        )
    bad = report.get("unreadable", [])
    out.append(
        (
            "unreadable",
            f"{len(bad)} file(s)"
            + (
                ": " + "; ".join(f"{Path(b['file']).name}: {b['reason']}" for b in bad[:EXAMPLES])
                if bad
                else ""
            ),
        )
    )
    files = report.get("image_files")
    if files and files["usual"]:
        usual = f"{files['usual']['size'][0]}x{files['usual']['size'][1]} {files['usual']['mode']}"
        text = f"usual: {usual}; {files['unusual']} file(s) differ"
        if files["examples"]:
            text += ": " + "; ".join(
                f"{Path(e['file']).name} {e['size'][0]}x{e['size'][1]} {e['mode']}" for e in files["examples"]
            )
        out.append(("images", text))
    return out
