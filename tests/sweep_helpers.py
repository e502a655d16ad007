"""Small sweeps for the tests: the quick start's MLP on a slice of the bundled digits."""

from __future__ import annotations

import csv
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

# One thread per trial: the tests share 2 cores with other work (see runner.default_threads).
FAST = "  data.val_split: 0.25\n  data.limit: 480\n  epochs: 2\n  train.plots: false\n  train.threads: 1\n"


def write_sweep(folder: Path, trials: int, *, pruner: str = "none", extra: str = "") -> Path:
    path = folder / "sweep.yaml"
    path.write_text(
        f"recipe: {REPO / 'recipes' / 'quickstart.yaml'}\n"
        f"set:\n{FAST}"
        "metric: val_acc\n"
        f"trials: {trials}\n"
        f"pruner: {pruner}\n"
        "sampler: {name: tpe, seed: 0, startup_trials: 2}\n"
        "heartbeat: {interval: 1, grace: 3}\n"
        f"{extra}"
        "params:\n"
        "  optimizer.lr: {float: [1.0e-3, 3.0e-2], log: true}\n"
        "  model.hidden: {choice: [[64], [32, 16]]}\n",
        encoding="utf-8",
    )
    return path


def read_trials(sweep_dir: Path) -> list[dict[str, str]]:
    with open(sweep_dir / "trials.csv", newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def finished(rows: list[dict[str, str]]) -> list[dict[str, str]]:
    """Rows the budget counts (a FAIL that was retried is counted by its retry)."""
    return [r for r in rows if r["state"] in ("COMPLETE", "PRUNED", "FAIL") and "retried" not in r["reason"]]
