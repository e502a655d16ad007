"""The run directory: everything a run leaves behind, never overwriting an existing run.

runs/<name>-<YYYYmmdd-HHMMSS>/
    recipe.yaml    the fully resolved recipe (every default spelled out), re-runnable as is:
                   data.root is the folder the data came from (--data-dir), absolute
    recipe.edited.yaml   a recipe.yaml edited by hand, kept aside when --resume sets it back
    metrics.csv    one row per epoch
    status.json    running / finished / interrupted / failed, timings, best metric
    env.json       versions, device, seed, git commit, dataset file hashes
    data.json      classes, input shape, normalization (mean/std/scale), audio feature settings:
                   what `mnistkit predict` needs to preprocess a file exactly as in training
    last.pt        checkpoint after the latest epoch (or Ctrl-C point)
    best.pt        checkpoint of the best epoch by train.best_metric
    predictions.npz   test-set labels, predictions and probabilities of the final model
                   (runs/predictions.py; what `mnistkit compare` tests differences on)
    gallery.npz    the few test inputs `mnistkit report` shows (runs/gallery.py)
    origins.json   where each recipe value came from: file:line:col, --set, or a base recipe
    report.html    written by `mnistkit report`
    plots/         curves.png, confusion.png, worst.png
    tb/            TensorBoard event files (train.tensorboard: true)
    eval-<checkpoint>.json, eval-<checkpoint>-confusion.png   written by `mnistkit eval`
"""

from __future__ import annotations

import csv
import datetime as dt
import hashlib
import json
import platform
import subprocess
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from mnistkit.errors import RunError
from mnistkit.fsutil import atomic_write_text, pid_alive
from mnistkit.recipe.metrics import METRIC_COLUMNS

if TYPE_CHECKING:
    from mnistkit.recipe.schema import Recipe

NOT_A_RUN_DIR = "not a run directory (no recipe.yaml)"
#: Where ``--resume`` keeps a recipe.yaml that was edited by hand since the checkpoint, before
#: recipe.yaml is rewritten with the recipe the run actually continues with.
EDITED_RECIPE = "recipe.edited.yaml"
CHECKPOINTS = ("best", "last")


class RunDir:
    """One run directory: its file names, and reading and writing what it holds.

    Every path below a run directory is spelled here and nowhere else; ``RunDir.open`` is the one
    place that decides whether a folder is a run directory (and says so, one message).
    """

    RECIPE = "recipe.yaml"
    METRICS = "metrics.csv"
    STATUS = "status.json"
    ENV = "env.json"
    DATA = "data.json"
    PREDICTIONS = "predictions.npz"
    GALLERY = "gallery.npz"
    ORIGINS = "origins.json"
    PLOTS = "plots"
    TENSORBOARD = "tb"

    def __init__(self, path: Path) -> None:
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"

    # -------------------------------------------------------------- finding and making one
    @classmethod
    def create(cls, runs_root: Path, name: str, out: Path | None) -> RunDir:
        """A new, empty run directory. An existing non-empty ``--out`` is refused, never reused."""
        if out is not None:
            if out.exists() and (not out.is_dir() or any(out.iterdir())):
                raise RunError(
                    f"--out {out}: already exists and is not empty; mnistkit never overwrites a run. "
                    f"Choose a new folder, or continue that run with --resume {out}"
                )
            out.mkdir(parents=True, exist_ok=True)
            return cls(out)
        stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
        runs_root.mkdir(parents=True, exist_ok=True)
        for n in range(1, 1000):
            cand = runs_root / (f"{name}-{stamp}" + (f"-{n}" if n > 1 else ""))
            try:
                cand.mkdir()  # atomic: two runs started in the same second get different folders
                return cls(cand)
            except FileExistsError:
                continue
        raise RunError(f"could not create a new run directory under {runs_root}")

    @classmethod
    def open(cls, path: Path, what: str = "") -> RunDir:
        """An existing run directory (one with a recipe.yaml), or a RunError saying it is not one.

        ``what`` prefixes the message with the option that named the folder (e.g. ``--resume``).
        """
        run = cls(path)
        prefix = what + " " if what else ""
        if not run.path.exists():
            raise RunError(f"{prefix}{run.path}: no such folder")
        if not run.path.is_dir():
            raise RunError(f"{prefix}{run.path}: not a folder (give a run directory)")
        if not run.recipe_path.is_file():
            raise RunError(f"{prefix}{run.path}: {NOT_A_RUN_DIR}")
        return run

    @classmethod
    def looks_like(cls, path: Path) -> bool:
        """Whether ``mnistkit runs`` lists ``path``: a folder any run has written to (a run killed
        before its recipe.yaml was written still has a status.json)."""
        path = Path(path)
        return path.is_dir() and ((path / cls.STATUS).is_file() or (path / cls.RECIPE).is_file())

    # -------------------------------------------------------------- file names
    @property
    def name(self) -> str:
        return self.path.name

    @property
    def recipe_path(self) -> Path:
        return self.path / self.RECIPE

    @property
    def metrics_path(self) -> Path:
        return self.path / self.METRICS

    @property
    def status_path(self) -> Path:
        return self.path / self.STATUS

    @property
    def env_path(self) -> Path:
        return self.path / self.ENV

    @property
    def data_path(self) -> Path:
        return self.path / self.DATA

    @property
    def predictions_path(self) -> Path:
        return self.path / self.PREDICTIONS

    @property
    def gallery_path(self) -> Path:
        return self.path / self.GALLERY

    @property
    def origins_path(self) -> Path:
        return self.path / self.ORIGINS

    @property
    def plots_dir(self) -> Path:
        return self.path / self.PLOTS

    @property
    def tensorboard_dir(self) -> Path:
        return self.path / self.TENSORBOARD

    def checkpoint_path(self, checkpoint: str) -> Path:
        """best.pt or last.pt (``--checkpoint best|last``)."""
        if checkpoint not in CHECKPOINTS:
            raise RunError(f"--checkpoint {checkpoint!r}: use one of {', '.join(CHECKPOINTS)}")
        return self.path / f"{checkpoint}.pt"

    def existing_checkpoint(self, checkpoint: str) -> Path:
        """The checkpoint's path, or a RunError saying why it is missing and what exists instead."""
        path = self.checkpoint_path(checkpoint)
        if not path.exists() and self.recipe_path.is_file():
            others = [c for c in CHECKPOINTS if c != checkpoint and self.checkpoint_path(c).exists()]
            raise RunError(
                f"{path} does not exist: the run has not finished an epoch, or ran with "
                "train.checkpoint: false" + (f"; try --checkpoint {others[0]}" if others else "")
            )
        return path

    def eval_json_path(self, checkpoint: str) -> Path:
        return self.path / f"eval-{checkpoint}.json"

    def eval_confusion_path(self, checkpoint: str) -> Path:
        return self.path / f"eval-{checkpoint}-confusion.png"

    def is_empty(self) -> bool:
        return not any(self.path.iterdir())

    # -------------------------------------------------------------- recipe.yaml
    def write_recipe(self, resolved: dict[str, Any], command: str = "mnistkit") -> Path:
        """recipe.yaml; its first line says how to run it again (``command``: how mnistkit was run)."""
        path = self.recipe_path
        text = f"# Fully resolved recipe written by mnistkit: re-run with `{command} run {path}`\n"
        text += yaml.safe_dump(resolved, sort_keys=False, default_flow_style=None, width=100)
        atomic_write_text(path, text)
        return path

    def read_recipe_dict(self) -> dict[str, Any]:
        try:
            return yaml.safe_load(self.recipe_path.read_text(encoding="utf-8")) or {}
        except FileNotFoundError:
            raise RunError(f"{self.path}: {NOT_A_RUN_DIR}") from None

    def load_recipe(self) -> Recipe:
        """The run's recipe.yaml, validated (a RunError if the folder is not a run directory)."""
        from mnistkit.recipe.schema import load_recipe

        return load_recipe(RunDir.open(self.path).recipe_path)

    # -------------------------------------------------------------- origins.json
    def write_origins(self, origins: dict[str, str]) -> Path:
        """origins.json: dotted recipe key -> where its value was written (``file:line:col`` or
        ``--set key=value``); a key not listed took the schema's default."""
        atomic_write_text(self.origins_path, json.dumps(origins, indent=1, sort_keys=True) + "\n")
        return self.origins_path

    def read_origins(self) -> dict[str, str] | None:
        """origins.json, or None for a run that did not record it."""
        try:
            data = json.loads(self.origins_path.read_text(encoding="utf-8"))
        except (FileNotFoundError, json.JSONDecodeError):
            return None
        return {str(k): str(v) for k, v in data.items()} if isinstance(data, dict) else None

    # -------------------------------------------------------------- plugins
    def keep_plugins(self, modules: list[str]) -> list[str]:
        """Copy the plugin modules a run used from a folder of the user's (next to the recipe,
        not an installed package) into the run directory, with their sibling modules, so that
        ``--resume``, ``eval`` and ``predict`` work from anywhere: loading the run's recipe.yaml
        puts its folder first on the import path. Returns the files copied."""
        import shutil
        import sys

        copied: list[str] = []
        for name in modules:
            file = getattr(sys.modules.get(name), "__file__", None)
            if file is None or _installed(Path(file)):
                continue
            src = Path(file)
            if src.name == "__init__.py":  # a package: the whole folder
                dest = self.path / src.parent.name
                if not dest.exists():
                    shutil.copytree(src.parent, dest, ignore=shutil.ignore_patterns("__pycache__"))
                    copied.append(dest.name)
                continue
            # a module and the modules beside it (a plugin's lazy targets may name them)
            for sibling in sorted(src.parent.glob("*.py")):
                dest = self.path / sibling.name
                if not dest.exists():
                    shutil.copy2(sibling, dest)
                    copied.append(dest.name)
        return copied

    # -------------------------------------------------------------- metrics.csv
    def write_metrics(self, rows: list[dict[str, Any]], has_val: bool) -> Path:
        """Rewrite metrics.csv from the rows so far (atomic; a resumed run keeps one consistent file)."""
        cols = [c for c in METRIC_COLUMNS if has_val or not c.startswith("val_")]
        lines: list[str] = []

        class _Sink:
            def write(self, s: str) -> None:
                lines.append(s)

        writer = csv.DictWriter(_Sink(), fieldnames=cols, extrasaction="ignore", lineterminator="\n")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: _csv_value(row.get(k)) for k in cols})
        atomic_write_text(self.metrics_path, "".join(lines))
        return self.metrics_path

    def read_metrics(self) -> list[dict[str, Any]]:
        path = self.metrics_path
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

    # -------------------------------------------------------------- status.json
    def write_status(self, **fields: Any) -> None:
        """Update status.json with ``fields`` (the keys not given keep their values)."""
        current = self.read_status()
        current.update(fields)
        atomic_write_text(self.status_path, json.dumps(current, indent=2, default=str) + "\n")

    def read_status(self) -> dict[str, Any]:
        try:
            return json.loads(self.status_path.read_text(encoding="utf-8"))
        except (FileNotFoundError, json.JSONDecodeError):
            return {}

    # -------------------------------------------------------------- env.json, data.json
    def write_env(
        self,
        *,
        device: str,
        seed: int,
        threads: int,
        data_source: str,
        files: list[Path],
        torch_version: str,
        cuda: str | None = None,
        distributed: dict[str, Any] | None = None,
        threads_setting: int | str | None = None,
        openmp: dict[str, Any] | None = None,
    ) -> Path:
        """env.json. The torch facts come from the caller (the session has torch loaded), so this
        layer stays torch-free for `runs` and `compare`."""
        from mnistkit import __version__

        env = {
            "mnistkit": __version__,
            "python": platform.python_version(),
            "torch": torch_version,
            "platform": platform.platform(),
            "device": device,
            "cuda": cuda,
            "threads": threads,  # per process (auto: updated when the probe decides)
            "threads_setting": threads_setting,  # train.threads as given: a number or "auto"
            "threads_auto": [],  # auto's decisions: chosen, ms_per_step, load, epoch, why
            "openmp": openmp or {},  # the wait policy in effect, and who set it
            # world_size (processes), backend (gloo/nccl; null alone), hosts, batchnorm sync mode
            "distributed": distributed or {"world_size": 1, "backend": None, "hosts": [platform.node()]},
            "seed": seed,
            "git_commit": git_commit(Path(__file__).resolve().parent),
            "cwd_git_commit": git_commit(Path.cwd()),
            "data_source": data_source,
            "data_files": file_hashes(files),
        }
        atomic_write_text(self.env_path, json.dumps(env, indent=2) + "\n")
        return self.env_path

    def update_env(self, **fields: Any) -> None:
        """Change fields of env.json (train.threads: auto records its decisions as they come)."""
        env = json.loads(self.env_path.read_text(encoding="utf-8"))
        env.update(fields)
        atomic_write_text(self.env_path, json.dumps(env, indent=2) + "\n")

    def write_data_info(self, info: dict[str, Any]) -> Path:
        """data.json: how inputs were preprocessed in training (read by ``mnistkit predict``)."""
        atomic_write_text(self.data_path, json.dumps(info, indent=2) + "\n")
        return self.data_path

    def read_data_info(self) -> dict[str, Any] | None:
        try:
            return json.loads(self.data_path.read_text(encoding="utf-8"))
        except (FileNotFoundError, json.JSONDecodeError):
            return None

    def recorded_data_dir(self) -> Path | None:
        """The ``--data-dir`` recorded in the run's data.json, if any."""
        info = self.read_data_info() or {}
        return Path(info["data_dir"]) if info.get("data_dir") else None


def _csv_value(v: Any) -> Any:
    if isinstance(v, float):
        return repr(v)  # full precision: reproducibility tests compare files exactly
    return "" if v is None else v


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


def _installed(file: Path) -> bool:
    """A module from an installed distribution (site-packages), not a user's folder."""
    return any(part in ("site-packages", "dist-packages") for part in file.parts)
