"""How long `mnistkit report SWEEP_DIR` takes on a 24-trial sweep, and what the page weighs.

Runs a real sweep (the quick start's MLP on the bundled 8x8 digits: recipes/sweeps/quickstart.yaml
with 24 trials of up to 6 epochs, one thread each, the median pruner after 8 startup trials and
2 warm-up epochs so some trials complete and importances are drawn), then times the report in
fresh processes: once with the best trial's run report missing (it is written first), then
again with it there (the sweep page alone). Prints the seconds, the HTML size and the counts.

    python bench/report_sweep.py [--out DIR] [--trials 24]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SWEEP = """\
recipe: {recipe}
set:
  data.val_split: 0.2
  epochs: 6
  train.plots: false
  train.threads: 1
metric: val_acc
trials: {trials}
sampler: {{name: tpe, seed: 0, startup_trials: 3}}
pruner: {{name: median, warmup_epochs: 2, startup_trials: 8}}
params:
  optimizer.lr: {{float: [1.0e-4, 3.0e-2], log: true}}
  model.hidden: {{choice: [[128, 64], [64], [256, 128]]}}
  data.batch_size: {{int: [16, 64], step: 16}}
"""


def mnistkit(*args: str) -> float:
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "mnistkit", *args], check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=None, help="where the sweep goes (default: a temp dir)")
    ap.add_argument("--trials", type=int, default=24)
    args = ap.parse_args()
    root = args.out or Path(tempfile.mkdtemp(prefix="report-sweep-"))
    root.mkdir(parents=True, exist_ok=True)
    spec = root / "sweep.yaml"
    spec.write_text(SWEEP.format(recipe=REPO / "recipes" / "quickstart.yaml", trials=args.trials))
    folder = root / "sweep"
    sweep_s = mnistkit("sweep", str(spec), "--out", str(folder), "--progress", "none")
    summary = json.loads((folder / "summary.json").read_text())
    best = folder / summary["best"]["run_dir"] / "report.html"
    best.unlink(missing_ok=True)
    first = mnistkit("report", str(folder))
    again = mnistkit("report", str(folder))
    size = (folder / "report.html").stat().st_size
    print(f"sweep:   {summary['finished']} trials, states {summary['states']}, {sweep_s:.1f} s")
    print(f"report:  {first:.1f} s with the best trial's run report written first, {again:.1f} s without")
    best_size = best.stat().st_size
    print(f"size:    {size:,} bytes (report.html); the best trial's report.html {best_size:,} bytes")
    print(f"folder:  {folder}")


if __name__ == "__main__":
    main()
