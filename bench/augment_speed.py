#!/usr/bin/env python
"""What does augmentation cost? Two measurements.

``--ops``: each augmentation on one 512x1x28x28 uint8 batch, three ways, fastest of many calls:

  * mnistkit's own vectorized ops (mnistkit/data/augment.py), per-sample parameters, uint8 in and out;
  * kornia.augmentation (per-sample parameters too; float in and out, so the batch is converted);
  * torchvision.transforms.v2, which draws one parameter set per call: per-sample parameters need
    one call per sample (a Python loop over the batch), timed as such.

Default (epochs): per-epoch training time of recipes/cnn.yaml without and with an augmentation
list (``--augment``, default the one of recipes/cnn-augment.yaml), in one process pair started
together: the two runs alternate epoch by epoch (each process waits for the parent's go before
each epoch), so machine noise falls on both alike; the medians of the per-epoch training seconds
(metrics.csv) are compared, and the medians of each process's CPU seconds per epoch (training
plus that epoch's evaluation), which other jobs on a shared machine hardly disturb. The goal of
issue 14: augmentation costs at most 30 % more per epoch.

    python bench/augment_speed.py --ops
    python bench/augment_speed.py --epochs 5                      # the full comparison
    python bench/augment_speed.py --epochs 1 --limit 6000         # smoke run (under a minute)

Results and the machine they came from: docs/performance.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "data" / "fashion-mnist"
DEFAULT_AUGMENT = "[{type: random_crop, padding: 2}, {type: horizontal_flip, p: 0.5}]"
GO_ENV = "MNISTKIT_BENCH_GO"  # a FIFO: the child reads one byte before every epoch


# ------------------------------------------------------------------------------------ --ops
def _best_ms(fn: Callable[[], Any], repeat: int) -> float:
    """Fastest of ``repeat`` calls, in ms: other jobs on the machine only ever add time, so on a
    shared machine the minimum is the stable figure (the median moves with their load)."""
    fn()  # warm-up (first-call allocations, lazy imports)
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times) * 1e3


def bench_ops(batch: int, repeat: int, threads: int) -> list[dict[str, Any]]:
    import torch

    from mnistkit.data.augment import horizontal_flip, random_affine, random_crop, random_erasing

    torch.set_num_threads(threads)
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (batch, 1, 28, 28), dtype=torch.uint8, generator=g)
    ours = {
        "random_crop": random_crop(padding=2),
        "horizontal_flip": horizontal_flip(p=0.5),
        "random_affine": random_affine(degrees=10, translate=(0.1, 0.1), scale=(0.9, 1.1)),
        "random_erasing": random_erasing(p=0.25),
    }
    rows: list[dict[str, Any]] = []
    for name, op in ours.items():
        rows.append({"op": name, "impl": "mnistkit", "ms": _best_ms(lambda op=op: op(x, g), repeat)})
    try:
        import kornia.augmentation as K

        kops = {
            "random_crop": K.RandomCrop((28, 28), padding=2),
            "horizontal_flip": K.RandomHorizontalFlip(p=0.5),
            "random_affine": K.RandomAffine(degrees=10, translate=(0.1, 0.1), scale=(0.9, 1.1)),
            "random_erasing": K.RandomErasing(p=0.25),
        }
        for name, kop in kops.items():
            # kornia works on float: the conversions are part of the cost of using it here.
            def run_k(kop: Any = kop) -> Any:
                return kop(x.float()).round().clamp(0, 255).to(torch.uint8)

            rows.append({"op": name, "impl": "kornia", "ms": _best_ms(run_k, repeat)})
    except ImportError:
        print("kornia not installed: skipped", file=sys.stderr)
    from torchvision.transforms import v2

    vops = {
        "random_crop": v2.RandomCrop(28, padding=2),
        "horizontal_flip": v2.RandomHorizontalFlip(p=0.5),
        "random_affine": v2.RandomAffine(degrees=10, translate=(0.1, 0.1), scale=(0.9, 1.1)),
        "random_erasing": v2.RandomErasing(p=0.25),
    }
    for name, vop in vops.items():

        def run_v(vop: Any = vop) -> Any:  # one call per sample = one parameter draw per sample
            return torch.stack([vop(s) for s in x])

        rows.append(
            {"op": name, "impl": "torchvision.v2 per sample", "ms": _best_ms(run_v, max(3, repeat // 5))}
        )
        rows.append(
            {
                "op": name,
                "impl": "torchvision.v2 whole batch (one draw)",
                "ms": _best_ms(lambda vop=vop: vop(x), repeat),
            }
        )
    return rows


def print_ops(rows: list[dict[str, Any]], batch: int, threads: int) -> None:
    print(f"augmentation ops on a {batch}x1x28x28 uint8 batch, {threads} thread(s), fastest of the calls, ms")
    print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}")
    impls = list(dict.fromkeys(r["impl"] for r in rows))
    ops = list(dict.fromkeys(r["op"] for r in rows))
    print(f"{'op':<16}" + "".join(f"{i:>38}" for i in impls))
    for op in ops:
        cells = {r["impl"]: r["ms"] for r in rows if r["op"] == op}
        print(f"{op:<16}" + "".join(f"{cells.get(i, float('nan')):>38.3f}" for i in impls))


# --------------------------------------------------------------------------------- epochs
def child(recipe: str, data_dir: str, out: str, overrides: list[str]) -> None:
    """One training run; before each epoch it waits for a byte on the GO fifo."""
    from mnistkit.recipe.schema import load_recipe
    from mnistkit.session import RunOptions, run

    fifo = open(os.environ[GO_ENV], "rb")  # noqa: SIM115 (open for the whole run)
    # CPU seconds of this process per epoch (training + that epoch's evaluation): unlike wall
    # time it hardly moves when other jobs share the cores (with train.threads: 1).
    cpu_log = open(Path(out).with_suffix(".cpu"), "w")  # noqa: SIM115
    import mnistkit.training.loop as train_mod

    original = train_mod.Hooks

    class GatedHooks(original):  # type: ignore[misc, valid-type]
        def __init__(self, *a: Any, **kw: Any) -> None:
            super().__init__(*a, **kw)
            inner = self.on_epoch_start

            def gated(epoch: int, steps: int) -> None:
                fifo.read(1)
                cpu_log.write(f"start {epoch} {time.process_time()}\n")
                inner(epoch, steps)

            inner_end = self.on_epoch_end

            def ended(row: dict[str, Any], improved: bool) -> None:
                cpu_log.write(f"end {row['epoch']} {time.process_time()}\n")
                cpu_log.flush()
                inner_end(row, improved)

            self.on_epoch_start = gated
            self.on_epoch_end = ended

    train_mod.Hooks = GatedHooks  # type: ignore[misc]
    import mnistkit.session as runner_mod

    runner_mod.Hooks = GatedHooks  # type: ignore[misc]
    rec = load_recipe(recipe, overrides)
    run(rec, RunOptions(out=Path(out), data_dir=Path(data_dir), progress="none"))


def bench_epochs(args: argparse.Namespace) -> dict[str, Any]:
    common = [
        f"epochs={args.epochs}",
        "train.plots=false",
        "train.checkpoint=false",
        f"train.threads={args.threads}",
    ]
    if args.limit:
        common.append(f"data.limit={args.limit}")
    variants = {"plain": ["data.augment=[]"], "augment": [f"data.augment={args.augment}"]}
    tmp = Path(tempfile.mkdtemp(prefix="augbench-"))
    procs: dict[str, subprocess.Popen[bytes]] = {}
    fifos: dict[str, Any] = {}
    env = dict(
        os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    )
    for name, extra in variants.items():
        fifo_path = tmp / f"{name}.go"
        os.mkfifo(fifo_path)
        cmd = [
            sys.executable,
            __file__,
            "--child",
            args.recipe,
            str(args.data_dir),
            str(tmp / name),
            *common,
            *extra,
        ]
        procs[name] = subprocess.Popen(cmd, env={**env, GO_ENV: str(fifo_path)})
        fifos[name] = open(fifo_path, "wb", buffering=0)  # noqa: SIM115 (blocks until the child opens it)
    order = list(variants)
    for epoch in range(args.epochs):
        for name in order if epoch % 2 == 0 else order[::-1]:
            fifos[name].write(b"g")
            _wait_epoch(tmp / name, epoch + 1, procs[name])
    for name, p in procs.items():
        fifos[name].close()
        if p.wait() != 0:
            raise SystemExit(f"{name} run failed (exit {p.returncode})")
    result: dict[str, Any] = {"epochs": args.epochs, "limit": args.limit, "augment": args.augment, "runs": {}}
    for name in variants:
        from mnistkit.runs.directory import RunDir

        rows = RunDir(tmp / name).read_metrics()
        secs = [float(r["seconds"]) for r in rows]
        marks = {}
        for line in (tmp / f"{name}.cpu").read_text().split("\n"):
            if line:
                what, epoch, t = line.split()
                marks[(what, int(epoch))] = float(t)
        cpu = [marks[("end", e)] - marks[("start", e)] for e in range(1, args.epochs + 1)]
        result["runs"][name] = {
            "seconds": secs,
            "median": statistics.median(secs),
            "cpu_seconds": cpu,
            "cpu_median": statistics.median(cpu),
            "test_acc": [float(r["test_acc"]) for r in rows],
        }
    runs = result["runs"]
    result["overhead"] = runs["augment"]["median"] / runs["plain"]["median"] - 1
    result["cpu_overhead"] = runs["augment"]["cpu_median"] / runs["plain"]["cpu_median"] - 1
    return result


def _wait_epoch(run_dir: Path, epoch: int, proc: subprocess.Popen[bytes]) -> None:
    """Until metrics.csv of ``run_dir`` has ``epoch`` rows (the epoch, and its evaluation, are done)."""
    metrics = run_dir / "metrics.csv"
    while True:
        if metrics.is_file() and len(metrics.read_text().strip().splitlines()) - 1 >= epoch:
            return
        if proc.poll() is not None:
            raise SystemExit(f"{run_dir.name} run ended early (exit {proc.returncode})")
        time.sleep(0.05)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--ops", action="store_true", help="time the single ops instead of epochs")
    ap.add_argument("--batch", type=int, default=512)
    ap.add_argument("--repeat", type=int, default=50)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--recipe", default=str(REPO / "recipes" / "cnn.yaml"))
    ap.add_argument("--data-dir", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--limit", type=int, default=None, help="data.limit for a quick run")
    ap.add_argument("--augment", default=DEFAULT_AUGMENT, help="the data.augment list, as YAML")
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        recipe, data_dir, out, *overrides = args.child
        child(recipe, data_dir, out, overrides)
        return
    if args.ops:
        rows = bench_ops(args.batch, args.repeat, args.threads)
        print_ops(rows, args.batch, args.threads)
        result: Any = rows
    else:
        result = bench_epochs(args)
        print(f"recipe {args.recipe}, {args.epochs} epoch(s), limit {args.limit}, {args.threads} thread(s)")
        print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}")
        for name, r in result["runs"].items():
            secs = ", ".join(f"{s:.2f}" for s in r["seconds"])
            print(
                f"  {name:<8} median {r['median']:.2f} s/epoch training wall time ({secs}); "
                f"{r['cpu_median']:.2f} CPU s/epoch with evaluation; test acc {r['test_acc'][-1]:.2%}"
            )
        print(
            f"  augmentation {args.augment}: {result['overhead']:+.1%} wall time per epoch, "
            f"{result['cpu_overhead']:+.1%} CPU time (goal: at most +30%)"
        )
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
