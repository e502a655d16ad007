"""Audio datasets as log-mel feature tensors, computed once and cached on disk.

Feature pipeline (the reference tutorial's, per clip)::

    S = librosa.feature.melspectrogram(y=y, sr=sr, n_fft=n_fft, hop_length=hop, n_mels=n_mels)
    S = librosa.power_to_db(S, ref=np.max)
    S = (S - S.mean()) / (S.std() + 1e-6)          # standardized per clip
    S = S[:, :frames] or right-padded with 0.0      # fixed width for batching

Two datasets:

* :func:`load_fsdd` -- the Free Spoken Digit Dataset (``{digit}_{speaker}_{index}.wav``) with its
  official split (takes 0-4 test, the rest train).
* :func:`load_audio_folder` -- ``root/<class>/*.wav|flac|ogg``, split per class by a seeded
  shuffle, or by ``root/train`` + ``root/test`` when both exist.

FSDD's features (3,000 short clips, 3 MB at the suggested settings: the in-memory fast path) are
stored in one ``.npz`` per (dataset, files, feature settings) under ``cache_dir``; see
:func:`_cache_key` for what invalidates it. An audio folder's go into the decoded cache the image
folders use (:mod:`mnistkit.data.imagecache`: float32 rows in one data file, decoded in
parallel, only new or changed files decoded again, kept in memory or read from the file by
``data.cache``). librosa, soundfile and torch are imported lazily so ``import
mnistkit.data.audio`` (e.g. to validate a recipe) stays cheap.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import re
import time
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mnistkit.data.cached import load_cached
from mnistkit.data.features import LogMelSpec, log_mel, read_audio
from mnistkit.data.types import LoadedData, Split
from mnistkit.errors import DataError, set_hint
from mnistkit.fsutil import atomic_path

log = logging.getLogger("mnistkit.data.audio")

# Bump whenever log_mel() or the file decoding changes its output: it is part of the cache key,
# so old caches are then ignored instead of silently feeding stale features.
FEATURE_VERSION = 1

AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg")

FSDD_TEST_TAKES = 5  # FSDD's official split: takes 0-4 of every speaker and digit are the test set
_FSDD_NAME = re.compile(r"^(?P<digit>[0-9])_(?P<speaker>[^_]+)_(?P<take>[0-9]+)\.wav$", re.I)

Progress = Callable[[int, int], None]


def _features_of(path: Path, spec: LogMelSpec) -> np.ndarray:
    return log_mel(read_audio(path, spec.sample_rate), spec)


# --- extraction + cache -----------------------------------------------------------------------


@dataclass
class _Features:
    """Features of one file list: ``x[i]`` belongs to ``good[i]``; ``bad`` maps name -> reason."""

    good: list[str]
    x: np.ndarray  # float32 [len(good), n_mels, frames] (image folders: uint8 [len(good), C, H, W])
    bad: dict[str, str]
    from_cache: Path | None
    seconds: float


def _file_fingerprint(base: Path, rel_names: Sequence[str]) -> list[tuple[str, int, int]]:
    out = []
    for name in rel_names:
        try:
            st = (base / name).stat()
            out.append((name, st.st_size, st.st_mtime_ns))
        except OSError:
            out.append((name, -1, -1))  # unreadable now; extraction will record why
    return out


def cache_settings(spec: LogMelSpec) -> dict[str, object]:
    """What audio features depend on besides the files: part of their cache key."""
    return {"feature_version": FEATURE_VERSION, "spec": spec.key()}


def _cache_key(dataset: str, settings: dict[str, object], base: Path, rel_names: Sequence[str]) -> str:
    """sha256 of everything the cached features depend on.

    ``settings`` (audio: the feature settings and FEATURE_VERSION) and every file's (relative
    path, size, mtime_ns): any change gives a new key, hence a recompute. ``skip_bad`` is
    deliberately NOT part of it: it does not change any feature; the cache stores which files
    were bad (and why) and the skip/raise policy is applied on every load, so flipping it needs
    no recompute.
    """
    material = json.dumps(
        {"dataset": dataset, **settings, "files": _file_fingerprint(base, rel_names)},
        sort_keys=True,
    )
    return hashlib.sha256(material.encode()).hexdigest()


def _read_cache(
    path: Path, key: str, rel_names: Sequence[str], shape: tuple[int, ...], dtype: type[np.generic]
) -> _Features:
    t0 = time.perf_counter()
    # allow_pickle=False: a cache file is data only; loading it never runs code.
    with np.load(path, allow_pickle=False) as z:
        if str(z["key"]) != key:
            raise ValueError("key mismatch")
        good = [str(n) for n in z["good"]]
        bad = {str(n): str(r) for n, r in zip(z["bad"], z["bad_reasons"], strict=True)}
        x = np.ascontiguousarray(z["x"], dtype=dtype)
    if sorted([*good, *bad]) != sorted(rel_names):
        raise ValueError("file list mismatch")
    if x.shape != (len(good), *shape):
        raise ValueError(f"feature shape {x.shape} does not match the settings")
    return _Features(good, x, bad, path, time.perf_counter() - t0)


def _write_cache(path: Path, key: str, feats: _Features) -> None:
    """Atomic (mnistkit.fsutil): a killed extraction never leaves a half-written cache."""
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.savez(
            f,
            key=np.array(key),
            good=np.array(feats.good, dtype=str),
            bad=np.array(list(feats.bad), dtype=str),
            bad_reasons=np.array(list(feats.bad.values()), dtype=str),
            x=feats.x,
        )


def _extract(
    base: Path,
    rel_names: Sequence[str],
    decode: Callable[[Path], np.ndarray],
    shape: tuple[int, ...],
    dtype: type[np.generic],
    progress: Progress | None,
) -> _Features:
    """``decode`` of every file, serially (audio: log-mel features).

    ~1-2 ms per FSDD clip: all 3000 take 3.5-6.5 s on 2 cores. A 2-worker spawn pool measured
    no faster (5.2-5.4 s: worker start-up and librosa imports eat the gain), and forking a
    process that already holds torch threads is fragile, so there is no pool.
    """
    t0 = time.perf_counter()
    total = len(rel_names)
    every = max(1, total // 100)
    good: list[str] = []
    xs: list[np.ndarray] = []
    bad: dict[str, str] = {}
    if progress is not None:
        progress(0, total)
    for i, name in enumerate(rel_names, start=1):
        try:
            xs.append(decode(base / name))
            good.append(name)
        except Exception as e:  # any decode failure makes this one file "bad"
            bad[name] = f"{type(e).__name__}: {e}".strip()
        if progress is not None and (i % every == 0 or i == total):
            progress(i, total)
    x = np.stack(xs) if xs else np.zeros((0, *shape), dtype)
    return _Features(good, x, bad, None, time.perf_counter() - t0)


def _features(
    dataset: str,
    base: Path,
    rel_names: Sequence[str],
    spec: LogMelSpec,
    cache_dir: Path | None,
    progress: Progress | None,
) -> _Features:
    """Log-mel features of ``rel_names`` (relative to ``base``), cached."""
    return decode_cached(
        dataset,
        base,
        rel_names,
        cache_settings(spec),
        lambda path: _features_of(path, spec),
        (spec.n_mels, spec.frames),
        np.float32,
        cache_dir,
        progress,
    )


def decode_cached(
    dataset: str,
    base: Path,
    rel_names: Sequence[str],
    settings: dict[str, object],
    decode: Callable[[Path], np.ndarray],
    shape: tuple[int, ...],
    dtype: type[np.generic],
    cache_dir: Path | None,
    progress: Progress | None,
) -> _Features:
    """``decode(file)`` (an array of ``shape``/``dtype``) of every file of ``rel_names``
    (relative to ``base``): from the cache if valid, else decoded and cached. ``settings`` is
    everything besides the files that the arrays depend on (part of the cache key)."""
    cache_path, key = None, ""
    if cache_dir is not None:
        key = _cache_key(dataset, settings, base, rel_names)
        cache_path = Path(cache_dir) / f"{dataset}-{key}.npz"
        if cache_path.is_file():
            try:
                return _read_cache(cache_path, key, rel_names, shape, dtype)
            except (OSError, ValueError, KeyError, zipfile.BadZipFile) as e:
                log.warning("ignoring unusable feature cache %s (%s); recomputing", cache_path, e)
    feats = _extract(base, rel_names, decode, shape, dtype, progress)
    if cache_path is not None:
        try:
            _write_cache(cache_path, key, feats)
        except OSError as e:
            # The cache is only an optimization: a read-only or full disk must not stop training.
            log.warning("could not write feature cache %s: %s", cache_path, e)
    return feats


def _listing_error(root: Path, e: OSError) -> DataError:
    return DataError(f"Cannot list the audio files under {root}: {e}. Check the path and its permissions.")


def _apply_bad_policy(bad: dict[str, str], base: Path, skip_bad: bool) -> None:
    if not bad:
        return
    listing = "\n".join(f"  {name}: {reason}" for name, reason in sorted(bad.items()))
    if not skip_bad:
        raise DataError(
            f"{len(bad)} audio file(s) under {base} could not be decoded:\n{listing}\n"
            f"Fix or remove these files, or {set_hint('data.skip_bad_files', 'true')} to "
            "train without them."
        )
    log.warning("skipped %d unreadable audio file(s) under %s:\n%s", len(bad), base, listing)


def _to_loaded(
    feats: _Features,
    base: Path,
    train: Sequence[tuple[str, int]],
    test: Sequence[tuple[str, int]],
    classes: list[str],
    source: str,
) -> LoadedData:
    """Assemble tensors; ``train``/``test`` are (relative name, label) of the usable files."""
    import torch

    row = {name: i for i, name in enumerate(feats.good)}

    def split(items: Sequence[tuple[str, int]]) -> Split:
        idx = np.array([row[name] for name, _ in items], dtype=np.int64)
        x = feats.x[idx] if idx.size else np.zeros((0, *feats.x.shape[1:]), np.float32)
        return Split(
            x=torch.from_numpy(np.ascontiguousarray(x)).unsqueeze(1),  # [N, 1, n_mels, frames]
            y=torch.tensor([label for _, label in items], dtype=torch.int64),
        )

    return LoadedData(
        train=split(train),
        test=split(test),
        classes=classes,
        # Features are standardized per clip (see log_mel), so no dataset-level normalization.
        mean=(0.0,),
        std=(1.0,),
        # Aligned with the samples: files[i] is train sample i, files[len(train) + j] test j.
        files=[base / name for name, _ in [*train, *test]],
        source=source,
        test_files=[base / name for name, _ in test],
        bad_files={str(base / name): reason for name, reason in feats.bad.items()},
    )


def _origin(feats: _Features) -> str:
    if feats.from_cache is not None:
        return f"features loaded from cache {feats.from_cache} in {feats.seconds:.2f} s"
    return f"features computed in {feats.seconds:.1f} s"


# --- FSDD -------------------------------------------------------------------------------------


def _fsdd_dir(root: Path) -> Path:
    root = Path(root).expanduser()
    for cand in (root, root / "recordings"):
        if cand.is_dir() and any(_FSDD_NAME.match(p.name) for p in cand.iterdir()):
            return cand
    raise DataError(
        f"No FSDD recordings found: looked for files named {{digit}}_{{speaker}}_{{take}}.wav "
        f"in {root} and {root / 'recordings'}. Point the recipe's data root at the "
        "`recordings` folder of the Free Spoken Digit Dataset "
        "(github.com/Jakobovski/free-spoken-digit-dataset)."
    )


def load_fsdd(
    root: Path,
    spec: LogMelSpec,
    cache_dir: Path | None,
    skip_bad: bool,
    progress: Progress | None = None,
) -> LoadedData:
    """The Free Spoken Digit Dataset as log-mel features with its official split.

    ``root`` holds ``{digit}_{speaker}_{take}.wav`` files (or has them in ``root/recordings``).
    Takes 0-4 of every speaker and digit are the test set, all others (5-49) train; classes are
    "0".."9". Other files are ignored and counted in ``source``. Unreadable files raise
    :class:`DataError` listing all of them, or are skipped (and logged) when ``skip_bad``.
    ``progress(done, total)`` is called during feature extraction only (not on a cache hit).
    """
    try:
        base = _fsdd_dir(root)
        names: list[str] = []
        ignored = 0
        for p in sorted(base.iterdir()):
            if p.is_file() and _FSDD_NAME.match(p.name):
                names.append(p.name)
            elif not p.name.startswith("."):
                ignored += 1
    except OSError as e:
        raise _listing_error(root, e) from e
    feats = _features("fsdd", base, names, spec, cache_dir, progress)
    _apply_bad_policy(feats.bad, base, skip_bad)

    train: list[tuple[str, int]] = []
    test: list[tuple[str, int]] = []
    for name in feats.good:
        m = _FSDD_NAME.match(name)
        assert m is not None  # names were filtered by the same pattern
        (test if int(m["take"]) < FSDD_TEST_TAKES else train).append((name, int(m["digit"])))
    source = (
        f"FSDD {base}: {len(train)} train / {len(test)} test clips (takes 0-4 = test), "
        f"{spec.describe()}; {_origin(feats)}"
    )
    if feats.bad:
        source += f"; {len(feats.bad)} unreadable file(s) skipped"
    if ignored:
        source += f"; {ignored} file(s) not named digit_speaker_take.wav ignored"
    return _to_loaded(feats, base, train, test, [str(d) for d in range(10)], source)


# --- audio folder -----------------------------------------------------------------------------


def _class_dirs(parent: Path) -> list[Path]:
    # Hidden and "_"-prefixed folders (.git, __MACOSX, _ignored) are not classes.
    return sorted(p for p in parent.iterdir() if p.is_dir() and not p.name.startswith((".", "_")))


def _audio_files(class_dir: Path, base: Path, extensions: tuple[str, ...] = AUDIO_EXTENSIONS) -> list[str]:
    """Files with ``extensions`` anywhere below ``class_dir`` as sorted paths relative to ``base``
    (what ``class_dir.rglob("*")`` finds: symlinked folders are not entered, hidden files are
    left out). os.scandir, not pathlib: ~4x faster, and a cached run of a 200,000-file folder
    starts with this scan."""
    prefix = len(os.path.join(str(base), ""))
    out: list[str] = []
    stack = [str(class_dir)]
    while stack:
        with os.scandir(stack.pop()) as entries:
            for e in entries:
                if e.is_dir(follow_symlinks=False):
                    stack.append(e.path)
                elif (
                    not e.name.startswith(".")
                    and os.path.splitext(e.name)[1].lower() in extensions
                    and e.is_file()
                ):
                    out.append(e.path[prefix:].replace(os.sep, "/"))
    return sorted(out)


@dataclass(frozen=True)
class FolderKind:
    """What a class folder holds, for listing and for messages (audio here; images.py has its own)."""

    extensions: tuple[str, ...] = AUDIO_EXTENSIONS
    files: str = "audio files"  # "No <files> in ..."
    example: str = "*.wav (or .flac/.ogg)"  # <parent>/<class name>/<example>
    add: str = "Add recordings"


def _scan_classes(
    parent: Path, base: Path, kind: FolderKind = FolderKind(), problems: list[str] | None = None
) -> dict[str, list[str]]:
    """Class name → its files (relative to ``base``). Empty class folders are an error; given a
    ``problems`` list, they are added to it and left out instead, so the caller can go on to find
    every other problem in the same scan."""
    try:
        found = {d.name: _audio_files(d, base, kind.extensions) for d in _class_dirs(parent)}
    except OSError as e:
        raise _listing_error(parent, e) from e
    if not found:
        raise DataError(
            f"No class folders in {parent}: expected {parent}/<class name>/{kind.example}, "
            "one sub-folder per class."
        )
    empty = [c for c, files in found.items() if not files]
    if empty:
        message = (
            f"Class folder(s) without {kind.files} ({', '.join(kind.extensions)}) in {parent}: "
            f"{', '.join(str(parent / c) for c in empty)}. {kind.add} or remove these folders."
        )
        if problems is None or len(empty) == len(found):
            raise DataError("\n".join([*(problems or []), message]))
        problems.append(message)
    return {c: files for c, files in found.items() if files}


def _seeded_split(files: list[str], test_fraction: float, seed: int, cls: str) -> tuple[list[str], list[str]]:
    """Deterministic split of one class: shuffle the sorted names with a per-class seed."""
    order = sorted(files)
    # A string seed is hashed deterministically (not affected by PYTHONHASHSEED); seeding per
    # class keeps each class's split unchanged when files are added to another class.
    random.Random(f"{seed}/{cls}").shuffle(order)
    n_test = round(len(order) * test_fraction)
    if len(order) >= 2:
        n_test = min(max(n_test, 1), len(order) - 1)  # both sides get at least one file
    else:
        n_test = 0
    return order[n_test:], order[:n_test]


def split_class_folders(
    root: Path, kind: FolderKind, test_fraction: float, seed: int, problems: list[str] | None = None
) -> tuple[list[str], list[tuple[str, str]], list[tuple[str, str]], str]:
    """``root/train/<class>`` + ``root/test/<class>``, or ``root/<class>`` split per class by
    :func:`_seeded_split`: (classes, train (relative path, class), test (...), how it was split).

    Given a ``problems`` list, problems with some class folders are added to it (and those
    folders left out) instead of raised, so one scan reports them all (:func:`_scan_classes`)."""
    if not 0.0 < test_fraction < 1.0:
        raise DataError(f"test_fraction must be between 0 and 1 (exclusive), got {test_fraction}")

    train_names: list[tuple[str, str]] = []  # (relative path, class)
    test_names: list[tuple[str, str]] = []
    if (root / "train").is_dir() and (root / "test").is_dir():
        train_found = _scan_classes(root / "train", root, kind, problems)
        test_found = _scan_classes(root / "test", root, kind, problems)
        unknown = sorted(set(test_found) - set(train_found))
        if unknown:
            message = (
                f"Class folder(s) {', '.join(unknown)} exist in {root / 'test'} but not in "
                f"{root / 'train'}: the model could never learn them. Add training files or "
                "remove them from test."
            )
            if problems is None:
                raise DataError(message)
            problems.append(message)
            test_found = {c: f for c, f in test_found.items() if c not in unknown}
        classes = sorted(train_found)
        train_names = [(f, c) for c in classes for f in train_found[c]]
        test_names = [(f, c) for c in sorted(test_found) for f in test_found[c]]
        how = "split by train/ and test/ folders"
    else:
        found = _scan_classes(root, root, kind, problems)
        classes = sorted(found)
        for c in classes:
            tr, te = _seeded_split(found[c], test_fraction, seed, c)
            train_names += [(f, c) for f in tr]
            test_names += [(f, c) for f in te]
        how = f"{test_fraction:g} of each class to test (seed {seed})"
    return classes, train_names, test_names, how


def load_audio_folder(
    root: Path,
    spec: LogMelSpec,
    cache_dir: Path | None,
    skip_bad: bool,
    test_fraction: float = 0.2,
    seed: int = 0,
    progress: Progress | None = None,
    cache_mode: str = "auto",
) -> LoadedData:
    """A folder of audio files, one sub-folder per class, as log-mel features.

    Layout ``root/<class>/**/*.wav|flac|ogg``; classes are the sorted sub-folder names. Each
    class is split on its own: its sorted file names are shuffled with a seed derived from
    ``seed`` and the class name and the first ``round(n * test_fraction)`` (at least 1, at most
    n - 1) go to test. If ``root/train`` and ``root/test`` both exist they ARE the split (each
    with class sub-folders; ``test_fraction``/``seed`` unused, test classes must also exist in
    train). The split is decided before unreadable files are dropped, so skipping one never
    moves other files between train and test.

    The features are cached as the image folders' pixels are (:mod:`mnistkit.data.imagecache`:
    float32 rows in one data file, decoded in parallel, only new or changed files decoded
    again), and ``cache_mode`` (``data.cache``) keeps them in memory or reads them from the
    file batch by batch.
    """
    root = Path(root).expanduser()
    if not root.is_dir():
        raise DataError(
            f"Audio folder {root} does not exist: expected {root}/<class name>/*.wav "
            "(or .flac/.ogg), one sub-folder per class."
        )
    classes, train_names, test_names, how = split_class_folders(root, FolderKind(), test_fraction, seed)
    shape = (1, spec.n_mels, spec.frames)
    got = load_cached(
        "audio_folder", root, train_names, test_names, classes, cache_settings(spec),
        _FeatureDecoder(spec), shape, np.float32, cache_dir, cache_mode, progress,
    )  # fmt: skip
    _apply_bad_policy(got.feats.bad, root, skip_bad)
    origin = got.origin("features ", "features computed")
    source = (
        f"audio folder {root}: {len(classes)} classes, {got.n_train} train / {got.n_test} test "
        f"clips ({how}), {spec.describe()}; {origin}"
    )
    if got.feats.bad:
        source += f"; {len(got.feats.bad)} unreadable file(s) skipped"
    # Features are standardized per clip (see log_mel), so no dataset-level normalization.
    return got.loaded(classes, (0.0,), (1.0,), source)


@dataclass(frozen=True)
class _FeatureDecoder:
    """Log-mel features of one file as a ``[1, n_mels, frames]`` row; picklable, for the
    decoding processes."""

    spec: LogMelSpec

    def __call__(self, path: Path) -> np.ndarray:
        return _features_of(path, self.spec)[None]
