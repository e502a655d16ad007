"""Groups of runs: one recipe trained with several seeds (``mnistkit run --seeds N``).

A group is a folder holding ``group.json`` = ``{"kind": "seeds", "name": ..., "recipe": ...,
"members": ["seed-0", "seed-1", ...]}``, each member an ordinary run directory inside the
folder. ``compare`` reads groups from here (torch-free).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mnistkit.errors import RunError
from mnistkit.runs.directory import RunDir

GROUP_FILE = "group.json"


@dataclass
class Group:
    path: Path
    name: str
    kind: str
    recipe: Any
    members: list[RunDir]


def is_group(path: Path) -> bool:
    return (Path(path) / GROUP_FILE).is_file()


def open_group(path: Path) -> Group:
    """The group in ``path`` (its group.json checked, every member a run directory)."""
    path = Path(path)
    file = path / GROUP_FILE
    try:
        info = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise RunError(f"{file}: not readable as a group ({exc})") from None
    members = info.get("members") if isinstance(info, dict) else None
    if not isinstance(members, list) or not all(isinstance(m, str) for m in members):
        raise RunError(f'{file}: "members" must be a list of run folder names inside {path}')
    return Group(
        path=path,
        name=str(info.get("name") or path.name),
        kind=str(info.get("kind", "")),
        recipe=info.get("recipe"),
        members=[RunDir.open(path / m, f"{file}: member") for m in members],
    )
