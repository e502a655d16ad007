"""How long `mnistkit sweep status DIR` takes, read-only against `--refresh` (which rewrites
trials.csv, best.yaml, summary.json and the plots, as every status did before issue 19).

    python bench/sweep_status.py runs/sweeps/quickstart [--repeat 5] [--before /path/to/old/checkout]

The variants alternate in one run (each a fresh process, as a user runs it); prints the median
wall time of each and the load average. ``--before`` adds `sweep status` of another checkout
(its code first on PYTHONPATH), e.g. the commit before the change.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def timed(args: list[str], src: Path) -> float:
    env = dict(os.environ, PYTHONPATH=str(src), COLUMNS="80")
    t0 = time.perf_counter()
    # cwd=src: `python -m` puts the current folder first on sys.path, before PYTHONPATH.
    cmd = [sys.executable, "-m", "mnistkit", *args]
    subprocess.run(cmd, env=env, cwd=src, check=True, capture_output=True)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("folder", type=Path)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--before", type=Path, help="another checkout whose `sweep status` to time too")
    a = ap.parse_args()
    a.folder = a.folder.resolve()
    variants = {
        "status (read-only)": (["sweep", "status", str(a.folder)], REPO),
        "status --refresh": (["sweep", "status", str(a.folder), "--refresh"], REPO),
    }
    if a.before:
        variants["status, --before checkout"] = (["sweep", "status", str(a.folder)], a.before)
    times: dict[str, list[float]] = {k: [] for k in variants}
    for _ in range(a.repeat):
        for name, (args, src) in variants.items():
            times[name].append(timed(args, src))
    print(f"{a.repeat} runs each, alternated; load average {os.getloadavg()[0]:.2f} ({os.cpu_count()} cores)")
    for name, ts in times.items():
        print(f"  {name:<28} median {statistics.median(ts):6.2f} s  (min {min(ts):.2f}, max {max(ts):.2f})")


if __name__ == "__main__":
    main()
