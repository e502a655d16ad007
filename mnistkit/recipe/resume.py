"""What a resumed run may change, and what a hand-edited recipe.yaml changed (``--resume``).

A resumed run is the same run: its checkpoint holds the recipe it was trained with. Only the keys
in :data:`RESUMABLE` may differ on ``--resume`` (given with ``--set`` or edited in recipe.yaml);
any other difference is reported by :func:`edited_keys` and the checkpoint's value is kept.
"""

from __future__ import annotations

import copy
from typing import Any

#: Keys ``--set`` (or an edit of the run's recipe.yaml) may change on ``--resume``: they change
#: neither the model, nor the data, nor the optimization done so far.
RESUMABLE = (
    "epochs",
    "train.progress",
    "train.plots",
    "train.tensorboard",
    "train.track",  # trackers only read what the run writes
    "train.mlflow",
    "train.threads",
    "data.root",
    "expect",  # checked after training; changes nothing in it
)


def _flat(d: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(d, dict):
        return {prefix: d}
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}.{k}" if prefix else str(k)
        if isinstance(v, dict) and v:
            out.update(_flat(v, key))
        else:
            out[key] = v
    return out


def edited_keys(saved: dict[str, Any], current: dict[str, Any]) -> list[tuple[str, Any, Any]]:
    """(key, checkpoint's value, recipe.yaml's value) for every non-resumable key that differs.

    Both are resolved recipes (every default spelled out); a key missing on one side reads as
    None there. The run's name is not a training setting and is left out.
    """
    a, b = _flat(saved), _flat(current)
    out = []
    for key in sorted(set(a) | set(b), key=lambda k: (list(b).index(k) if k in b else len(b), k)):
        if key == "name" or key in RESUMABLE or any(key.startswith(r + ".") for r in RESUMABLE):
            continue
        if a.get(key) != b.get(key):
            out.append((key, a.get(key), b.get(key)))
    return out


def with_resumable(saved: dict[str, Any], current: dict[str, Any]) -> dict[str, Any]:
    """The checkpoint's recipe with the resumable keys taken from ``current``."""
    merged = copy.deepcopy(saved)
    for key in RESUMABLE:
        *parents, last = key.split(".")
        src: Any = current
        dst: Any = merged
        for p in parents:
            src = src.get(p, {}) if isinstance(src, dict) else {}
            dst = dst.setdefault(p, {})
        if isinstance(src, dict) and last in src:
            dst[last] = src[last]
    return merged
