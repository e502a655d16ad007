#!/usr/bin/env python
"""Per-epoch training time: 1 process x T threads against N processes x T/N threads (issue 12).

On one CPU machine the question is whether splitting each batch over N processes (gloo,
``mnistkit run --nproc N``) beats one process using the same cores as intra-op threads. Each
variant is a real ``mnistkit run`` of recipes/mlp5.yaml (on Fashion-MNIST) and recipes/cnn.yaml,
with the same global batch; the time per epoch is the ``seconds`` column of metrics.csv (rank
0's training time for the epoch, which includes waiting for the other ranks in each step's
all-reduce; evaluation and checkpoints are outside it). The variants run one after the other,
alternating, ``--reps`` times, and the median epoch time is reported.

    python bench/distributed_speed.py                           # full: 3 epochs, 3 reps, 60k images
    python bench/distributed_speed.py --limit 6000 --epochs 1 --reps 1   # small smoke setting
    python bench/distributed_speed.py --json /tmp/dist.json

Results and the machine they came from: docs/performance.md ("Several processes").
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "data" / "fashion-mnist"
MODELS = {"mlp5": REPO / "recipes" / "mlp5.yaml", "cnn": REPO / "recipes" / "cnn.yaml"}


def run_once(
    recipe: Path, nproc: int, threads: int, epochs: int, limit: int | None, data_dir: Path, out: Path
) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "mnistkit", "run", str(recipe), "--out", str(out), "--progress", "none"]
    cmd += ["--data-dir", str(data_dir), "--set", "data.dataset=fashion_mnist"]
    cmd += ["--set", f"epochs={epochs}", "--set", f"train.threads={threads}", "--set", "train.plots=false"]
    cmd += ["--set", "expect=null"]  # a shortened run is timed, not judged by the recipe's expect:
    if limit:
        cmd += ["--set", f"data.limit={limit}"]
    if nproc > 1:
        cmd += ["--nproc", str(nproc)]
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    env["OMP_NUM_THREADS"] = str(threads)
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"failed: {' '.join(cmd)}\n{proc.stdout}\n{proc.stderr}")
    with open(out / "metrics.csv", newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    return {
        "epoch_seconds": [float(r["seconds"]) for r in rows],
        "test_acc": [float(r["test_acc"]) for r in rows],
        "wall": wall,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-dir", type=Path, default=DEFAULT_DATA, help="folder with the Fashion-MNIST files")
    p.add_argument("--models", default="mlp5,cnn", help="comma-separated: mlp5, cnn")
    p.add_argument("--nproc", type=int, default=2, help="processes in the distributed variant")
    p.add_argument("--cores", type=int, default=2, help="threads of the 1-process variant (= cores used)")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--reps", type=int, default=3, help="runs of each variant, alternating")
    p.add_argument("--limit", type=int, default=None, help="train on the first N images only")
    p.add_argument("--json", help="also write the results to this file")
    args = p.parse_args()

    variants = [(1, args.cores), (args.nproc, max(1, args.cores // args.nproc))]
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="mnistkit-dist-bench-") as tmp:
        for model in args.models.split(","):
            times: dict[str, list[float]] = {}
            accs: dict[str, list[float]] = {}
            for rep in range(args.reps):
                order = variants if rep % 2 == 0 else variants[::-1]  # alternate who goes first
                for nproc, threads in order:
                    key = f"{nproc} proc x {threads} thread{'s' * (threads != 1)}"
                    out = Path(tmp) / f"{model}-{nproc}-{rep}"
                    res = run_once(MODELS[model], nproc, threads, args.epochs, args.limit, args.data_dir, out)
                    times.setdefault(key, []).extend(res["epoch_seconds"])
                    accs.setdefault(key, []).append(res["test_acc"][-1])
                    print(
                        f"{model:5} {key:18} rep {rep + 1}: epochs "
                        + ", ".join(f"{s:.2f}" for s in res["epoch_seconds"])
                        + f" s; final test acc {res['test_acc'][-1]:.2%}; wall {res['wall']:.1f} s",
                        flush=True,
                    )
            results[model] = {
                k: {"median_epoch_s": statistics.median(v), "epochs": v, "final_test_acc": accs[k]}
                for k, v in times.items()
            }
    print()
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f}")
    print(f"{'model':6} {'variant':20} {'median s/epoch':>15} {'vs 1 proc':>10}")
    for model, res in results.items():
        base = next(iter(res.values()))["median_epoch_s"]
        for key, r in res.items():
            print(f"{model:6} {key:20} {r['median_epoch_s']:15.2f} {base / r['median_epoch_s']:9.2f}x")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
