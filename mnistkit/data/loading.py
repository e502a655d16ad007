"""Load a recipe's dataset through its registry entry and prepare it on the device.

Also :func:`data_info`: what ``predict`` needs to preprocess a file exactly as training did
(``data.json`` in the run directory).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Protocol

import torch

from mnistkit.data.batches import Prepared, prepare
from mnistkit.data.cache import cache_folder, user_cache_dir
from mnistkit.data.sources import DataContext, data_roots
from mnistkit.data.types import LoadedData
from mnistkit.errors import DataError, RunError
from mnistkit.recipe.sections import RecipeBase
from mnistkit.registry.core import Registries


class Messages(Protocol):
    """Where loading progress goes (the live display's ``message``)."""

    def message(self, text: str) -> None: ...


def download_root(roots: list[Path]) -> Path:
    """Where a missing dataset is downloaded: the first of the user's folders (--data-dir,
    data.root, $MNISTKIT_DATA) that exists, else the per-user cache (the last root).

    A folder that does not exist is never created as a download target: a mistyped --data-dir
    would otherwise become a new folder full of downloaded files.
    """
    return next((r for r in roots[:-1] if r.is_dir()), roots[-1])


def load_data(
    recipe: RecipeBase,
    reg: Registries,
    data_dir: Path | None,
    device: torch.device,
    reporter: Messages | None = None,
) -> Prepared:
    return prepare(load_dataset(recipe, reg, data_dir, reporter), recipe.data, recipe.seed, device)


def load_dataset(
    recipe: RecipeBase, reg: Registries, data_dir: Path | None, reporter: Messages | None = None
) -> LoadedData:
    """The recipe's dataset as its loader returns it: raw, not yet limited, split or normalized."""
    entry = reg.datasets.get(recipe.data.dataset)
    roots = data_roots(recipe.data, data_dir)
    may_download = recipe.data.download and entry.meta.get("download", False)
    last = [0.0]

    def progress(what: str, done: int, total: int) -> None:
        now = time.perf_counter()
        if reporter is not None and (now - last[0] > 2 or done == total):
            last[0] = now
            reporter.message(f"  {what}: {done}/{total}")

    ctx = DataContext(
        section=recipe.data,
        roots=roots,
        download_root=download_root(roots) if may_download else None,
        cache_dir=user_cache_dir(),
        seed=recipe.seed,
        progress=progress,
    )
    try:
        return entry.load()(ctx)
    except DataError as exc:
        raise RunError(str(exc)) from None


def check_dataset(
    recipe: RecipeBase, reg: Registries, loaded: LoadedData, *, files: bool = False
) -> tuple[dict[str, Any], bool]:
    """The data check of ``loaded`` (:mod:`mnistkit.data.check`), cached under the user cache's
    ``checks/``: (report, whether it came from the cache)."""
    from mnistkit.data.check import cached_check

    kind = str(reg.datasets.get(recipe.data.dataset).meta.get("kind", "image"))
    features = recipe.data.features
    rate = features.sample_rate if features is not None else None
    report, cached = cached_check(loaded, kind, rate, cache_folder("checks"), files=files)
    report["dataset"] = recipe.data.dataset
    report["source"] = loaded.source
    return report, cached


def data_info(recipe: RecipeBase, data: Prepared, data_dir: Path | None = None) -> dict[str, Any]:
    """What predict needs to preprocess a file exactly as training did (written to data.json).

    Also the ``--data-dir`` the run was given, so ``--resume`` and ``eval`` find the data again
    without it.
    """
    features = recipe.data.features
    return {
        "dataset": recipe.data.dataset,
        "kind": "audio" if features is not None else "image",
        "classes": [str(c) for c in data.classes],
        "in_shape": [int(n) for n in data.in_shape],
        # x = (raw * scale - mean) / std, per channel; images are uint8 0..255 before scaling
        "scale": float(data.scale),
        "mean": [float(m) for m in data.mean],
        "pixel_mean": [float(m) for m in data.pixel_mean],
        "std": [float(s) for s in data.std],
        "features": features.model_dump(mode="json") if features is not None else None,
        "source": data.source,
        "data_dir": str(Path(data_dir).resolve()) if data_dir is not None else None,
    }
