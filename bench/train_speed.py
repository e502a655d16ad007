#!/usr/bin/env python
"""How fast does mnistkit train, next to the tutorial loop and a bare PyTorch loop?

One run of this script measures, on the same Fashion-MNIST files and the same hyperparameters
(the tutorial's MLP 784-512-256-128-64-10, SGD lr 0.01 momentum 0.5, batch 64, shuffled):

  (a) the tutorial's loop: a torchvision FashionMNIST dataset with ToTensor + Normalize applied per
      sample, a DataLoader (batch 64, shuffle, no workers), loss.item() every step;
  (b) a bare in-memory loop: one pre-normalized float tensor indexed by a fresh permutation;
  (c) mnistkit's trainer through the code path ``mnistkit run`` uses (mnistkit.session.run), with
      the Rich progress display on and really rendering (to a file, as if it were a terminal);
  (c0) the same with ``--progress none``, to put a number on the display's cost;
  (g) the floor: only the matrix multiplies an epoch of mlp5 must do (per batch 5 forward, 5
      weight-gradient and 4 input-gradient GEMMs, batch sizes as in the epoch), into
      preallocated outputs: what no training loop can beat on this BLAS. c/g is its overhead.

Each runs in its own process, so peak RSS (from wait4) is that of a complete run. The processes
are started one after the other (their setup does not overlap) and then advance in lock step:
every process waits at the start of each epoch for the parent's go, the parent lets one epoch
run at a time and rotates the order every round. Machine noise (other jobs on the 2 cores)
therefore lands on all of them alike, and the per-epoch medians compare like with like. Only
training time is compared (eval, checkpoints and waiting are outside the timed region).

It also times ``mnistkit --help`` and ``mnistkit validate recipes/mlp5.yaml`` (median of several
runs, alternated with the floor they are compared with: ``python -c "import typer, rich.console,
pydantic, yaml"``; ``--cli-only`` measures only these) and runs recipes/mlp5-fast.yaml to its
88% target (median of a few runs).

    python bench/train_speed.py                 # full: 10 epochs each (several minutes)
    python bench/train_speed.py --quick         # smoke run: 2 epochs, fewer repetitions
    python bench/train_speed.py --epochs 3 --json /tmp/bench.json
    python bench/train_speed.py --quick --epochs 1 --limit 2000 ...   # the test suite's smoke run

Results and the machine they came from: docs/performance.md.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "data" / "fashion-mnist"

# The tutorial's hyperparameters, shared by (a), (b) and recipes/mlp5.yaml (used by (c)).
BATCH, LR, MOMENTUM, SEED = 64, 0.01, 0.5, 0
HIDDEN = (512, 256, 128, 64)
EVAL_BATCH = 1000
TARGET = 0.88

VARIANTS = {
    "a": "(a) tutorial: torchvision + DataLoader",
    "b": "(b) bare in-memory loop",
    "c": "(c) mnistkit run, progress rich",
    "c0": "(c0) mnistkit run, progress none",
    "g": "(g) GEMM floor: mlp5's matmuls alone",
}

# Goals from the issue, checked at the end.
GOAL_CA, GOAL_ACC_PTS, GOAL_CB = 0.40, 0.5, 1.10
GOAL_CG = 1.15  # mnistkit's mlp5 epoch <= 1.15x the same GEMMs alone
GOAL_HELP_S, GOAL_VALIDATE_S, GOAL_FAST = 0.3, 0.5, 0.15
GOAL_HELP_X, GOAL_VALIDATE_X = 1.5, 2.0  # start-up as a multiple of the floor (issue 18)
GOAL_DISPLAY = 0.02


# ============================================================================ child processes
# Each child reports to the parent as JSON lines on a pipe (--msg-fd) and, in lock-step mode,
# waits on stdin for a line before each epoch.


class Channel:
    def __init__(self, fd: int | None, gated: bool) -> None:
        self.out = os.fdopen(fd, "w", buffering=1) if fd is not None else None
        self.gated = gated
        self.t0 = time.perf_counter()
        self.blocked = 0.0  # seconds spent waiting for the parent (not part of this run)
        self.setup: float | None = None  # process start → first epoch

    def send(self, **msg: Any) -> None:
        if self.out is not None:
            self.out.write(json.dumps(msg) + "\n")

    def gate(self) -> None:
        """Called before each epoch's timed region: wait for the parent's go."""
        if self.setup is None:
            self.setup = time.perf_counter() - self.t0
        if not self.gated:
            return
        t = time.perf_counter()
        self.send(event="ready")
        if not sys.stdin.readline():
            sys.exit(1)  # parent gone
        self.blocked += time.perf_counter() - t

    def finish(self, **result: Any) -> None:
        import torch

        self.send(
            event="result",
            setup=self.setup,
            active=time.perf_counter() - self.t0 - self.blocked,
            threads=torch.get_num_threads(),
            **result,
        )


def read_idx(path: Path) -> Any:
    """A (gzipped) IDX file → numpy array, shaped by its header."""
    import numpy as np

    raw = path.read_bytes()
    if path.name.endswith(".gz"):
        raw = gzip.decompress(raw)
    ndim = raw[3]
    dims = [int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def idx_file(data_dir: Path, stem: str) -> Path:
    for name in (stem + ".gz", stem):
        if (data_dir / name).exists():
            return data_dir / name
    raise SystemExit(f"{stem}[.gz] not found in {data_dir}")


def mean_std(train_images: Any) -> tuple[float, float]:
    """Mean and std of the training pixels in [0, 1]: the same statistics mnistkit computes."""
    import numpy as np

    counts = np.bincount(train_images.reshape(-1), minlength=256).astype(np.float64)
    values = np.arange(256) / 255.0
    mean = (counts * values).sum() / counts.sum()
    std = np.sqrt((counts * (values - mean) ** 2).sum() / counts.sum())
    return float(mean), float(std)


def tutorial_model() -> Any:
    from torch import nn

    layers: list[nn.Module] = [nn.Flatten()]
    width = 28 * 28
    for h in HIDDEN:
        layers += [nn.Linear(width, h), nn.ReLU()]
        width = h
    layers.append(nn.Linear(width, 10))
    return nn.Sequential(*layers)


def child_tutorial(args: argparse.Namespace, ch: Channel) -> None:
    """(a) The tutorial's loop, as written in countless notebooks."""
    import torch
    from torch import nn
    from torch.utils.data import DataLoader
    from torchvision import datasets, transforms

    data_dir = Path(args.data_dir)

    class FashionMNISTFiles(datasets.FashionMNIST):
        """torchvision's FashionMNIST (PIL image + transform per sample), reading the IDX
        files of data_dir where it would expect root/FashionMNIST/raw/ (no download, no copy)."""

        def _check_exists(self) -> bool:
            return True

        def _load_data(self) -> tuple[torch.Tensor, torch.Tensor]:
            prefix = "train" if self.train else "t10k"
            images = read_idx(idx_file(data_dir, f"{prefix}-images-idx3-ubyte"))
            labels = read_idx(idx_file(data_dir, f"{prefix}-labels-idx1-ubyte"))
            return torch.from_numpy(images.copy()), torch.from_numpy(labels.astype("int64"))

    torch.manual_seed(SEED)
    mean, std = mean_std(read_idx(idx_file(data_dir, "train-images-idx3-ubyte")))
    transform = transforms.Compose([transforms.ToTensor(), transforms.Normalize((mean,), (std,))])
    train_set = FashionMNISTFiles(str(data_dir), train=True, transform=transform)
    test_set = FashionMNISTFiles(str(data_dir), train=False, transform=transform)
    if args.limit:
        train_set = torch.utils.data.Subset(train_set, range(args.limit))  # type: ignore[assignment]
    train_loader = DataLoader(train_set, batch_size=BATCH, shuffle=True)
    test_loader = DataLoader(test_set, batch_size=EVAL_BATCH)

    model = tutorial_model()
    criterion = nn.CrossEntropyLoss()
    optimizer = torch.optim.SGD(model.parameters(), lr=LR, momentum=MOMENTUM)
    epochs = []
    for epoch in range(args.epochs):
        ch.gate()
        model.train()
        running_loss = 0.0
        t0 = time.perf_counter()
        for images, labels in train_loader:
            optimizer.zero_grad()
            loss = criterion(model(images), labels)
            loss.backward()
            optimizer.step()
            running_loss += loss.item()
        seconds = time.perf_counter() - t0
        model.eval()
        correct = 0
        with torch.no_grad():
            for images, labels in test_loader:
                correct += (model(images).argmax(1) == labels).sum().item()
        epochs.append({"seconds": seconds, "test_acc": correct / len(test_set)})
        ch.send(event="epoch", epoch=epoch + 1, **epochs[-1])
    ch.finish(epochs=epochs, n_train=len(train_set))


def child_bare(args: argparse.Namespace, ch: Channel) -> None:
    """(b) The same model over one pre-normalized float tensor, indexed by a permutation."""
    import torch
    from torch import nn

    data_dir = Path(args.data_dir)
    train_images = read_idx(idx_file(data_dir, "train-images-idx3-ubyte"))
    mean, std = mean_std(train_images)

    def tensors(prefix: str, images: Any = None) -> tuple[torch.Tensor, torch.Tensor]:
        if images is None:
            images = read_idx(idx_file(data_dir, f"{prefix}-images-idx3-ubyte"))
        x = (torch.from_numpy(images.copy()).float().div_(255).sub_(mean).div_(std)).unsqueeze(1)
        y = torch.from_numpy(read_idx(idx_file(data_dir, f"{prefix}-labels-idx1-ubyte")).astype("int64"))
        return x, y

    x, y = tensors("train", train_images)
    del train_images
    if args.limit:
        x, y = x[: args.limit], y[: args.limit]
    xt, yt = tensors("t10k")
    torch.manual_seed(SEED)
    model = tutorial_model()
    criterion = nn.CrossEntropyLoss()
    optimizer = torch.optim.SGD(model.parameters(), lr=LR, momentum=MOMENTUM)
    g = torch.Generator().manual_seed(SEED)
    epochs = []
    for epoch in range(args.epochs):
        ch.gate()
        model.train()
        running_loss = 0.0
        t0 = time.perf_counter()
        perm = torch.randperm(len(y), generator=g)
        for i in range(0, len(y), BATCH):
            idx = perm[i : i + BATCH]
            xb, yb = x[idx], y[idx]
            optimizer.zero_grad()
            loss = criterion(model(xb), yb)
            loss.backward()
            optimizer.step()
            running_loss += loss.item()
        seconds = time.perf_counter() - t0
        model.eval()
        with torch.inference_mode():
            correct = sum(
                int((model(xt[i : i + EVAL_BATCH]).argmax(1) == yt[i : i + EVAL_BATCH]).sum())
                for i in range(0, len(yt), EVAL_BATCH)
            )
        epochs.append({"seconds": seconds, "test_acc": correct / len(yt)})
        ch.send(event="epoch", epoch=epoch + 1, **epochs[-1])
    ch.finish(epochs=epochs, n_train=len(y))


def child_gemm(args: argparse.Namespace, ch: Channel) -> None:
    """(g) The GEMMs of mlp5's training epochs and nothing else: the floor for c."""
    import torch

    torch.set_num_threads(len(os.sched_getaffinity(0)))  # as mnistkit (training/device.py)
    n = args.limit or len(read_idx(idx_file(Path(args.data_dir), "train-labels-idx1-ubyte")))
    sizes = [BATCH] * (n // BATCH) + ([n % BATCH] if n % BATCH else [])
    dims = (28 * 28, *HIDDEN, 10)
    torch.manual_seed(SEED)
    weights = [torch.randn(o, i) * 0.05 for i, o in zip(dims, dims[1:], strict=False)]
    wgrads = [torch.empty_like(w) for w in weights]

    def buffers(b: int) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        acts = [torch.randn(b, d) for d in dims]  # layer inputs / outputs
        grads = [torch.randn(b, d) for d in dims[1:]]  # gradients w.r.t. layer outputs
        return acts, grads

    bufs = {b: buffers(b) for b in set(sizes)}
    epochs = []
    for epoch in range(args.epochs):
        ch.gate()
        t0 = time.perf_counter()
        for b in sizes:
            acts, grads = bufs[b]
            for k, w in enumerate(weights):  # forward: out = x @ W^T
                torch.mm(acts[k], w.t(), out=acts[k + 1])
            for k in reversed(range(len(weights))):  # backward
                torch.mm(grads[k].t(), acts[k], out=wgrads[k])  # dW = g^T x
                if k > 0:
                    torch.mm(grads[k], weights[k], out=grads[k - 1])  # dx = g W
        seconds = time.perf_counter() - t0
        epochs.append({"seconds": seconds, "test_acc": float("nan")})
        ch.send(event="epoch", epoch=epoch + 1, **epochs[-1])
    ch.finish(epochs=epochs, n_train=n)


def child_mnistkit(args: argparse.Namespace, ch: Channel, recipe_path: Path, progress: str) -> None:
    """(c) / fast: ``mnistkit run RECIPE --data-dir ... --progress ...`` in this process.

    The only additions are observers: the reporter's epoch_start waits for the parent's go
    (before the loop starts its clock), and its progress method is timed, which is all the work
    the display does inside a timed epoch.
    """
    import mnistkit.session as runner
    from mnistkit.recipe.schema import load_recipe

    overrides = ["data.dataset=fashion_mnist"]
    if args.epochs_override:
        overrides.append(f"epochs={args.epochs}")
    if args.limit:
        overrides.append(f"data.limit={args.limit}")
    recipe = load_recipe(recipe_path, overrides)
    display = {"calls": 0, "seconds": []}
    real_make_reporter = runner.make_reporter

    def make_reporter(mode: str, console: Any = None) -> Any:
        reporter = real_make_reporter(mode, console)
        start, progress_fn, end = reporter.epoch_start, reporter.progress, reporter.epoch_end

        def epoch_start(epoch: int, steps: int) -> None:
            ch.gate()
            display["seconds"].append(0.0)
            start(epoch, steps)

        def progress_timed(*a: Any) -> None:
            t = time.perf_counter()
            progress_fn(*a)
            display["seconds"][-1] += time.perf_counter() - t
            display["calls"] += 1

        def epoch_end(row: dict[str, Any], improved: bool) -> None:
            end(row, improved)
            ch.send(event="epoch", epoch=row["epoch"], seconds=row["seconds"], test_acc=row["test_acc"])

        reporter.epoch_start, reporter.progress = epoch_start, progress_timed
        reporter.epoch_end = epoch_end
        return reporter

    runner.make_reporter = make_reporter
    out = Path(args.run_dir)
    result = runner.run(recipe, runner.RunOptions(data_dir=Path(args.data_dir), out=out, progress=progress))
    epochs = [
        {"seconds": r["seconds"], "test_acc": r["test_acc"], "display_s": d}
        for r, d in zip(result.rows, display["seconds"], strict=False)
    ]
    ch.finish(
        epochs=epochs,
        n_train=int(round(result.rows[0]["samples_per_s"] * result.rows[0]["seconds"])),
        display_calls=display["calls"],
        stop_reason=result.stop_reason,
        threads_run=json.loads((out / "env.json").read_text()).get("threads"),
    )


def child_main(args: argparse.Namespace) -> None:
    ch = Channel(args.msg_fd, gated=args.gated)
    if args.child == "a":
        child_tutorial(args, ch)
    elif args.child == "b":
        child_bare(args, ch)
    elif args.child == "g":
        child_gemm(args, ch)
    elif args.child in ("c", "c0"):
        progress = "rich" if args.child == "c" else "none"
        child_mnistkit(args, ch, REPO / "recipes" / "mlp5.yaml", progress)
    elif args.child == "fast":
        child_mnistkit(args, ch, REPO / "recipes" / "mlp5-fast.yaml", "rich")


# ============================================================================ parent process
class Child:
    """One child process in lock-step mode."""

    def __init__(self, kind: str, args: argparse.Namespace, work: Path, gated: bool) -> None:
        self.kind = kind
        r, w = os.pipe()
        self.display_file = work / f"{kind}-display.txt"
        cmd = [
            sys.executable,
            str(Path(__file__).resolve()),
            "--child",
            kind,
            "--msg-fd",
            str(w),
            "--data-dir",
            str(args.data_dir),
            "--epochs",
            str(args.epochs),
            "--run-dir",
            str(work / f"{kind}-run"),
        ]
        if gated:
            cmd.append("--gated")
        if args.limit:
            cmd += ["--limit", str(args.limit)]
        if kind != "fast":
            cmd.append("--epochs-override")
        env = dict(os.environ)
        # The Rich display renders as on a terminal (cursor movement, redraws), into a file.
        env.update(TTY_COMPATIBLE="1", COLUMNS="120", LINES="40", PYTHONUNBUFFERED="1")
        self.t0 = time.perf_counter()
        self.proc = subprocess.Popen(
            cmd,
            stdin=subprocess.PIPE,
            stdout=self.display_file.open("w"),
            stderr=subprocess.STDOUT,
            pass_fds=(w,),
            env=env,
            text=True,
            cwd=REPO,
        )
        os.close(w)
        self.msgs = os.fdopen(r)
        self.epochs: list[dict[str, Any]] = []
        self.result: dict[str, Any] | None = None
        self.rss_mb = 0.0
        self.wall = 0.0

    def until_ready(self) -> None:
        """Read messages until the child waits for a go (or has finished)."""
        for line in self.msgs:
            msg = json.loads(line)
            if msg["event"] == "epoch":
                self.epochs.append(msg)
            if msg["event"] == "ready":
                return
            if msg["event"] == "result":
                self.result = msg
                return
        raise SystemExit(
            f"child {self.kind} ended unexpectedly; its output is in {self.display_file}:\n"
            + self.display_file.read_text()[-3000:]
        )

    def go(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write("go\n")
        self.proc.stdin.flush()
        self.until_ready()

    def reap(self) -> None:
        if self.proc.returncode is not None:
            return  # already reaped
        if self.result is None:
            self.until_ready()
        _, status, usage = os.wait4(self.proc.pid, 0)
        self.proc.returncode = os.waitstatus_to_exitcode(status)
        self.wall = time.perf_counter() - self.t0
        self.rss_mb = usage.ru_maxrss / 1024  # Linux: kilobytes
        if self.proc.returncode != 0:
            raise SystemExit(f"child {self.kind} failed; output: {self.display_file}")


def mnistkit_exe() -> list[str]:
    exe = Path(sys.executable).parent / "mnistkit"
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "mnistkit"]


#: The floor for CLI start-up: the libraries every command must import, nothing of mnistkit.
FLOOR_IMPORTS = "import typer, rich.console, pydantic, yaml"


def time_cli(reps: int, baseline: str | None = None) -> dict[str, float]:
    """Medians of `mnistkit --help`, `mnistkit validate recipes/mlp5.yaml` and the floor (a Python
    importing FLOOR_IMPORTS), alternated in one loop, each run in turn first: wall seconds under
    the key itself, CPU seconds (user + sys of the child, from RUSAGE_CHILDREN deltas) under
    ``<key>_cpu``. On a shared machine the CPU seconds are the steadier of the two: time spent
    waiting for a core does not count.

    ``baseline``: another checkout of mnistkit (e.g. a ``git worktree`` of an older commit), timed
    in the same loop as ``help@base`` / ``validate@base``; both checkouts then run as ``python -m
    mnistkit`` from their own folder (``-m`` puts the working directory first on sys.path), so
    they start the same way and each validates its own recipes/mlp5.yaml."""
    exe = mnistkit_exe()
    cwd = {"": REPO}
    if baseline is not None:
        exe = [sys.executable, "-m", "mnistkit"]
        cwd["@base"] = Path(baseline).resolve()
    cmds: dict[str, list[str]] = {"floor": [sys.executable, "-c", FLOOR_IMPORTS]}
    for tag in cwd:
        cmds[f"help{tag}"] = exe + ["--help"]
        cmds[f"validate{tag}"] = exe + ["validate", "recipes/mlp5.yaml"]
    keys = list(cmds)
    times: dict[str, list[float]] = {k: [] for k in cmds}
    cpu: dict[str, list[float]] = {k: [] for k in cmds}
    # As installed (pip compiles the bytecode) or after a first run: with PYTHONDONTWRITEBYTECODE
    # set, every run would compile mnistkit's ~30 modules from source (~0.03 s of CPU) while the
    # floor's libraries have their .pyc. One untimed round writes the bytecode.
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    for key in keys:
        tag = "@base" if key.endswith("@base") else ""
        subprocess.run(cmds[key], cwd=cwd[tag], check=True, capture_output=True, env=env)
    for i in range(reps):  # interleaved, like everything else; the order rotates
        for key in keys[i % len(keys) :] + keys[: i % len(keys)]:
            tag = "@base" if key.endswith("@base") else ""
            before = resource.getrusage(resource.RUSAGE_CHILDREN)
            t = time.perf_counter()
            subprocess.run(cmds[key], cwd=cwd[tag], check=True, capture_output=True, env=env)
            times[key].append(time.perf_counter() - t)
            after = resource.getrusage(resource.RUSAGE_CHILDREN)  # the child is reaped: counted
            cpu[key].append(after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime)
    out = {k: statistics.median(v) for k, v in times.items()}
    out.update({f"{k}_cpu": statistics.median(v) for k, v in cpu.items()})
    return out


def report_cli(cli: dict[str, float], reps: int) -> list[tuple[str, bool]]:
    """Print the start-up times and their ratios to the floor (wall and CPU seconds); returns the
    goal checks (on both: wall is what a user waits, CPU what a busy machine cannot inflate)."""
    floor = cli["floor"]
    print(
        f"CLI: mnistkit --help {cli['help']:.3f} s ({cli['help'] / floor:.2f}x the floor), "
        f"mnistkit validate recipes/mlp5.yaml {cli['validate']:.3f} s ({cli['validate'] / floor:.2f}x); "
        f'floor `python -c "{FLOOR_IMPORTS}"` {floor:.3f} s (wall, medians of {reps}, alternated)'
    )
    checks = [
        (f"--help <= {GOAL_HELP_S} s", cli["help"] <= GOAL_HELP_S),
        (f"validate <= {GOAL_VALIDATE_S} s", cli["validate"] <= GOAL_VALIDATE_S),
        (f"--help <= {GOAL_HELP_X}x the floor", cli["help"] / floor <= GOAL_HELP_X),
        (f"validate <= {GOAL_VALIDATE_X}x the floor", cli["validate"] / floor <= GOAL_VALIDATE_X),
    ]
    if "floor_cpu" in cli:  # results saved before the CPU seconds were measured have none
        fc = cli["floor_cpu"]
        print(
            f"CLI CPU seconds (user + sys): --help {cli['help_cpu']:.3f} s ({cli['help_cpu'] / fc:.2f}x), "
            f"validate {cli['validate_cpu']:.3f} s ({cli['validate_cpu'] / fc:.2f}x); floor {fc:.3f} s "
            f"(medians of {reps}, same runs)"
        )
        checks += [
            (f"--help <= {GOAL_HELP_X}x the floor (CPU seconds)", cli["help_cpu"] / fc <= GOAL_HELP_X),
            (
                f"validate <= {GOAL_VALIDATE_X}x the floor (CPU seconds)",
                cli["validate_cpu"] / fc <= GOAL_VALIDATE_X,
            ),
        ]
    if "help@base_cpu" in cli:
        fc = cli["floor_cpu"]
        print("--cli-baseline checkout, same runs; wall / CPU seconds as ratios to the floor:")
        for key in ("help", "validate"):
            print(
                f"  {key:8s} before {cli[key + '@base'] / floor:.2f}x / {cli[key + '@base_cpu'] / fc:.2f}x"
                f", after {cli[key] / floor:.2f}x / {cli[key + '_cpu'] / fc:.2f}x"
            )
    return checks


def prefault(mb: int) -> None:
    """Touch (and free) memory once before measuring, in a throwaway process.

    On a virtual machine the first touch of guest memory the host has not backed yet is slow
    (measured here: 4.5 s for 2 GB the first time, 0.4 s afterwards), which would land on
    whichever process happens to allocate first. Not in this process: a child's ru_maxrss
    starts from its parent's high-water mark at fork time, so the parent must stay small.
    """
    code = f"b = bytearray({mb << 20}); b[::4096] = bytes(len(range(0, len(b), 4096)))"
    subprocess.run([sys.executable, "-c", code], check=True)


def machine() -> dict[str, Any]:
    cpu = platform.processor() or ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:
        cores = os.cpu_count() or 1
    import importlib.metadata as md

    return {
        "cpu": cpu,
        "cores": cores,
        "python": platform.python_version(),
        "torch": md.version("torch"),
        "torchvision": md.version("torchvision"),
        "platform": platform.platform(),
    }


def load() -> float:
    try:
        return os.getloadavg()[0]
    except OSError:
        return float("nan")


def lockstep(kinds: list[str], args: argparse.Namespace, work: Path) -> dict[str, Child]:
    children: dict[str, Child] = {}
    for kind in kinds:  # set-up (imports, data) one at a time, not overlapping
        print(f"  starting {VARIANTS[kind]} ...", flush=True)
        children[kind] = Child(kind, args, work, gated=True)
        children[kind].until_ready()
    for epoch in range(args.epochs):
        order = kinds[epoch % len(kinds) :] + kinds[: epoch % len(kinds)]  # rotate each round
        for kind in order:
            children[kind].go()
            if children[kind].result is not None:
                # Finished: let it exit before the next one trains, or its teardown (a second
                # of CPU) lands on that epoch.
                children[kind].reap()
        line = "  ".join(
            f"{k} {c.epochs[epoch]['seconds']:.2f} s" if len(c.epochs) > epoch else f"{k} ..."
            for k, c in children.items()
        )
        print(f"  epoch {epoch + 1}/{args.epochs} done  {line}", flush=True)
    for child in children.values():
        child.reap()
    return children


def fast_runs(args: argparse.Namespace, work: Path) -> list[dict[str, Any]]:
    runs = []
    for rep in range(args.fast_reps):
        sub = work / f"fast{rep}"
        sub.mkdir()
        child = Child("fast", args, sub, gated=False)
        child.reap()
        assert child.result is not None
        rows = child.result["epochs"]
        seconds, reached = 0.0, None
        for i, row in enumerate(rows):
            seconds += row["seconds"]
            if row["test_acc"] >= TARGET:
                reached = i + 1
                break
        runs.append(
            {
                "epochs": reached,
                "seconds": seconds if reached else None,
                "accs": [r["test_acc"] for r in rows],
                "epoch_seconds": [r["seconds"] for r in rows],
                "stop_reason": child.result.get("stop_reason"),
            }
        )
        print(
            f"  mlp5-fast run {rep + 1}: "
            + (
                f"{TARGET:.0%} after {reached} epochs, {seconds:.2f} s training"
                if reached
                else "target not reached"
            )
            + f" (test acc {' '.join(f'{a:.2%}' for a in runs[-1]['accs'])})",
            flush=True,
        )
    return runs


def summarize(children: dict[str, Child]) -> dict[str, dict[str, Any]]:
    out = {}
    for kind, c in children.items():
        assert c.result is not None
        eps = c.result["epochs"]
        secs = [e["seconds"] for e in eps]
        med = statistics.median(secs)
        info = {
            "label": VARIANTS[kind],
            "epoch_seconds": secs,
            "median_s": med,
            "samples_per_s": c.result["n_train"] / med,
            "train_total_s": sum(secs),
            "test_acc": eps[-1]["test_acc"],
            "rss_mb": c.rss_mb,
            "setup_s": c.result["setup"],
            "active_s": c.result["active"],
            "threads": c.result["threads"],
        }
        if "display_s" in eps[0]:
            shares = [e["display_s"] / e["seconds"] for e in eps]
            info["display_share"] = statistics.median(shares)
            info["display_calls"] = c.result["display_calls"]
            info["display_bytes"] = c.display_file.stat().st_size
        out[kind] = info
    return out


def parent_main(args: argparse.Namespace) -> None:
    data_dir = Path(args.data_dir)
    for stem in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte"):
        idx_file(data_dir, stem)
    info = machine()
    print(
        f"machine: {info['cpu']}, {info['cores']} cores; Python {info['python']}, torch "
        f"{info['torch']}, torchvision {info['torchvision']}; {info['platform']}"
    )
    print(f"data: {data_dir}; {args.epochs} epochs; load average at start {load():.2f}", flush=True)
    if load() >= 1.0:
        print(
            "note: other processes are using the CPU. The variants are interleaved so they share "
            "the noise, but with 2 threads on 2 cores a busy core can slow an epoch down 8x "
            "(docs/performance.md): medians on a quiet machine are the numbers to quote.",
            flush=True,
        )
    if not args.no_prefault:
        prefault(2048)
    results: dict[str, Any] = {"machine": info, "epochs": args.epochs, "load_start": load()}

    print("CLI start-up ...", flush=True)
    results["cli"] = time_cli(args.cli_reps)

    kinds = ["a", "b", "c"] + ([] if args.no_display_ab else ["c0"]) + ["g"]
    with tempfile.TemporaryDirectory(prefix="mnistkit-bench-") as tmp:
        work = Path(tmp)
        print(f"training {', '.join(kinds)} in lock step ...", flush=True)
        runs = summarize(lockstep(kinds, args, work))
        results["runs"] = runs
        if not args.skip_fast:
            print("mlp5-fast to 88% ...", flush=True)
            results["fast"] = fast_runs(args, work)
    results["load_end"] = load()
    import resource

    # Children inherit this high-water mark at fork; it must stay far below theirs.
    results["parent_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    report(results, args)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")


def report(res: dict[str, Any], args: argparse.Namespace) -> None:
    runs = res["runs"]
    a, b, c = runs["a"], runs["b"], runs["c"]
    n = res["epochs"]
    print()
    print(f"=== results ({n} epochs each, per-epoch training seconds: median over epochs) ===")
    columns = ("epoch s", "samples/s", "test acc", "peak RSS", "setup s", "process s", "threads")
    print(f"{'':42s} " + " ".join(f"{h:>9s}" for h in columns))
    for r in runs.values():
        cells = (
            f"{r['median_s']:.3f}",
            f"{r['samples_per_s']:,.0f}",
            f"{r['test_acc']:.2%}",
            f"{r['rss_mb']:.0f} MB",
            f"{r['setup_s']:.2f}",
            f"{r['active_s']:.1f}",
            f"{r['threads']}",
        )
        print(f"{r['label']:42s} " + " ".join(f"{x:>9s}" for x in cells))
    for r in runs.values():
        print(f"  {r['label'][:4]:5s} epochs: " + " ".join(f"{s:.2f}" for s in r["epoch_seconds"]))
    print("  (process s: the child's wall time minus the time it waited for its turn;")
    print(
        "   peak RSS: ru_maxrss from wait4, the whole process including its exit; "
        f"this parent's own: {res['parent_rss_mb']:.0f} MB)"
    )
    ca, cb = c["median_s"] / a["median_s"], c["median_s"] / b["median_s"]
    acc_gap = (c["test_acc"] - a["test_acc"]) * 100
    print()
    cg = c["median_s"] / runs["g"]["median_s"]
    print(f"c/a = {ca:.3f}   c/b = {cb:.3f}   c/g = {cg:.3f}   test acc c - a = {acc_gap:+.2f} points")
    checks = [
        (f"c/g <= {GOAL_CG} (mnistkit's epoch over the same GEMMs alone)", cg <= GOAL_CG),
        (f"c/a <= {GOAL_CA}", ca <= GOAL_CA),
        (f"|acc(c) - acc(a)| <= {GOAL_ACC_PTS} points after {n} epochs", abs(acc_gap) <= GOAL_ACC_PTS),
        (f"c/b <= {GOAL_CB}", cb <= GOAL_CB),
        ("peak RSS of c <= peak RSS of a", c["rss_mb"] <= a["rss_mb"]),
    ]
    if "display_share" in c:
        line = (
            f"display: {c['display_calls']} refreshes, {c['display_bytes'] / 1024:.0f} KB rendered; "
            f"time inside the display {c['display_share']:.2%} of epoch time (median)"
        )
        if "c0" in runs:
            line += f"; c/c0 = {c['median_s'] / runs['c0']['median_s']:.3f}"
        print(line)
        checks.append(
            (f"display cost <= {GOAL_DISPLAY:.0%} of epoch time", c["display_share"] <= GOAL_DISPLAY)
        )
    checks += report_cli(res["cli"], args.cli_reps)
    if res.get("fast"):
        reached = [f["seconds"] for f in res["fast"] if f["seconds"] is not None]
        a_total = a["train_total_s"] * 10 / n  # (a)'s 10-epoch training time
        note = "" if n == 10 else f" (scaled from {n} epochs)"
        if reached:
            t = statistics.median(reached)
            eps = statistics.median([f["epochs"] for f in res["fast"] if f["epochs"]])
            print(
                f"mlp5-fast: {TARGET:.0%} test accuracy after {t:.2f} s of training ({eps:g} epochs, median "
                f"of {len(reached)}/{len(res['fast'])} runs) vs (a) 10 epochs {a_total:.1f} s{note}: "
                f"ratio {t / a_total:.3f}"
            )
            checks.append(
                (
                    f"mlp5-fast to {TARGET:.0%} <= {GOAL_FAST} x (a)'s 10 epochs",
                    t / a_total <= GOAL_FAST and len(reached) == len(res["fast"]),
                )
            )
        else:
            print("mlp5-fast: target not reached")
            checks.append(("mlp5-fast reaches 88%", False))
    print(f"load average: {res['load_start']:.2f} at start, {res['load_end']:.2f} at end")
    print()
    print("goals:")
    for text, ok in checks:
        print(f"  [{'PASS' if ok else 'FAIL'}] {text}")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--data-dir", default=str(DEFAULT_DATA), help="Fashion-MNIST IDX files (default: %(default)s)"
    )
    p.add_argument("--epochs", type=int, default=None, help="epochs per variant (default 10; --quick: 2)")
    p.add_argument("--quick", action="store_true", help="smoke run: 2 epochs, fewer repetitions")
    p.add_argument("--fast-reps", type=int, default=None, help="mlp5-fast runs (default 3; --quick: 1)")
    p.add_argument(
        "--cli-reps", type=int, default=None, help="timings of --help/validate (default 7; --quick: 3)"
    )
    p.add_argument(
        "--limit",
        type=int,
        default=None,
        help="train on the first N training images only: a smoke run, its timings mean nothing",
    )
    p.add_argument("--skip-fast", action="store_true", help="do not run recipes/mlp5-fast.yaml")
    p.add_argument("--no-display-ab", action="store_true", help="skip (c0), the progress-none run")
    p.add_argument("--no-prefault", action="store_true", help="do not pre-touch memory")
    p.add_argument("--cli-only", action="store_true", help="only the CLI start-up times and ratios")
    p.add_argument(
        "--cli-baseline",
        metavar="DIR",
        help="with --cli-only: also time the mnistkit in this checkout (e.g. a git worktree of an "
        "older commit) in the same alternated loop, for before/after ratios",
    )
    p.add_argument("--json", help="also write the results to this file")
    # internal: child processes
    p.add_argument("--child", choices=["a", "b", "c", "c0", "g", "fast"], help=argparse.SUPPRESS)
    p.add_argument("--msg-fd", type=int, help=argparse.SUPPRESS)
    p.add_argument("--gated", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--epochs-override", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--run-dir", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.epochs is None:
        args.epochs = 2 if args.quick else 10
    if args.fast_reps is None:
        args.fast_reps = 1 if args.quick else 3
    if args.cli_reps is None:
        args.cli_reps = 3 if args.quick else 7
    if args.child:
        child_main(args)
    elif args.cli_only:
        print(f"load average at start {load():.2f}", flush=True)
        cli = time_cli(args.cli_reps, args.cli_baseline)
        checks = report_cli(cli, args.cli_reps)
        if args.json:
            Path(args.json).write_text(json.dumps({"cli": cli, "load_end": load()}, indent=2))
        print(f"load average at end {load():.2f}")
        for text, ok in checks:
            print(f"  [{'PASS' if ok else 'FAIL'}] {text}")
    else:
        parent_main(args)


if __name__ == "__main__":
    main()
