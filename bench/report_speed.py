#!/usr/bin/env python
"""``mnistkit report RUN_DIR``: how long it takes and what the HTML weighs.

Trains the tutorial's MLP (recipes/mlp5.yaml) on Fashion-MNIST (``--epochs``, default 10 as the
recipe says; the report's time hardly depends on it: one curve point per epoch), then runs the
whole command ``python -m mnistkit report RUN_DIR`` ``--repeat`` times as a user would (a fresh
process each: imports included), and prints the wall times (median, min), the time the command
itself reports for building the page, and the HTML's size. ``--run RUN_DIR`` times an existing
run instead of training one.

    python bench/report_speed.py --data-dir ../shared/data/fashion-mnist
    python bench/report_speed.py --run runs/mlp5-20261203-101500 --repeat 5

Results: docs/report.md.
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def child_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    return env


def mnistkit(*args: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "mnistkit", *args]
    res = subprocess.run(cmd, cwd=REPO, env=child_env(), capture_output=True, text=True, check=False)
    if res.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed ({res.returncode}):\n{res.stdout}\n{res.stderr}")
    return res


def train(tmp: Path, data_dir: Path, epochs: int) -> Path:
    run = tmp / "run"
    t0 = time.perf_counter()
    mnistkit(
        "run", "recipes/mlp5.yaml", "--set", "data.dataset=fashion_mnist", "--set", f"epochs={epochs}",
        "--set", "expect=null", "--data-dir", str(data_dir), "--out", str(run), "--progress", "none",
    )  # fmt: skip
    print(f"trained mlp5 on Fashion-MNIST, {epochs} epochs, in {time.perf_counter() - t0:.0f} s")
    return run


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-dir", type=Path, help="the Fashion-MNIST folder (the *-ubyte.gz files)")
    ap.add_argument("--run", type=Path, help="time the report of this run instead of training one")
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    if args.run is None and args.data_dir is None:
        ap.error("give --data-dir (Fashion-MNIST) or --run RUN_DIR")
    with tempfile.TemporaryDirectory() as tmp:
        run = args.run or train(Path(tmp), args.data_dir, args.epochs)
        walls, inner = [], []
        for _ in range(args.repeat):
            t0 = time.perf_counter()
            res = mnistkit("report", str(run), "-o", str(Path(tmp) / "report.html"))
            walls.append(time.perf_counter() - t0)
            found = re.search(r"written in ([\d.]+) s", res.stdout)
            inner.append(float(found.group(1)) if found else float("nan"))
        size = (Path(tmp) / "report.html").stat().st_size
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, load {os.getloadavg()[0]:.1f}")
    print(
        f"report of {run.name}: wall {statistics.median(walls):.2f} s median, {min(walls):.2f} s min "
        f"(python -m mnistkit report, {args.repeat} runs; imports included)"
    )
    print(f"page built and written in {statistics.median(inner):.2f} s median (what the command says)")
    print(f"HTML: {size:,} bytes ({size / 1e6:.2f} MB)")


if __name__ == "__main__":
    main()
