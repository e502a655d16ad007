"""Load a recipe's dataset through its registry entry and prepare it on the device.

Also :func:`data_info`: what ``predict`` needs to preprocess a file exactly as training did
(``data.json`` in the run directory).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
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

    def work(self, what: str, done: int, total: int) -> None:
        """Progress of loading work: ``done`` of ``total`` files (0 starts the clock)."""
        ...


def download_root(roots: list[Path]) -> Path:
    """Where a missing dataset is downloaded: the first of the user's folders (--data-dir,
    data.root, $MNISTKIT_DATA) that exists, else the per-user cache (the last root).

    A folder that does not exist is never created as a download target: a mistyped --data-dir
    would otherwise become a new folder full of downloaded files.
    """
    return next((r for r in roots[:-1] if r.is_dir()), roots[-1])


@dataclass
class _SeedWatch(DataContext):
    """A DataContext that notes whether the loader read ``seed`` (a seeded split of class folders,
    a plugin's generated data): only then does the loaded data depend on the run's seed."""

    seed_read: bool = False

    def __getattribute__(self, name: str) -> Any:
        if name == "seed":
            object.__setattr__(self, "seed_read", True)
        return super().__getattribute__(name)


@dataclass
class SharedData:
    """Datasets loaded once and shared by the runs of one process (the seeds of a group).

    What a loader returns depends on the recipe's ``data`` section and the folders searched, and
    on the seed only where the loader reads it; a run reuses a kept dataset only when all of these
    agree, so it trains on exactly what loading it alone would give. The kept data is raw (as
    loaded): each run still limits, splits and normalizes it with its own seed (:func:`prepare`).
    """

    kept: list[tuple[str, int | None, LoadedData]] = field(default_factory=list)
    loads: int = 0  # datasets actually loaded (the others were shared)

    def find(self, key: str, seed: int) -> LoadedData | None:
        return next((d for k, s, d in self.kept if k == key and s in (None, seed)), None)


def load_data(
    recipe: RecipeBase,
    reg: Registries,
    data_dir: Path | None,
    device: torch.device,
    reporter: Messages | None = None,
    shared: SharedData | None = None,
) -> Prepared:
    loaded = load_dataset(recipe, reg, data_dir, reporter, shared)
    return prepare(loaded, recipe.data, recipe.seed, device)


def load_dataset(
    recipe: RecipeBase,
    reg: Registries,
    data_dir: Path | None,
    reporter: Messages | None = None,
    shared: SharedData | None = None,
) -> LoadedData:
    """The recipe's dataset as its loader returns it: raw, not yet limited, split or normalized
    (from ``shared`` when an earlier run of this process loaded the same)."""
    key = json.dumps([recipe.data.model_dump(mode="json"), str(data_dir)], sort_keys=True)
    if shared is not None and (found := shared.find(key, recipe.seed)) is not None:
        return found
    entry = reg.datasets.get(recipe.data.dataset)
    roots = data_roots(recipe.data, data_dir)
    may_download = recipe.data.download and entry.meta.get("download", False)

    def progress(what: str, done: int, total: int) -> None:
        if reporter is not None:
            reporter.work(what, done, total)

    ctx = _SeedWatch(
        section=recipe.data,
        roots=roots,
        download_root=download_root(roots) if may_download else None,
        cache_dir=user_cache_dir(),
        seed=recipe.seed,
        progress=progress,
    )
    try:
        loaded = entry.load()(ctx)
    except DataError as exc:
        raise RunError(str(exc)) from None
    if shared is not None:
        shared.loads += 1
        shared.kept.append((key, recipe.seed if ctx.seed_read else None, loaded))
    return loaded


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
        # samples per split as trained (val_split and test_limit applied): the report's header
        "samples": {
            "train": len(data.train.y),
            "val": len(data.val.y) if data.val is not None else None,
            "test": len(data.test.y),
        },
    }
