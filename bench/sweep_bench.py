"""Sweep benchmark: what pruning saves, what the best trial is worth, what a trial costs.

1. Pruning: the Fashion-MNIST MLP sweep (recipes/sweeps/fashion-mlp.yaml) with the median pruner
   and with none, same sampler seed and budget: epochs run (pruned / unpruned) and best val_acc.
2. Best found: the pruned sweep's best.yaml rerun with `mnistkit run` on the full training set
   (data.val_split=0, the same 10 epochs as mlp5), against recipes/mlp5.yaml on Fashion-MNIST
   run on the same machine (README: ~87.6 % test accuracy).
3. Overhead: a sweep of N identical trials (one fixed parameter value) against N `mnistkit run`
   of the same recipe, wall clock per trial.

Full run (the figures in docs/performance.md; about 1-2 h on 2 CPU cores):

    python bench/sweep_bench.py --data-dir ../shared/data/fashion-mnist --out /tmp/sweep-bench

Quick check that the benchmark works (digits, seconds):

    python bench/sweep_bench.py --tiny --out /tmp/sweep-bench-tiny
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]
SWEEP = REPO / "recipes" / "sweeps" / "fashion-mlp.yaml"


def mnistkit(*args: str | Path, env: dict[str, str] | None = None) -> tuple[float, str]:
    """Run the CLI; return (wall seconds, stdout). Fails loudly."""
    t0 = time.perf_counter()
    res = subprocess.run(
        [sys.executable, "-m", "mnistkit", *map(str, args)],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO), **(env or {})},
    )
    wall = time.perf_counter() - t0
    if res.returncode != 0:
        raise SystemExit(
            f"mnistkit {' '.join(map(str, args))} failed ({res.returncode}):\n{res.stderr[-3000:]}"
        )
    return wall, res.stdout


def sweep_file(folder: Path, name: str, base: dict[str, Any], **changes: Any) -> Path:
    doc = {**base, **changes, "recipe": str((SWEEP.parent / base["recipe"]).resolve()), "study": name}
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def metrics(run_dir: Path) -> list[dict[str, str]]:
    with open(run_dir / "metrics.csv", newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def final_test_acc(run_dir: Path) -> float:
    return float(metrics(run_dir)[-1]["test_acc"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-dir", type=Path, help="Fashion-MNIST files (not needed with --tiny)")
    ap.add_argument("--out", type=Path, required=True, help="a new folder for the sweeps and runs")
    ap.add_argument("--trials", type=int, default=24, help="budget of each pruning sweep (>= 20)")
    ap.add_argument("--overhead-trials", type=int, default=5)
    ap.add_argument(
        "--threads",
        type=int,
        default=None,
        help="train.threads for every trial and run (default: the recipe's)",
    )
    ap.add_argument(
        "--tiny", action="store_true", help="digits, 2 epochs, 4 trials: checks the benchmark runs"
    )
    ap.add_argument(
        "--unpruned-from",
        type=Path,
        help="the unpruned/ folder of an earlier run of this benchmark with the same sweep file "
        "and pruner-independent settings: reused instead of running the unpruned sweep again",
    )
    args = ap.parse_args()
    if args.out.exists():
        raise SystemExit(f"--out {args.out} exists; give a new folder")
    args.out.mkdir(parents=True)

    base = yaml.safe_load(SWEEP.read_text())
    data_args: list[str | Path] = ["--data-dir", args.data_dir] if args.data_dir else []
    baseline_recipe: list[str | Path] = [
        REPO / "recipes" / "mlp5.yaml",
        "--set",
        "data.dataset=fashion_mnist",
    ]
    if args.tiny:
        base["recipe"] = "../quickstart.yaml"
        base["set"] = {"data.val_split": 0.2, "epochs": 3, "train.plots": False}
        base["params"] = {
            "optimizer.lr": {"float": [1e-4, 3e-2], "log": True},
            "model.hidden": {"choice": [[128, 64], [32]]},
        }
        base["pruner"] = {"name": "median", "warmup_epochs": 1, "startup_trials": 2}
        args.trials = 4
        # a shortened quickstart: compared with the sweep's best, not judged by its expect:
        baseline_recipe = [REPO / "recipes" / "quickstart.yaml", "--set", "epochs=3", "--set", "expect=null"]
        data_args = []
    if args.threads is not None:  # e.g. 1, to share the cores with another job
        base["set"] = {**base.get("set", {}), "train.threads": args.threads}
        baseline_recipe += ["--set", f"train.threads={args.threads}"]
    results: dict[str, Any] = {
        "threads": args.threads,
        "machine": f"{os.cpu_count()} CPUs, {sys.platform}",
        "trials": args.trials,
    }

    # 1. pruning -----------------------------------------------------------------------------
    for label, pruner in (("pruned", base["pruner"]), ("unpruned", {"name": "none"})):
        path = sweep_file(args.out, f"bench-{label}", base, trials=args.trials, pruner=pruner, timeout=None)
        if label == "unpruned" and args.unpruned_from is not None:
            # Without a pruner a trial's parameters and result do not depend on the pruner
            # settings, so an earlier unpruned sweep of the same file is the same sweep.
            earlier = args.unpruned_from.parent / "bench-unpruned.yaml"
            if yaml.safe_load(earlier.read_text()) != yaml.safe_load(path.read_text()):
                raise SystemExit(f"--unpruned-from: {earlier} is not the sweep this run would make")
            shutil.copytree(args.unpruned_from, args.out / label)
            earlier_results = args.unpruned_from.parent / "results.json"  # absent if it was stopped
            wall = (
                json.loads(earlier_results.read_text())[label]["wall_s"] if earlier_results.exists() else None
            )
            results["unpruned_from"] = str(args.unpruned_from)
        else:
            wall, _ = mnistkit("sweep", path, "--out", args.out / label, "--progress", "none", *data_args)
        summary = json.loads((args.out / label / "summary.json").read_text())
        results[label] = {
            "wall_s": None if wall is None else round(wall, 1),
            "epochs_run": summary["epochs_run"],
            "epochs_unpruned": summary["epochs_unpruned"],
            "states": summary["states"],
            "best_val_acc": summary["best"]["value"],
            "best_params": summary["best"]["params"],
        }
        print(f"{label}: {results[label]}", flush=True)
    results["epochs_ratio"] = results["pruned"]["epochs_run"] / results["unpruned"]["epochs_run"]
    results["best_gap_points"] = 100 * (
        results["unpruned"]["best_val_acc"] - results["pruned"]["best_val_acc"]
    )

    # 2. best found vs the tutorial recipe ------------------------------------------------------
    _, _ = mnistkit("run", args.out / "pruned" / "best.yaml", "--set", "data.val_split=0", "--out",
                    args.out / "best-rerun", "--progress", "none", *data_args)  # fmt: skip
    _, _ = mnistkit("run", *baseline_recipe, "--out", args.out / "baseline", "--progress", "none", *data_args)
    results["best_rerun_test_acc"] = final_test_acc(args.out / "best-rerun")
    results["baseline_test_acc"] = final_test_acc(args.out / "baseline")
    results["gain_points"] = 100 * (results["best_rerun_test_acc"] - results["baseline_test_acc"])
    print(
        f"best.yaml rerun {results['best_rerun_test_acc']:.4f} vs baseline {results['baseline_test_acc']:.4f}"
    )

    # 3. overhead: N identical trials vs N `mnistkit run` -----------------------------------------
    n = args.overhead_trials
    fixed = dict(base)
    best_params = results["pruned"]["best_params"]
    first = next(iter(best_params))
    fixed["params"] = {first: {"choice": [_decode(best_params[first])]}}
    path = sweep_file(args.out, "bench-overhead", fixed, trials=n, pruner={"name": "none"}, timeout=None)
    sweep_wall, _ = mnistkit("sweep", path, "--out", args.out / "overhead", "--progress", "none", *data_args)
    sweep_dirs = [args.out / "overhead" / "trials" / f"{i:04d}" for i in range(n)]
    run_walls, run_dirs = [], []
    for i in range(n):
        run_dirs.append(args.out / f"overhead-run-{i}")
        wall, _ = mnistkit(
            "run", sweep_dirs[i] / "recipe.yaml", "--out", run_dirs[i], "--progress", "none", *data_args
        )
        run_walls.append(wall)
    # Wall time is dominated by training, whose speed on this VM jumps between two modes from
    # epoch to epoch (docs/performance.md, Noise), in a sweep and a run alike. So the cost a
    # sweep adds is also given outside training: wall time minus the runs' own training seconds
    # (status.json), which is what the sweep machinery (Optuna, storage, trial setup) can cost.
    sweep_train = [train_seconds(d) for d in sweep_dirs]
    run_train = [train_seconds(d) for d in run_dirs]
    sweep_outside = (sweep_wall - sum(sweep_train)) / n
    run_outside = sum(w - t for w, t in zip(run_walls, run_train, strict=True)) / n
    results["overhead"] = {
        "trials": n,
        "sweep_wall_per_trial_s": round(sweep_wall / n, 2),
        "run_wall_s": round(sum(run_walls) / n, 2),
        "extra_per_trial_s": round(sweep_wall / n - sum(run_walls) / n, 2),
        "sweep_train_s": [round(t, 2) for t in sweep_train],
        "run_train_s": [round(t, 2) for t in run_train],
        "median_epoch_s": {"sweep": median_epoch(sweep_dirs), "run": median_epoch(run_dirs)},
        "sweep_outside_training_per_trial_s": round(sweep_outside, 2),
        "run_outside_training_s": round(run_outside, 2),
        "extra_outside_training_per_trial_s": round(sweep_outside - run_outside, 2),
    }
    print(f"overhead: {results['overhead']}")
    (args.out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))
    for tmp in args.out.glob("overhead-run-*"):
        shutil.rmtree(tmp, ignore_errors=True)


def train_seconds(run_dir: Path) -> float:
    return float(json.loads((run_dir / "status.json").read_text())["train_seconds"])


def median_epoch(run_dirs: list[Path]) -> float:
    """Median of the ``seconds`` column over every epoch of these runs."""
    return round(statistics.median(float(row["seconds"]) for d in run_dirs for row in metrics(d)), 3)


def _decode(value: Any) -> Any:
    """trials.csv/summary params hold list choices as JSON text."""
    if isinstance(value, str) and value.startswith("["):
        return json.loads(value)
    return value


if __name__ == "__main__":
    main()
