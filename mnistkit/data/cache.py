"""The per-user cache: what is in it, and clearing it (``mnistkit cache``).

``$MNISTKIT_CACHE`` (default: the platform's user cache folder, e.g. ``~/.cache/mnistkit``) holds
the folders listed in :data:`KINDS`: ``data/`` (datasets downloaded by torchvision),
``features/`` (decoded audio features, one ``.npz`` per dataset and parameter set), ``images/``
(decoded image folders, one ``.rows`` data file, its ``.npz`` table and its ``.json`` index per
folder and image settings) and
``checks/`` (data check results, one ``.json`` per dataset content, :mod:`mnistkit.data.check`).
Decoded data is recomputed when missing, so clearing it only costs time; downloads are kept
unless asked for, because re-downloading needs the network.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

ENV_CACHE = "MNISTKIT_CACHE"


def user_cache_dir() -> Path:
    """Where downloads and feature caches go by default ($MNISTKIT_CACHE overrides)."""
    if os.environ.get(ENV_CACHE):
        return Path(os.environ[ENV_CACHE]).expanduser()
    from platformdirs import user_cache_dir as _ucd

    return Path(_ucd("mnistkit"))


#: Every folder mnistkit writes under the cache, what it holds, and whether `mnistkit cache clear`
#: removes it by default. The loaders get their folder from :func:`cache_folder`, so a folder
#: missing here cannot be written (and so never escapes `mnistkit cache`).
KINDS: dict[str, tuple[str, bool]] = {
    # (each line of `mnistkit cache` fits 80 columns: at most 44 characters here)
    "features": ("decoded audio features (rebuilt when needed)", True),
    "images": ("decoded image folders (rebuilt when needed)", True),
    "checks": ("data check results (rebuilt when needed)", True),
    "data": ("downloads (fetched again only with network)", False),
}


def cache_folder(kind: str, root: Path | None = None) -> Path:
    """The cache folder for ``kind`` (a key of :data:`KINDS`) under ``root`` (default: the user
    cache)."""
    if kind not in KINDS:
        raise ValueError(f"unknown cache folder {kind!r}: add it to KINDS in {__name__}")
    return (root or user_cache_dir()) / kind


@dataclass(frozen=True)
class CacheEntry:
    kind: str
    path: Path
    files: int
    bytes: int


def cache_entries(root: Path | None = None) -> list[CacheEntry]:
    """Each cache folder under ``root`` (default: the user cache) with its file count and size."""
    root = root or user_cache_dir()
    out = []
    for kind in KINDS:
        folder = cache_folder(kind, root)
        files = [f for f in folder.rglob("*") if f.is_file()] if folder.is_dir() else []
        out.append(CacheEntry(kind, folder, len(files), sum(f.stat().st_size for f in files)))
    return out


@dataclass(frozen=True)
class ImageCache:
    """One decoded image folder under ``images/`` (:mod:`mnistkit.data.imagecache`)."""

    root: str  # the image folder it was decoded from
    images: int
    shape: tuple[int, ...]
    bytes: int  # the data file, its table and its index


def image_caches(root: Path | None = None, kind: str = "images") -> list[ImageCache]:
    """Every decoded folder (image folders under ``images/``; with ``kind="features"``, audio
    folders) in the cache, from the indexes (unreadable ones skipped)."""
    import json

    out = []
    for index in sorted(cache_folder(kind, root).glob("*.json")):
        try:
            data = json.loads(index.read_text())
            parts = [index, index.parent / str(data["data"]), index.parent / str(data["table"])]
            size = sum(p.stat().st_size for p in parts if p.is_file())
            out.append(ImageCache(str(data["root"]), int(data["count"]), tuple(data["shape"]), size))
        except (OSError, ValueError, KeyError, TypeError):
            continue
    return out


def clear_cache(kinds: list[str], root: Path | None = None) -> list[CacheEntry]:
    """Remove the given cache folders; returns what was removed."""
    removed = []
    for entry in cache_entries(root):
        if entry.kind in kinds and entry.path.is_dir():
            shutil.rmtree(entry.path)
            removed.append(entry)
    return removed


def human_size(n: int) -> str:
    size = float(n)
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1024 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"
