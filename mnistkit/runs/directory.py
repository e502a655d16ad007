"""The run directory: everything a run leaves behind, never overwriting an existing run.

runs/<name>-<YYYYmmdd-HHMMSS>/
    recipe.yaml    the fully resolved recipe (every default spelled out), re-runnable as is
    metrics.csv    one row per epoch
    status.json    running / finished / interrupted / failed, timings, best metric
    env.json       versions, device, seed, git commit, dataset file hashes
    data.json      classes, input shape, normalization (mean/std/scale), audio feature settings:
                   what `mnistkit predict` needs to preprocess a file exactly as in training
    last.pt        checkpoint after the latest epoch (or Ctrl-C point)
    best.pt        checkpoint of the best epoch by train.best_metric
    plots/         curves.png, confusion.png, worst.png
    tb/            TensorBoard event files (train.tensorboard: true)
    eval-<checkpoint>.json, eval-<checkpoint>-confusion.png   written by `mnistkit eval`
"""

from __future__ import annotations

import csv
import datetime as dt
import hashlib
import json
import os
import platform
import subprocess
from pathlib import Path
from typing import Any

import yaml

from mnistkit.errors import RunError

METRIC_COLUMNS = [
    "epoch",
    "train_loss",
    "train_acc",
    "val_loss",
    "val_acc",
    "test_loss",
    "test_acc",
    "lr",
    "seconds",
    "samples_per_s",
]


def create_run_dir(runs_root: Path, name: str, out: Path | None) -> Path:
    """A new, empty run directory. An existing non-empty ``--out`` is refused, never reused."""
    if out is not None:
        if out.exists() and (not out.is_dir() or any(out.iterdir())):
            raise RunError(
                f"--out {out}: already exists and is not empty; mnistkit never overwrites a run. "
                f"Choose a new folder, or continue that run with --resume {out}"
            )
        out.mkdir(parents=True, exist_ok=True)
        return out
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    runs_root.mkdir(parents=True, exist_ok=True)
    for n in range(1, 1000):
        cand = runs_root / (f"{name}-{stamp}" + (f"-{n}" if n > 1 else ""))
        try:
            cand.mkdir()  # atomic: two runs started in the same second get different folders
            return cand
        except FileExistsError:
            continue
    raise RunError(f"could not create a new run directory under {runs_root}")


def write_recipe(run_dir: Path, resolved: dict[str, Any]) -> Path:
    path = run_dir / "recipe.yaml"
    text = "# Fully resolved recipe written by mnistkit: re-run with `mnistkit run " + str(path) + "`\n"
    text += yaml.safe_dump(resolved, sort_keys=False, default_flow_style=None, width=100)
    atomic_write_text(path, text)
    return path


def read_recipe_dict(run_dir: Path) -> dict[str, Any]:
    path = run_dir / "recipe.yaml"
    try:
        return yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except FileNotFoundError:
        raise RunError(f"{run_dir}: not a run directory (no recipe.yaml)") from None


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``path`` completely or not at all: a temp file beside it, fsync, rename over it.

    A failed write (disk full, permission) removes its temp file and leaves ``path`` as it was.
    """
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_metrics(run_dir: Path, rows: list[dict[str, Any]], has_val: bool) -> Path:
    """Rewrite metrics.csv from the rows so far (atomic; a resumed run keeps one consistent file)."""
    cols = [c for c in METRIC_COLUMNS if has_val or not c.startswith("val_")]
    path = run_dir / "metrics.csv"
    lines: list[str] = []

    class _Sink:
        def write(self, s: str) -> None:
            lines.append(s)

    writer = csv.DictWriter(_Sink(), fieldnames=cols, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: _csv_value(row.get(k)) for k in cols})
    atomic_write_text(path, "".join(lines))
    return path


def _csv_value(v: Any) -> Any:
    if isinstance(v, float):
        return repr(v)  # full precision: reproducibility tests compare files exactly
    return "" if v is None else v


def read_metrics(run_dir: Path) -> list[dict[str, Any]]:
    path = run_dir / "metrics.csv"
    if not path.exists():
        return []
    with open(path, newline="", encoding="utf-8") as fh:
        rows = []
        for raw in csv.DictReader(fh):
            row: dict[str, Any] = {}
            for k, v in raw.items():
                if v in ("", None):
                    row[k] = None
                elif k == "epoch":
                    row[k] = int(v)
                else:
                    row[k] = float(v)
            rows.append(row)
        return rows


def write_status(run_dir: Path, **fields: Any) -> None:
    path = run_dir / "status.json"
    current: dict[str, Any] = {}
    if path.exists():
        try:
            current = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError:
            current = {}
    current.update(fields)
    atomic_write_text(path, json.dumps(current, indent=2, default=str) + "\n")


def read_status(run_dir: Path) -> dict[str, Any]:
    try:
        return json.loads((run_dir / "status.json").read_text(encoding="utf-8"))
    except (FileNotFoundError, json.JSONDecodeError):
        return {}


def file_hashes(files: list[Path], limit: int = 200) -> dict[str, str]:
    """sha256 of each dataset file (first ``limit`` files; audio folders list a digest of all)."""
    out: dict[str, str] = {}
    for f in sorted(files)[:limit]:
        h = hashlib.sha256()
        try:
            with open(f, "rb") as fh:
                for chunk in iter(lambda: fh.read(1 << 20), b""):
                    h.update(chunk)
            out[str(f)] = h.hexdigest()
        except OSError as exc:
            out[str(f)] = f"unreadable: {exc.strerror}"
    if len(files) > limit:
        h = hashlib.sha256()
        for f in sorted(files):
            try:
                st = f.stat()
                h.update(f"{f.name}:{st.st_size}:{st.st_mtime_ns}\n".encode())
            except OSError:
                h.update(f"{f.name}:missing\n".encode())
        out[f"all {len(files)} files (name:size:mtime)"] = h.hexdigest()
    return out


def git_commit(cwd: Path) -> str | None:
    try:
        res = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    if res.returncode != 0:
        return None
    # git's own convention (`git describe --dirty`): changes to tracked files make it dirty;
    # untracked files (a generated schema, a new recipe) do not.
    dirty = subprocess.run(
        ["git", "status", "--porcelain", "--untracked-files=no"],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=5,
    )
    return res.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")


def write_env(
    run_dir: Path, *, device: str, seed: int, threads: int, data_source: str, files: list[Path]
) -> Path:
    import torch

    from mnistkit import __version__

    env = {
        "mnistkit": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "platform": platform.platform(),
        "device": device,
        "cuda": torch.cuda.get_device_name(0) if device.startswith("cuda") else None,
        "threads": threads,
        "seed": seed,
        "git_commit": git_commit(Path(__file__).resolve().parent),
        "cwd_git_commit": git_commit(Path.cwd()),
        "data_source": data_source,
        "data_files": file_hashes(files),
    }
    path = run_dir / "env.json"
    atomic_write_text(path, json.dumps(env, indent=2) + "\n")
    return path


def write_data_info(run_dir: Path, info: dict[str, Any]) -> Path:
    """data.json: how inputs were preprocessed in training (read by ``mnistkit predict``)."""
    path = run_dir / "data.json"
    atomic_write_text(path, json.dumps(info, indent=2) + "\n")
    return path


def read_data_info(run_dir: Path) -> dict[str, Any] | None:
    try:
        return json.loads((run_dir / "data.json").read_text(encoding="utf-8"))
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def pid_alive(pid: Any) -> bool:
    """Whether process ``pid`` exists on this machine (False for anything not a positive int)."""
    if not isinstance(pid, int) or isinstance(pid, bool) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True  # exists, owned by someone else
    return True


def run_process_alive(pid: Any) -> bool:
    """Whether the process that wrote a 'running' status.json is still alive.

    Where /proc shows command lines (Linux), a live pid whose command is neither Python nor
    mnistkit was reused by an unrelated program after the run died: not alive.
    """
    if not pid_alive(pid):
        return False
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().lower()
    except OSError:
        return True  # no /proc (macOS) or not ours to read: trust the pid
    return not cmdline or b"python" in cmdline or b"mnistkit" in cmdline


def recorded_data_dir(run_dir: Path) -> Path | None:
    """The ``--data-dir`` recorded in a run's data.json, if any."""
    info = read_data_info(run_dir) or {}
    return Path(info["data_dir"]) if info.get("data_dir") else None
