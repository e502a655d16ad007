"""Run directories as a list (``mnistkit runs``) and side by side (``mnistkit compare``).

Reads only what runs leave on disk (status.json, metrics.csv, recipe.yaml): no torch import, so
both commands answer instantly. metrics.csv is the source of truth for epochs done and the best
metric (status.json only gets them at the end, which a killed run never reaches).
"""

from __future__ import annotations

import datetime as dt
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mnistkit.errors import RunError
from mnistkit.recipe.metrics import COMPARE_COLUMNS, best_metric_name, higher_is_better
from mnistkit.runs import directory as rundir
from mnistkit.runs.directory import RunDir

STATUSES = ("finished", "interrupted", "failed", "running")


@dataclass
class RunInfo:
    path: Path
    name: str
    started: float | None
    epochs_done: int
    epochs_planned: int | None
    best_metric: str | None
    best: float | None
    best_epoch: int | None
    seconds: float | None  # training time (sum of epoch times), or wall time while running
    status: str  # finished / interrupted / failed / failed (killed) / running / unknown
    stop_reason: str | None
    resumable: bool  # last.pt exists and the run is not finished or running


def effective_status(status: dict[str, Any]) -> str:
    """The recorded status, except that a 'running' run whose process is gone was killed."""
    recorded = status.get("status")
    if recorded == "running":
        return "running" if rundir.run_process_alive(status.get("pid")) else "failed (killed)"
    if recorded in STATUSES:
        return str(recorded)
    return "unknown"


def best_metric_of(recipe: dict[str, Any], status: dict[str, Any]) -> str | None:
    """status.json's best metric; for a run killed before writing it, its recipe.yaml's."""
    if status.get("best_metric"):
        return str(status["best_metric"])
    has_val = float((recipe.get("data") or {}).get("val_split") or 0) > 0
    return best_metric_name(str((recipe.get("train") or {}).get("best_metric", "auto")), has_val)


def _read_recipe(path: Path) -> dict[str, Any]:
    try:
        return RunDir(path).read_recipe_dict()
    except (RunError, OSError, ValueError):
        return {}
    except Exception:  # yaml errors in a hand-edited file: show the run anyway
        return {}


def run_info(path: Path) -> RunInfo:
    run = RunDir(path)
    status = run.read_status()
    recipe = _read_recipe(path)
    try:
        rows = run.read_metrics()
    except (OSError, ValueError):
        rows = []
    metric = best_metric_of(recipe, status)
    best = best_epoch = None
    values = [(r[metric], r["epoch"]) for r in rows if metric and r.get(metric) is not None]
    if values:
        sign = -1.0 if metric and higher_is_better(metric) else 1.0
        # Among equal values the earliest epoch, as in the training loop (strict improvement).
        best, best_epoch = min(values, key=lambda v: (sign * v[0], v[1]))
    state = effective_status(status)
    seconds: float | None = sum(float(r.get("seconds") or 0) for r in rows) if rows else None
    if state == "running" and status.get("started"):
        seconds = time.time() - float(status["started"])
    planned = status.get("epochs", recipe.get("epochs"))
    return RunInfo(
        path=path,
        name=path.name,
        started=status.get("started"),
        epochs_done=len(rows),
        epochs_planned=int(planned) if planned is not None else None,
        best_metric=metric,
        best=best,
        best_epoch=best_epoch,
        seconds=seconds,
        status=state,
        stop_reason=status.get("stop_reason"),
        resumable=state not in ("finished", "running") and run.checkpoint_path("last").is_file(),
    )


def scan_runs(root: Path) -> list[RunInfo]:
    """Every run directory directly under ``root`` (or ``root`` itself), oldest first."""
    root = Path(root)
    if not root.exists():  # no run made yet: an empty list, not an error
        return []
    if not root.is_dir():
        raise RunError(f"{root}: not a folder")
    dirs = [root] if RunDir.looks_like(root) else sorted(p for p in root.iterdir() if RunDir.looks_like(p))
    infos = [run_info(d) for d in dirs]
    return sorted(infos, key=lambda i: (i.started or 0.0, i.name))


def format_started(ts: float | None) -> str:
    if not ts:
        return "-"
    return dt.datetime.fromtimestamp(float(ts)).strftime("%Y-%m-%d %H:%M")


def format_seconds(seconds: float | None) -> str:
    """One format for every duration in a column: ``m:ss`` (``0:04``, ``3:40``), ``h:mm:ss`` from an
    hour on; ``-`` when unknown."""
    if seconds is None:
        return "-"
    m, s = divmod(int(round(seconds)), 60)
    h, m = divmod(m, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


# ------------------------------------------------------------------------------ compare
def flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    """Nested dicts/lists as dotted keys: ``{'optimizer': {'lr': 0.1}}`` → ``optimizer.lr``.

    Lists of scalars stay one value (``model.hidden: [512, 256]``); lists holding mappings
    (layer lists) are indexed: ``model.layers[2].out_channels``.
    """
    out: dict[str, Any] = {}
    if isinstance(value, dict):
        if not value and prefix:
            out[prefix] = {}
        for k, v in value.items():
            out.update(flatten(v, f"{prefix}.{k}" if prefix else str(k)))
    elif isinstance(value, list) and any(isinstance(v, dict | list) for v in value):
        for i, v in enumerate(value):
            out.update(flatten(v, f"{prefix}[{i}]"))
        if not value:
            out[prefix] = []
    else:
        out[prefix] = value
    return out


_MISSING = object()


def recipe_diff(a: dict[str, Any], b: dict[str, Any]) -> list[tuple[str, Any, Any]]:
    """(key, value in a, value in b) for every dotted key whose values differ.

    Both sides are walked together, so only what differs is listed. Where one side has a whole
    section (a scheduler, a layer list, early stopping) and the other has none (null or not set),
    that is one row holding the section in short (:func:`compact`), not one row per default-valued
    key inside it. A key set on one side only shows :data:`MISSING_TEXT` on the other. ``name``
    is left out: run names differ by design.
    """
    out: list[tuple[str, Any, Any]] = []
    _walk({k: v for k, v in a.items() if k != "name"}, {k: v for k, v in b.items() if k != "name"}, "", out)
    return out


def _is_layer_list(v: Any) -> bool:
    return isinstance(v, list) and any(isinstance(x, dict | list) for x in v)


def _walk(a: Any, b: Any, prefix: str, out: list[tuple[str, Any, Any]]) -> None:
    if isinstance(a, dict) and isinstance(b, dict):
        for k in list(a) + [k for k in b if k not in a]:
            _walk(a.get(k, _MISSING), b.get(k, _MISSING), f"{prefix}.{k}" if prefix else str(k), out)
    elif _is_layer_list(a) and _is_layer_list(b) and len(a) == len(b):
        for i, (va, vb) in enumerate(zip(a, b, strict=True)):
            _walk(va, vb, f"{prefix}[{i}]", out)
    elif a != b:
        out.append((prefix, _shown(a), _shown(b)))


MISSING_TEXT = "(not set)"


def compact(v: Any) -> Any:
    """A section in one short line: ``{name: cosine, warmup_epochs: 0}`` → ``cosine (warmup_epochs 0)``;
    a layer list → ``12 layers: conv2d, batchnorm2d, ...``. Scalars and plain lists unchanged."""
    if isinstance(v, dict):
        rest = ", ".join(f"{k} {compact(x)}" for k, x in v.items() if k not in ("name", "type"))
        head = v.get("name", v.get("type"))
        if head is None:
            return rest or "{}"
        return f"{head} ({rest})" if rest else str(head)
    if _is_layer_list(v):
        kinds = [str(x.get("type", "?")) if isinstance(x, dict) else "?" for x in v]
        return f"{len(v)} layer{'s' * (len(v) != 1)}: " + ", ".join(kinds)
    return v


def _shown(v: Any) -> Any:
    return MISSING_TEXT if v is _MISSING else compact(v)


def metric_columns(rows_a: list[dict[str, Any]], rows_b: list[dict[str, Any]]) -> list[str]:
    """The metric columns either run has values for (val_* only with a validation split)."""
    cols = []
    for c in COMPARE_COLUMNS:
        if any(r.get(c) is not None for r in rows_a + rows_b):
            cols.append(c)
    return cols


def side_by_side(
    rows_a: list[dict[str, Any]], rows_b: list[dict[str, Any]]
) -> list[tuple[int, dict[str, Any] | None, dict[str, Any] | None]]:
    """(epoch, row of a, row of b) for every epoch either run has."""
    by_a = {int(r["epoch"]): r for r in rows_a if r.get("epoch") is not None}
    by_b = {int(r["epoch"]): r for r in rows_b if r.get("epoch") is not None}
    return [(e, by_a.get(e), by_b.get(e)) for e in sorted(set(by_a) | set(by_b))]
