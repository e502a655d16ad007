#!/usr/bin/env python
"""What does MLflow tracking cost per epoch? mlp5 on Fashion-MNIST, tracking off / embedded
SQLite store / a local `mlflow server`, alternated in one process (issue 20).

Each round trains the recipe once per mode, the order rotated every round, so machine noise
(other jobs on the cores) lands on every mode alike. The data is loaded once and shared
(mnistkit.data.loading.SharedData). For each mode it reports:

* the median epoch time (metrics.csv ``seconds``: training + evaluation of one epoch);
* the median time the MLflow tracker spends per epoch (its ``log_epochs`` call after each
  checkpoint: the cost the training loop waits for), and that as a % of the median epoch time
  with tracking off (goal: <= 2 %);
* the per-run fixed cost: opening the MLflow run (params, tags, dataset) and closing it
  (summary metrics, artifacts: recipe, metrics, env, plots, status).

The load average is printed before and after: figures from a busy machine say so.

    python bench/tracking_overhead.py --data-dir /work/shared/data/fashion-mnist
    python bench/tracking_overhead.py --rounds 1 --epochs 1 --limit 5000    # a smoke run

Results: docs/performance.md ("Tracking overhead").
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "data" / "fashion-mnist"
MODES = ("off", "embedded", "server")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(base: Path) -> tuple[subprocess.Popen, str]:
    """A local `mlflow server` (SQLite backend, no job runner) on a free loopback port."""
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
         "--workers", "1", "--backend-store-uri", f"sqlite:///{base / 'server.db'}",
         "--artifacts-destination", str(base / "server-artifacts")],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=base, start_new_session=True,
        env={**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"},
    )  # fmt: skip
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return proc, f"http://127.0.0.1:{port}"
        except OSError:
            time.sleep(0.5)
    os.killpg(proc.pid, signal.SIGKILL)
    raise SystemExit("mlflow server did not start in 300 s")


class Timer:
    """Wraps MlflowTracker's methods to time them (the bench's instrument, not a change)."""

    def __init__(self) -> None:
        from mnistkit.tracking import trackers

        self.per_epoch: list[float] = []
        self.fixed = 0.0
        cls = trackers.MlflowTracker
        for name, fixed in (("__init__", True), ("log_epochs", False), ("close", True)):
            setattr(cls, name, self._timed(getattr(cls, name), fixed))

    def _timed(self, fn: Any, fixed: bool) -> Any:
        def timed(*args: Any, **kwargs: Any) -> Any:
            t0 = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                dt = time.perf_counter() - t0
                if fixed:
                    self.fixed += dt
                else:
                    self.per_epoch.append(dt)

        return timed

    def take(self) -> tuple[list[float], float]:
        out = (self.per_epoch, self.fixed)
        self.per_epoch, self.fixed = [], 0.0
        return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-dir", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--limit", type=int, default=None, help="training examples (default: all 60,000)")
    args = ap.parse_args()

    from mnistkit.data.loading import SharedData
    from mnistkit.recipe.schema import load_recipe
    from mnistkit.session import RunOptions, run

    base = Path(tempfile.mkdtemp(prefix="tracking-bench-"))
    os.chdir(base)  # the embedded store's mlflow.db and mlruns/ go here
    server, server_uri = start_server(base)
    uris = {"embedded": f"sqlite:///{base / 'embedded.db'}", "server": server_uri}
    timer = Timer()
    shared = SharedData()
    epoch_s: dict[str, list[float]] = {m: [] for m in MODES}
    track_s: dict[str, list[float]] = {m: [] for m in MODES}
    fixed_s: dict[str, list[float]] = {m: [] for m in MODES}
    print(f"load average before: {os.getloadavg()}", flush=True)
    try:
        for r in range(args.rounds):
            order = MODES[r % 3 :] + MODES[: r % 3]
            for mode in order:
                sets = ["data.dataset=fashion_mnist", f"epochs={args.epochs}", "train.progress=none"]
                sets += [f"data.limit={args.limit}"] if args.limit else []
                sets += ["train.track=[mlflow]"] if mode != "off" else []
                if mode != "off":
                    os.environ["MLFLOW_TRACKING_URI"] = uris[mode]
                recipe = load_recipe(REPO / "recipes" / "mlp5.yaml", sets)
                opts = RunOptions(
                    data_dir=args.data_dir, out=base / f"{mode}-{r}", shared_data=shared, progress="none"
                )
                result = run(recipe, opts)
                os.environ.pop("MLFLOW_TRACKING_URI", None)
                per_epoch, fixed = timer.take()
                epoch_s[mode] += [row["seconds"] for row in result.rows]
                track_s[mode] += per_epoch
                fixed_s[mode].append(fixed)
                print(f"round {r + 1} {mode:8s} epochs {[round(x['seconds'], 2) for x in result.rows]}"
                      f" tracker/epoch {[round(t * 1000, 1) for t in per_epoch]} ms", flush=True)  # fmt: skip
    finally:
        os.killpg(server.pid, signal.SIGKILL)
        server.wait()
    print(f"load average after: {os.getloadavg()}")
    off = statistics.median(epoch_s["off"])
    print(f"\nmlp5, Fashion-MNIST, {args.rounds} rounds x {args.epochs} epochs per mode")
    print(f"{'mode':10s} {'epoch s':>8s} {'tracker ms/epoch':>17s} {'% of epoch':>11s} {'open+close s':>13s}")
    for mode in MODES:
        med_epoch = statistics.median(epoch_s[mode])
        if mode == "off":
            print(f"{mode:10s} {med_epoch:8.3f} {'-':>17s} {'-':>11s} {'-':>13s}")
            continue
        per = statistics.median(track_s[mode])
        fixed = statistics.median(fixed_s[mode])
        print(f"{mode:10s} {med_epoch:8.3f} {per * 1000:17.1f} {100 * per / off:10.2f}% {fixed:13.2f}")


if __name__ == "__main__":
    main()
