"""Data sources: where a dataset's files are looked for, and the dataset loaders (registry targets).

A loader returns a :class:`~mnistkit.data.types.LoadedData`; :mod:`mnistkit.data.batches` prepares it.
Datasets that fit in memory (the MNIST family, cached audio features) are decoded once into one
tensor, placed on the training device once, and batched by indexing with a fresh permutation every
epoch: the same semantics as a shuffled DataLoader (every sample once per epoch, last partial batch
kept unless ``drop_last``), without per-sample Python. Training batches are normalized as they are
served (uint8 stays uint8 in memory; see :class:`Prepared`). ``data.loader: dataloader`` keeps the
classic DataLoader path for comparison or for data that does not fit.

A dataset loader is any callable ``f(ctx: DataContext) -> LoadedData`` registered in the dataset
registry; plugins add their own the same way.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from mnistkit.data.cache import cache_folder
from mnistkit.data.types import LoadedData
from mnistkit.errors import DataError, set_hint
from mnistkit.recipe.sections import DataSection

ENV_DATA = "MNISTKIT_DATA"


@dataclass
class DataContext:
    """What a dataset loader gets: where to look, whether it may download, where to cache."""

    section: DataSection
    roots: list[Path]  # searched in order
    download_root: Path | None  # None: downloading is not allowed
    cache_dir: Path
    seed: int = 0
    progress: Callable[[str, int, int], None] | None = None
    notes: list[str] = field(default_factory=list)


def data_roots(section: DataSection, data_dir: str | Path | None) -> list[Path]:
    """Search order: --data-dir, the recipe's data.root, $MNISTKIT_DATA, the user cache."""
    roots: list[Path] = []
    for cand in (data_dir, section.root, os.environ.get(ENV_DATA), cache_folder("data")):
        if cand:
            p = Path(cand).expanduser()
            if p not in roots:
                roots.append(p)
    return roots


# ----------------------------------------------------------------------- dataset registry targets
def _vision(name: str, ctx: DataContext) -> LoadedData:
    from mnistkit.data.vision import load_mnist_family

    return load_mnist_family(name, ctx.roots, ctx.download_root)


def mnist(ctx: DataContext) -> LoadedData:
    return _vision("mnist", ctx)


def fashion_mnist(ctx: DataContext) -> LoadedData:
    return _vision("fashion_mnist", ctx)


def kmnist(ctx: DataContext) -> LoadedData:
    return _vision("kmnist", ctx)


def digits(ctx: DataContext) -> LoadedData:
    from mnistkit.data.vision import load_sklearn_digits

    return load_sklearn_digits()


def _audio_spec(ctx: DataContext):  # noqa: ANN202
    from mnistkit.data.audio import LogMelSpec

    f = ctx.section.features
    assert f is not None  # filled in by recipe checks for audio datasets
    return LogMelSpec(
        sample_rate=f.sample_rate,
        n_fft=f.n_fft,
        hop_length=f.hop_length,
        n_mels=f.n_mels,
        frames=f.frames,
        fmax=f.fmax,
    )


def _progress(ctx: DataContext) -> Callable[[int, int], None] | None:
    if ctx.progress is None:
        return None
    report = ctx.progress
    return lambda done, total: report("extracting features", done, total)


def _holds_audio(folder: Path) -> bool:
    """Audio files directly in ``folder``, in class sub-folders, or in train/ and test/ class folders."""
    from mnistkit.data.audio import AUDIO_EXTENSIONS

    return any(
        f.suffix.lower() in AUDIO_EXTENSIONS
        for pattern in ("*", "*/*", "*/*/*")
        for f in folder.glob(pattern)
    )


def _find_audio_root(ctx: DataContext, names: tuple[str, ...]) -> Path:
    tried: list[str] = []
    for root in ctx.roots:
        for sub in names:
            cand = root / sub if sub else root
            tried.append(str(cand))
            if cand.is_dir() and _holds_audio(cand):
                return cand
    raise DataError(
        f"dataset {ctx.section.dataset!r}: no folder of audio files (.wav, .flac, .ogg) found. Looked in:\n  "
        + "\n  ".join(tried)
        + "\nFix: pass --data-dir DIR (the folder with the recordings, or its parent), "
        f"{set_hint('data.root', 'DIR')}, or set MNISTKIT_DATA."
    )


def fsdd(ctx: DataContext) -> LoadedData:
    from mnistkit.data.audio import load_fsdd

    root = _find_audio_root(ctx, ("", "recordings", "fsdd/recordings", "fsdd"))
    return load_fsdd(
        root,
        _audio_spec(ctx),
        cache_folder("features", ctx.cache_dir),
        ctx.section.skip_bad_files,
        progress=_progress(ctx),
    )


def image_folder(ctx: DataContext) -> LoadedData:
    from mnistkit.data.images import load_image_folder

    image = ctx.section.image
    assert image is not None  # filled in by recipe checks for image_folder
    root = _find_folder(ctx)
    return load_image_folder(
        root,
        image.channels,
        image.size,
        cache_folder("images", ctx.cache_dir),
        ctx.section.skip_bad_files,
        test_fraction=ctx.section.test_fraction,
        seed=ctx.seed,
        progress=None if ctx.progress is None else _images_progress(ctx.progress),
        cache_mode=ctx.section.cache,
    )


def _images_progress(report: Callable[[str, int, int], None]) -> Callable[[int, int], None]:
    return lambda done, total: report("decoding images", done, total)


def _find_folder(ctx: DataContext) -> Path:
    """The first of --data-dir, data.root, $MNISTKIT_DATA that exists (never the user cache:
    downloads live there, not someone's pictures)."""
    given = [r for r in ctx.roots if r != cache_folder("data")]
    for root in given:
        if root.is_dir():
            return root
    looked = ("Looked in:\n  " + "\n  ".join(map(str, given))) if given else "No folder was given."
    raise DataError(
        f"dataset {ctx.section.dataset!r}: no image folder found. {looked}\nFix: pass --data-dir "
        "DIR (a folder holding <class>/ sub-folders, or train/ and test/), or "
        f"{set_hint('data.root', 'DIR')}."
    )


def audio_folder(ctx: DataContext) -> LoadedData:
    from mnistkit.data.audio import load_audio_folder

    root = _find_audio_root(ctx, ("",))
    return load_audio_folder(
        root,
        _audio_spec(ctx),
        cache_folder("features", ctx.cache_dir),
        ctx.section.skip_bad_files,
        test_fraction=ctx.section.test_fraction,
        seed=ctx.seed,
        progress=_progress(ctx),
        cache_mode=ctx.section.cache,
    )
