#!/usr/bin/env python
"""Does ``train.threads: auto`` keep near-best speed when other processes compete for the CPU?

mlp5 (recipes/mlp5.yaml on Fashion-MNIST, the first 12,000 training samples, as issue 18
measured it) and cnn (recipes/cnn.yaml, the same 12,000 samples) are trained with
``train.threads`` = 1, 2 and auto, each as its own ``mnistkit run`` process (the CLI: its OpenMP
wait policy applies), while 0, 1 and 2 CPU-bound processes that this script starts compete for
the cores. Variant "2-spin" (only with --variants) is 2 threads with libgomp's own spin-waiting
(GOMP_SPINCOUNT=300000, its default when OMP_WAIT_POLICY is unset), i.e. mnistkit's default
before issue 18: on a busy machine it can take minutes per epoch.

Within each condition the variants alternate (the order rotates every round), so a change of
the machine's other load lands on all of them. Per model, condition and variant it prints the
median seconds per epoch over all epochs of all rounds (auto's probe runs in its first epoch
and is included), the median first epoch, what auto chose, and the 1-minute load average when
the condition started and ended. Goals (issue 18): auto within 10 % of the best fixed setting in
every condition; with no competitor, within 3 % of 2 threads.

    python bench/contention.py                        # 2 rounds, 3 epochs (~15-30 min)
    python bench/contention.py --rounds 1 --epochs 2 --models mlp5 --competitors 0,1
    python bench/contention.py --models mlp5 --variants 2,2-spin,auto   # the old default too

The competitors are bounded in time (they exit by themselves after --competitor-limit seconds)
and killed when their condition ends, or when this script stops for any reason.

Results and the machine they came from: docs/performance.md.
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
VARIANTS = ("1", "2", "auto", "2-spin")
DEFAULT_VARIANTS = "1,2,auto"  # 2-spin on a busy machine can take minutes per epoch: on request
GOAL_BEST, GOAL_QUIET = 0.10, 0.03
BUSY_LOOP = "import time\nend = time.monotonic() + {limit}\nwhile time.monotonic() < end:\n    pass\n"


def start_competitors(n: int, limit: float) -> list[subprocess.Popen[bytes]]:
    return [subprocess.Popen([sys.executable, "-c", BUSY_LOOP.format(limit=limit)]) for _ in range(n)]


def stop(procs: list[subprocess.Popen[bytes]]) -> None:
    for p in procs:
        if p.poll() is None:
            p.kill()
    for p in procs:
        p.wait(timeout=30)


def run_one(model: str, variant: str, args: argparse.Namespace, out: Path) -> dict[str, Any]:
    """One `mnistkit run` process; its epochs' training seconds and auto's decisions."""
    threads = "2" if variant == "2-spin" else variant
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OMP_", "KMP_", "GOMP_", "MNISTKIT_"))}
    if variant == "2-spin":
        env["GOMP_SPINCOUNT"] = "300000"
    cmd = [
        sys.executable, "-m", "mnistkit", "run", str(REPO / "recipes" / f"{model}.yaml"),
        "--data-dir", str(args.data_dir), "--out", str(out), "--progress", "none",
        "--set", "data.dataset=fashion_mnist", "--set", f"data.limit={args.limit}",
        "--set", f"data.test_limit={args.test_limit}", "--set", f"epochs={args.epochs}",
        "--set", f"train.threads={threads}", "--set", "train.plots=false",
        "--set", "train.checkpoint=false", "--set", "train.device=cpu",
        "--set", "expect=null",  # a shortened run is timed, not judged by the recipe's expect:
    ]  # fmt: skip
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=1800)
    if proc.returncode != 0:
        raise SystemExit(f"{model} threads={variant} failed:\n{proc.stdout}\n{proc.stderr}")
    with open(out / "metrics.csv", newline="", encoding="utf-8") as fh:
        seconds = [float(r["seconds"]) for r in csv.DictReader(fh)]
    env_json = json.loads((out / "env.json").read_text(encoding="utf-8"))
    return {"seconds": seconds, "auto": env_json.get("threads_auto", [])}


def load1() -> float:
    return os.getloadavg()[0]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data-dir", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--models", default="mlp5,cnn")
    ap.add_argument("--competitors", default="0,1,2")
    ap.add_argument("--variants", default=DEFAULT_VARIANTS, help=f"of {', '.join(VARIANTS)}")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--limit", type=int, default=12000)
    ap.add_argument("--test-limit", type=int, default=2000, help="eval is outside the timed epoch")
    ap.add_argument("--competitor-limit", type=float, default=1800.0, help="seconds a competitor lives")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    models = args.models.split(",")
    variants = args.variants.split(",")
    conditions = [int(c) for c in args.competitors.split(",")]

    print(
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores "
        f"(affinity {len(os.sched_getaffinity(0))}); python {platform.python_version()}; "
        f"load average at start {' '.join(f'{x:.2f}' for x in os.getloadavg())}"
    )
    print(
        f"{', '.join(models)} on {args.limit:,} Fashion-MNIST samples, {args.epochs} epochs x "
        f"{args.rounds} rounds per variant, variants alternated: {', '.join(variants)}\n",
        flush=True,
    )
    results: dict[str, Any] = {}
    procs: list[subprocess.Popen[bytes]] = []
    with tempfile.TemporaryDirectory(prefix="contention-") as tmp:
        try:
            for n in conditions:
                procs = start_competitors(n, args.competitor_limit)
                time.sleep(2.0 if n else 0.0)  # let them take their cores
                cond: dict[str, Any] = {"load_start": load1(), "runs": {}}
                for r in range(args.rounds):
                    order = variants[r % len(variants) :] + variants[: r % len(variants)]
                    for variant in order:
                        for model in models:
                            out = Path(tmp) / f"{n}-{model}-{variant}-{r}"
                            res = run_one(model, variant, args, out)
                            cond["runs"].setdefault(model, {}).setdefault(variant, []).append(res)
                            print(
                                f"  competitors {n}  round {r + 1}  {model:5s} threads {variant:6s} "
                                f"epochs {' '.join(f'{s:.2f}' for s in res['seconds'])} s"
                                + "".join(
                                    f"  [auto: {d['chosen']} {d['ms_per_step']} load {d['load']}]"
                                    for d in res["auto"]
                                ),
                                flush=True,
                            )
                cond["load_end"] = load1()
                stop(procs)
                procs = []
                results[str(n)] = cond
        finally:
            stop(procs)
    report(results, models, variants)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")


def report(results: dict[str, Any], models: list[str], variants: list[str]) -> None:
    print("\nmedian s/epoch (all epochs; first epoch in brackets) and goal checks")
    head = f"{'model':6s} {'compet.':>7s} {'load':>11s} " + "".join(f"{v:>16s}" for v in variants)
    print(head + "  auto chose      auto/best  auto/2")
    failures = []
    for model in models:
        for n, cond in results.items():
            runs = cond["runs"][model]
            med = {v: statistics.median(s for r in runs[v] for s in r["seconds"]) for v in runs}
            first = {v: statistics.median(r["seconds"][0] for r in runs[v]) for v in runs}
            cells = "".join(f"{med[v]:>8.2f} [{first[v]:5.2f}]" for v in variants)
            chose = sorted({d["chosen"] for r in runs.get("auto", []) for d in r["auto"]})
            line = f"{model:6s} {n:>7s} {cond['load_start']:5.1f}→{cond['load_end']:<5.1f} {cells}"
            if "auto" in med:
                fixed = [med[v] for v in ("1", "2") if v in med]
                vs_best = med["auto"] / min(fixed)
                vs_two = med["auto"] / med["2"] if "2" in med else float("nan")
                ok = vs_best <= 1 + GOAL_BEST and (n != "0" or vs_two <= 1 + GOAL_QUIET)
                line += f"  {str(chose):14s} {vs_best:8.3f} {vs_two:7.3f}  {'ok' if ok else 'MISSED'}"
                if not ok:
                    failures.append(f"{model} with {n} competitor(s)")
            print(line)
    print(
        f"\ngoals: auto ≤ {1 + GOAL_BEST:.2f}x the best of threads 1 and 2 in every condition; "
        f"with 0 competitors also ≤ {1 + GOAL_QUIET:.2f}x threads 2"
    )
    print("all goals met" if not failures else "missed: " + "; ".join(failures))


if __name__ == "__main__":
    main()
