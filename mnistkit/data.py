"""Data: find and load a dataset (registry targets below), prepare it once, serve batches.

Datasets that fit in memory (the MNIST family, cached audio features) are decoded once into one
tensor, normalized once, placed on the training device once, and batched by indexing with a fresh
permutation every epoch: the same semantics as a shuffled DataLoader (every sample once per epoch,
last partial batch kept unless ``drop_last``), without per-sample Python. ``data.loader:
dataloader`` keeps the classic DataLoader path for comparison or for data that does not fit.

A dataset loader is any callable ``f(ctx: DataContext) -> LoadedData`` registered in the dataset
registry; plugins add their own the same way.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch

from mnistkit.datatypes import DataError, LoadedData, Split
from mnistkit.recipe import DataSection, Normalize

ENV_DATA = "MNISTKIT_DATA"
ENV_CACHE = "MNISTKIT_CACHE"


def user_cache_dir() -> Path:
    """Where downloads and feature caches go by default ($MNISTKIT_CACHE overrides)."""
    if os.environ.get(ENV_CACHE):
        return Path(os.environ[ENV_CACHE]).expanduser()
    from platformdirs import user_cache_dir as _ucd

    return Path(_ucd("mnistkit"))


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
    for cand in (data_dir, section.root, os.environ.get(ENV_DATA), user_cache_dir() / "data"):
        if cand:
            p = Path(cand).expanduser()
            if p not in roots:
                roots.append(p)
    return roots


# ----------------------------------------------------------------------- dataset registry targets
def _vision(name: str, ctx: DataContext) -> LoadedData:
    from mnistkit.vision import load_mnist_family

    return load_mnist_family(name, ctx.roots, ctx.download_root)


def mnist(ctx: DataContext) -> LoadedData:
    return _vision("mnist", ctx)


def fashion_mnist(ctx: DataContext) -> LoadedData:
    return _vision("fashion_mnist", ctx)


def kmnist(ctx: DataContext) -> LoadedData:
    return _vision("kmnist", ctx)


def digits(ctx: DataContext) -> LoadedData:
    from mnistkit.vision import load_sklearn_digits

    return load_sklearn_digits()


def _audio_spec(ctx: DataContext):  # noqa: ANN202
    from mnistkit.audio import LogMelSpec

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


def _find_audio_root(ctx: DataContext, names: tuple[str, ...]) -> Path:
    tried: list[str] = []
    for root in ctx.roots:
        for sub in names:
            cand = root / sub if sub else root
            tried.append(str(cand))
            if cand.is_dir() and (any(cand.glob("*.wav")) or any(cand.glob("*/*.wav"))):
                return cand
    raise DataError(
        f"dataset {ctx.section.dataset!r}: no folder of WAV files found. Looked in:\n  "
        + "\n  ".join(tried)
        + "\nFix: pass --data-dir DIR (the folder with the recordings, or its parent), set "
        "data.root in the recipe, or set MNISTKIT_DATA."
    )


def fsdd(ctx: DataContext) -> LoadedData:
    from mnistkit.audio import load_fsdd

    root = _find_audio_root(ctx, ("", "recordings", "fsdd/recordings", "fsdd"))
    return load_fsdd(
        root,
        _audio_spec(ctx),
        ctx.cache_dir / "features",
        ctx.section.skip_bad_files,
        progress=_progress(ctx),
    )


def audio_folder(ctx: DataContext) -> LoadedData:
    from mnistkit.audio import load_audio_folder

    root = _find_audio_root(ctx, ("",))
    return load_audio_folder(
        root,
        _audio_spec(ctx),
        ctx.cache_dir / "features",
        ctx.section.skip_bad_files,
        test_fraction=ctx.section.test_fraction,
        seed=ctx.seed,
        progress=_progress(ctx),
    )


# ---------------------------------------------------------------------------------- preparation
@dataclass
class Prepared:
    """Normalized float tensors on the training device, plus what the model needs to know."""

    train: Split
    test: Split
    val: Split | None
    classes: list[str]
    in_shape: tuple[int, ...]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    scale: float  # raw value → [0, 1] factor applied before (x - mean) / std (1/255 for uint8)
    source: str
    files: list[Path]

    @property
    def num_classes(self) -> int:
        return len(self.classes)


def normalize_stats(
    section: DataSection, loaded: LoadedData
) -> tuple[tuple[float, ...], tuple[float, ...]]:
    if isinstance(section.normalize, Normalize):
        return tuple(section.normalize.mean), tuple(section.normalize.std)
    if section.normalize == "none":
        return (0.0,), (1.0,)
    return tuple(loaded.mean), tuple(loaded.std)


def to_float(
    x: torch.Tensor, mean: tuple[float, ...], std: tuple[float, ...], scale: float
) -> torch.Tensor:
    """Raw tensor [N, C, ...] → normalized float32 (used for training data and for predict)."""
    out = x.to(torch.float32)
    if scale != 1.0:
        out.mul_(scale)
    shape = (1, -1) + (1,) * (out.dim() - 2)
    m = torch.tensor(mean, dtype=torch.float32).view(shape)
    s = torch.tensor(std, dtype=torch.float32).view(shape)
    return out.sub_(m).div_(s)


def prepare(loaded: LoadedData, section: DataSection, seed: int, device: torch.device) -> Prepared:
    """Limit, split off validation (seeded), normalize once, move to the device once."""
    mean, std = normalize_stats(section, loaded)
    scale = 1 / 255 if loaded.train.x.dtype == torch.uint8 else 1.0
    tx, ty = loaded.train.x, loaded.train.y
    if section.limit:
        tx, ty = tx[: section.limit], ty[: section.limit]
    val: Split | None = None
    if section.val_split > 0:
        g = torch.Generator().manual_seed(seed + 1)  # independent of the shuffling stream
        perm = torch.randperm(len(ty), generator=g)
        n_val = max(1, round(len(ty) * section.val_split))
        vi, ti = perm[:n_val].sort().values, perm[n_val:].sort().values
        val = Split(tx[vi], ty[vi])
        tx, ty = tx[ti], ty[ti]
    sx, sy = loaded.test.x, loaded.test.y
    if section.test_limit:
        sx, sy = sx[: section.test_limit], sy[: section.test_limit]

    def put(split: Split) -> Split:
        return Split(
            to_float(split.x, mean, std, scale).to(device), split.y.to(torch.int64).to(device)
        )

    return Prepared(
        train=put(Split(tx, ty)),
        test=put(Split(sx, sy)),
        val=put(val) if val is not None else None,
        classes=list(loaded.classes),
        in_shape=tuple(loaded.train.x.shape[1:]),
        mean=mean,
        std=std,
        scale=scale,
        source=loaded.source,
        files=list(loaded.files),
    )


# -------------------------------------------------------------------------------------- batching
def num_batches(n: int, batch_size: int, drop_last: bool) -> int:
    return n // batch_size if drop_last else -(-n // batch_size)


def epoch_order(n: int, shuffle: bool, generator: torch.Generator) -> torch.Tensor:
    """This epoch's sample order: ``torch.randperm(n, generator)``, exactly as RandomSampler."""
    return torch.randperm(n, generator=generator) if shuffle else torch.arange(n)


def memory_batches(
    split: Split, batch_size: int, order: torch.Tensor, drop_last: bool
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Batches by indexing the resident tensors with slices of ``order``."""
    order = order.to(split.x.device)
    n = len(order)
    stop = n - n % batch_size if drop_last else n
    for start in range(0, stop, batch_size):
        idx = order[start : start + batch_size]
        yield split.x[idx], split.y[idx]


def dataloader_batches(
    split: Split,
    batch_size: int,
    order: torch.Tensor,
    drop_last: bool,
    num_workers: int | None,
    device: torch.device,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """The classic path: a DataLoader over the same tensors, in the same order."""
    from torch.utils.data import DataLoader, TensorDataset

    workers = min(2, os.cpu_count() or 1) if num_workers is None else num_workers
    ds = TensorDataset(split.x.cpu(), split.y.cpu())
    loader = DataLoader(
        ds,
        batch_size=batch_size,
        sampler=order.tolist(),  # the epoch's permutation, so both paths see the same batches
        drop_last=drop_last,
        num_workers=workers,
        pin_memory=device.type == "cuda",
    )
    for xb, yb in loader:
        yield xb.to(device, non_blocking=True), yb.to(device, non_blocking=True)


def eval_batches(split: Split, batch_size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    for start in range(0, len(split.y), batch_size):
        yield split.x[start : start + batch_size], split.y[start : start + batch_size]
