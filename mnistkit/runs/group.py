"""A group of runs: one recipe trained with several seeds (``mnistkit run --seeds N``).

runs/<name>-seeds-<YYYYmmdd-HHMMSS>/
    group.json     {"kind": "seeds", "name", "recipe" (the path as given), "members": ["seed-0",
                   ...], "seeds": [0, ...], "started", "recipe_resolved", "data_dir", "command"}
    summary.json   mean, sample standard deviation (ddof=1), min and max of every final and best
                   metric and of the epoch time, over the members that finished
    seed-0/        an ordinary run directory (recipe.yaml with seed: 0, metrics.csv, ...)
    seed-1/ ...

Torch-free, like the rest of :mod:`mnistkit.runs`: ``runs`` reads groups without loading torch.
The statistics use the standard library's :mod:`statistics` (``stdev`` is the sample standard
deviation; it needs two values, so a group with one finished member has no spread: null).
"""

from __future__ import annotations

import json
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mnistkit.errors import RunError
from mnistkit.fsutil import atomic_write_text
from mnistkit.recipe.metrics import COMPARE_COLUMNS, higher_is_better
from mnistkit.runs.directory import RunDir
from mnistkit.runs.listing import RunInfo, run_info

GROUP_FILE = "group.json"
SUMMARY_FILE = "summary.json"
KIND = "seeds"
#: Said in summary.json (and under the table) so no one has to guess which deviation it is.
STD_NOTE = "std: sample standard deviation (n-1); none with fewer than 2 finished runs"
#: Metrics summarized (final and best value of each); lr is a setting, not a result.
SUMMARIZED = tuple(c for c in COMPARE_COLUMNS if c != "lr")
EPOCH_SECONDS = "epoch_seconds"


def member_name(seed: int) -> str:
    return f"seed-{seed}"


def is_group(path: Path) -> bool:
    return (Path(path) / GROUP_FILE).is_file()


@dataclass
class Group:
    """A group opened for reading its runs (``compare``)."""

    path: Path
    name: str
    recipe: Any
    members: list[RunDir]


def open_group(path: Path) -> Group:
    """The group in ``path``: its group.json checked (:func:`read_group`), every member a run
    directory."""
    path = Path(path)
    group = read_group(path)
    members = group["members"]
    if not all(isinstance(m, str) for m in members):
        raise RunError(f'{path / GROUP_FILE}: "members" must be a list of run folder names inside {path}')
    return Group(
        path=path,
        name=str(group.get("name") or path.name),
        recipe=group.get("recipe"),
        members=[RunDir.open(path / m, f"{path / GROUP_FILE}: member") for m in members],
    )


def write_group(path: Path, group: dict[str, Any]) -> None:
    atomic_write_text(Path(path) / GROUP_FILE, json.dumps(group, indent=2) + "\n")


def read_group(path: Path, what: str = "") -> dict[str, Any]:
    """group.json of a group folder, or a RunError saying why ``path`` is not one."""
    prefix = f"{what} " if what else ""
    file = Path(path) / GROUP_FILE
    try:
        group = json.loads(file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise RunError(f"{prefix}{path}: not a group of runs (no {GROUP_FILE})") from None
    except (OSError, json.JSONDecodeError) as exc:
        raise RunError(f"{prefix}{file}: unreadable ({exc})") from None
    if not isinstance(group, dict) or group.get("kind") != KIND or not isinstance(group.get("members"), list):
        raise RunError(f"{prefix}{file}: not a group written by mnistkit run --seeds")
    return group


# ------------------------------------------------------------------------------ summary
def stats(values: list[float]) -> dict[str, Any]:
    """n, mean, std (sample, ddof=1; None below 2 values), min, max."""
    return {
        "n": len(values),
        "mean": statistics.fmean(values) if values else None,
        "std": statistics.stdev(values) if len(values) >= 2 else None,
        "min": min(values) if values else None,
        "max": max(values) if values else None,
    }


def member_results(run: Path) -> dict[str, float]:
    """A run's final and best value of every metric it has, and its mean epoch time."""
    rows = RunDir(run).read_metrics()
    out: dict[str, float] = {}
    if not rows:
        return out
    for col in SUMMARIZED:
        values = [float(r[col]) for r in rows if r.get(col) is not None]
        if not values or rows[-1].get(col) is None:
            continue
        out[f"final_{col}"] = float(rows[-1][col])
        out[f"best_{col}"] = max(values) if higher_is_better(col) else min(values)
    seconds = [float(r["seconds"]) for r in rows if r.get("seconds") is not None]
    if seconds:
        out[EPOCH_SECONDS] = statistics.fmean(seconds)
    return out


def summarize(path: Path) -> dict[str, Any]:
    """summary.json's content: the statistics over the members that finished, and which did not."""
    group = read_group(path)
    finished: list[str] = []
    others: dict[str, str] = {}
    results: dict[str, dict[str, float]] = {}
    best_metric = None
    for member in group["members"]:
        info = member_info(path, member)
        if info.status != "finished":
            others[member] = info.status
            continue
        finished.append(member)
        results[member] = member_results(path / member)
        best_metric = best_metric or info.best_metric
    keys = [k for k in _ordered_keys(results) if all(k in r for r in results.values())]
    return {
        "kind": KIND,
        "name": group.get("name"),
        "best_metric": best_metric,
        "std": STD_NOTE,
        "finished": finished,
        "not_finished": others,
        "metrics": {
            k: {**stats([results[m][k] for m in finished]), "values": {m: results[m][k] for m in finished}}
            for k in keys
        },
    }


def _ordered_keys(results: dict[str, dict[str, float]]) -> list[str]:
    keys: list[str] = []
    for r in results.values():
        keys += [k for k in r if k not in keys]
    order = [f"{kind}_{c}" for c in SUMMARIZED for kind in ("final", "best")] + [EPOCH_SECONDS]
    return sorted(keys, key=order.index)


def write_summary(path: Path) -> dict[str, Any]:
    summary = summarize(path)
    atomic_write_text(Path(path) / SUMMARY_FILE, json.dumps(summary, indent=2) + "\n")
    return summary


# ------------------------------------------------------------------------------ listing
NOT_STARTED = "not started"


def member_info(path: Path, member: str) -> RunInfo:
    """The member's RunInfo; a member with no run directory yet is 'not started'."""
    run = Path(path) / member
    if RunDir.looks_like(run):
        return run_info(run)
    return RunInfo(run, member, None, 0, None, None, None, None, None, NOT_STARTED, None, False)


@dataclass
class GroupInfo:
    path: Path
    name: str
    started: float | None
    members: list[RunInfo]
    status: str  # finished | running | interrupted (some to do) | failed (some failed, none to do)
    best_metric: str | None
    best: dict[str, Any]  # stats() of the members' best values (finished members)
    seconds: float | None  # training time of all members together

    @property
    def finished(self) -> int:
        return sum(m.status == "finished" for m in self.members)


def group_status(members: list[RunInfo]) -> str:
    states = [m.status for m in members]
    if "running" in states:
        return "running"
    if all(s == "finished" for s in states):
        return "finished"
    if all(s in ("finished", "failed") for s in states):
        return "failed"  # nothing left to run; the failed members' errors are in their status.json
    return "interrupted"


def group_info(path: Path) -> GroupInfo:
    group = read_group(path)
    members = [member_info(path, m) for m in group["members"]]
    done = [m for m in members if m.status == "finished" and m.best is not None]
    metrics = {m.best_metric for m in done}
    metric = next(iter(metrics)) if len(metrics) == 1 else None
    times = [m.seconds for m in members if m.seconds is not None]
    return GroupInfo(
        path=Path(path),
        name=Path(path).name,
        started=group.get("started"),
        members=members,
        status=group_status(members),
        best_metric=metric,
        best=stats([float(m.best) for m in done if m.best is not None]) if metric else stats([]),
        seconds=sum(times) if times else None,
    )


def scan_groups(root: Path) -> list[GroupInfo]:
    """Every group folder directly under ``root``, oldest first."""
    root = Path(root)
    if not root.is_dir():
        return []
    groups = []
    for p in sorted(root.iterdir()):
        if not is_group(p):
            continue
        try:
            groups.append(group_info(p))
        except RunError:
            continue  # an unreadable group.json: not listed (it is no group mnistkit wrote)
    return sorted(groups, key=lambda g: (g.started or 0.0, g.name))
