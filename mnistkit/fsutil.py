"""Atomic, durable file writes: the one way mnistkit replaces a file a user may already have.

Every file a run leaves (checkpoints, metrics.csv, status.json, recipe.yaml, env.json, data.json,
eval-*.json, plots, the audio feature cache) is written the same way:

1. to ``.<name>.tmp-<pid>`` in the same folder (``os.replace`` is atomic only within one file
   system; the pid tells a later writer whether the temp file's writer is dead),
2. the temp file is fsynced (its bytes are on disk before its name is),
3. it is renamed over ``<name>`` (readers see the old file or the new one, never a mix),
4. the folder is fsynced (the rename itself survives a power cut).

A crash at any point leaves the previous file intact; the temp files dead writers leave behind
are removed by the next write of the same name. Standard library only: no layer below this one.
"""

from __future__ import annotations

import contextlib
import glob
import os
from collections.abc import Iterator
from pathlib import Path

TMP_MARK = ".tmp-"


def tmp_path(path: Path, pid: int | None = None) -> Path:
    """Where the writer with process id ``pid`` (default: this process) stages ``path``."""
    return path.with_name(f".{path.name}{TMP_MARK}{os.getpid() if pid is None else pid}")


def pid_alive(pid: object) -> bool:
    """Whether process ``pid`` exists on this machine (False for anything not a positive int)."""
    if not isinstance(pid, int) or isinstance(pid, bool) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True  # exists but not ours, or we cannot tell: leave its files alone
    return True


def remove_stale_tmps(path: Path) -> None:
    """Delete temp files left by writers of ``path`` that were killed mid-write."""
    prefix = f".{path.name}{TMP_MARK}"
    for tmp in path.parent.glob(f"{glob.escape(prefix)}*"):
        suffix = tmp.name[len(prefix) :]
        # Only dead writers' files: a live process (another run writing the same directory)
        # would otherwise lose its temp file before its os.replace.
        if suffix.isdigit() and (int(suffix) == os.getpid() or not pid_alive(int(suffix))):
            with contextlib.suppress(OSError):
                tmp.unlink(missing_ok=True)


def fsync_dir(directory: Path) -> None:
    # The rename is only durable once the directory entry is on disk. Some platforms (Windows)
    # cannot open a directory; the rename is still atomic there, just not yet durable.
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temp path to write ``path``'s new content to; on leaving the block without an
    error it is fsynced and renamed over ``path``, and the folder fsynced. On an error (or
    Ctrl-C) the temp file is removed and ``path`` is untouched. Creates the parent folder.

    For writers that want a file name (matplotlib's ``savefig``, ``np.savez``); text and bytes
    have :func:`atomic_write_text` and :func:`atomic_write_bytes`.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_tmps(path)
    tmp = tmp_path(path)
    try:
        yield tmp
        _fsync_file(tmp)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)  # never leave a half-written file behind
        raise
    fsync_dir(path.parent)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        fh.write(data)


def atomic_write_text(path: Path, text: str) -> None:
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as fh:
        fh.write(text)
