#!/usr/bin/env python
"""mnistkit next to its peers: plain PyTorch, PyTorch Lightning and Keras 3 on JAX, side by side.

The same model, data, batch size and optimizer for every peer, on Fashion-MNIST's IDX files:

  mlp  recipes/mlp5.yaml: 784-512-256-128-64-10 with ReLU, SGD lr 0.01 momentum 0.5, batch 64;
  cnn  recipes/cnn.yaml's architecture (conv16-BN-ReLU-pool, conv32-BN-ReLU-pool, 128, 10),
       Adam lr 0.002, batch 128; constant lr for everyone (cnn.yaml's cosine schedule is
       switched off for mnistkit: the peers would each spell it differently).

The peers are written the way their documentation teaches: plain PyTorch and Lightning read a
``TensorDataset`` of normalized float images through a shuffling ``DataLoader`` (no workers);
Keras calls ``model.fit`` on NumPy arrays (Keras 3, ``KERAS_BACKEND=jax``, XLA compiles the step).
mnistkit runs ``mnistkit.session.run`` (what ``mnistkit run`` calls) with ``--progress none``;
the peers show no progress either. Every process uses the cores available (2 threads here).

Each peer runs in its own virtual environment under ``--venvs`` (default .peer-venvs/ in the
repository, git-ignored), created with pip on first use: the bench says what it installs and how
big it is. mnistkit runs in the interpreter that runs this script.

Every peer is its own process. They are started one after the other and then advance in lock
step: each waits before every epoch for the parent's go, the parent lets one epoch run at a
time and rotates the order every round, so noise from other jobs lands on all of them alike.
Reported per peer: median steady-state epoch (epochs 2..N), first epoch (Keras compiles in it),
process seconds (wall time from start to exit minus the time spent waiting for its turn), CPU
seconds and peak RSS (wait4), test accuracy after 3 and after the last epoch.

    python bench/peers.py                      # 10 epochs, both models (long: ~30 min on 2 cores)
    python bench/peers.py --quick              # 3 epochs on 12,000 training images
    python bench/peers.py --models mlp --epochs 5 --json /tmp/peers.json

This file is also the child program (``--child``): it imports nothing outside the standard
library at the top, so it runs in every peer's environment.
"""

from __future__ import annotations

import argparse
import gzip
import importlib.metadata as md
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "data" / "fashion-mnist"
SEED, EVAL_BATCH = 0, 1000
GOAL_RATIO = 0.8  # mnistkit's steady-state epoch <= 0.8x the fastest peer's

MODELS: dict[str, dict[str, Any]] = {
    "mlp": {"recipe": "mlp5.yaml", "batch": 64, "optimizer": "sgd", "lr": 0.01, "momentum": 0.5},
    "cnn": {"recipe": "cnn.yaml", "batch": 128, "optimizer": "adam", "lr": 0.002},
}
HIDDEN = (512, 256, 128, 64)


@dataclass
class Peer:
    label: str
    requirements: list[str] | None  # pip requirements of its environment; None: this interpreter
    env: dict[str, str] = field(default_factory=dict)
    sets: list[str] = field(default_factory=list)  # mnistkit variants: extra --set KEY=VALUE


PEERS: dict[str, Peer] = {
    "mnistkit": Peer("mnistkit", None),
    "torch": Peer("plain PyTorch + DataLoader", ["torch", "numpy"]),
    "lightning": Peer("PyTorch Lightning", ["lightning", "torch", "numpy"]),
    "keras-jax": Peer(
        "Keras 3 on JAX",
        ["keras", "jax[cpu]", "numpy"],
        {"KERAS_BACKEND": "jax", "JAX_PLATFORMS": "cpu", "TF_CPP_MIN_LOG_LEVEL": "3"},
    ),
    # mnistkit's own options, alternated the same way (not in the default list)
    "mnistkit-bf16": Peer("mnistkit, precision bf16", None, sets=["train.precision=bf16"]),
    "mnistkit-compile": Peer("mnistkit, compile true", None, sets=["train.compile=true"]),
    "mnistkit-eager": Peer("mnistkit, compile false", None, sets=["train.compile=false"]),
}
DEFAULT_PEERS = ["mnistkit", "torch", "lightning", "keras-jax"]


# ============================================================================ child side
class Channel:
    """JSON lines to the parent on a pipe; before each epoch, wait on stdin for its go."""

    def __init__(self, fd: int) -> None:
        self.out = os.fdopen(fd, "w", buffering=1)
        self.blocked = 0.0

    def send(self, **msg: Any) -> None:
        self.out.write(json.dumps(msg) + "\n")

    def gate(self) -> None:
        t = time.perf_counter()
        self.send(event="ready")
        if not sys.stdin.readline():
            sys.exit(1)  # parent gone
        self.blocked += time.perf_counter() - t
        self.cpu0 = time.process_time()

    def epoch(self, epoch: int, seconds: float, test_acc: float) -> None:
        # CPU seconds of the whole process (all its threads) from the go to here: the epoch and
        # its test evaluation. On a loaded machine steadier than wall time, and it shows a
        # framework that uses more cores than it was given.
        cpu = time.process_time() - self.cpu0
        self.send(event="epoch", epoch=epoch, seconds=seconds, test_acc=test_acc, cpu=cpu)


def read_idx(path: Path) -> Any:
    """A (gzipped) IDX file -> numpy array, shaped by its header."""
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


def numpy_data(args: argparse.Namespace) -> tuple[Any, Any, Any, Any]:
    """Normalized float32 images [N, 28, 28, 1] (NHWC) and int64 labels, train and test.

    Normalized with the training pixels' mean and std, the statistics mnistkit computes."""
    import numpy as np

    d = Path(args.data_dir)
    xtr = read_idx(idx_file(d, "train-images-idx3-ubyte"))
    ytr = read_idx(idx_file(d, "train-labels-idx1-ubyte")).astype(np.int64)
    xte = read_idx(idx_file(d, "t10k-images-idx3-ubyte"))
    yte = read_idx(idx_file(d, "t10k-labels-idx1-ubyte")).astype(np.int64)
    pixels = xtr.astype(np.float64) / 255
    mean, std = pixels.mean(), pixels.std()
    if args.limit:
        xtr, ytr = xtr[: args.limit], ytr[: args.limit]

    def norm(x: Any) -> Any:
        return ((x.astype(np.float32) / 255 - mean) / std).astype(np.float32)[..., None]

    return norm(xtr), ytr, norm(xte), yte


def torch_model(kind: str) -> Any:
    from torch import nn

    if kind == "mlp":
        layers: list[nn.Module] = [nn.Flatten()]
        width = 28 * 28
        for h in HIDDEN:
            layers += [nn.Linear(width, h), nn.ReLU()]
            width = h
        return nn.Sequential(*layers, nn.Linear(width, 10))
    return nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(32 * 7 * 7, 128), nn.ReLU(), nn.Linear(128, 10),
    )  # fmt: skip


def torch_optimizer(kind: str, params: Any) -> Any:
    import torch

    m = MODELS[kind]
    if m["optimizer"] == "sgd":
        return torch.optim.SGD(params, lr=m["lr"], momentum=m["momentum"])
    return torch.optim.Adam(params, lr=m["lr"])


def torch_loaders(args: argparse.Namespace) -> tuple[Any, Any]:
    import torch
    from torch.utils.data import DataLoader, TensorDataset

    xtr, ytr, xte, yte = numpy_data(args)
    nchw = [torch.from_numpy(x).permute(0, 3, 1, 2).contiguous() for x in (xtr, xte)]
    train = TensorDataset(nchw[0], torch.from_numpy(ytr))
    test = TensorDataset(nchw[1], torch.from_numpy(yte))
    batch = MODELS[args.model]["batch"]
    return DataLoader(train, batch_size=batch, shuffle=True), DataLoader(test, batch_size=EVAL_BATCH)


def torch_accuracy(model: Any, test: Any) -> float:
    import torch

    model.eval()
    correct = n = 0
    with torch.no_grad():
        for xb, yb in test:
            correct += int((model(xb).argmax(1) == yb).sum())
            n += len(yb)
    model.train()
    return correct / n


def child_torch(args: argparse.Namespace, ch: Channel) -> None:
    """Plain PyTorch, as its tutorials write it."""
    import torch
    from torch import nn

    set_torch_threads()
    torch.manual_seed(SEED)
    train, test = torch_loaders(args)
    model = torch_model(args.model)
    optimizer = torch_optimizer(args.model, model.parameters())
    criterion = nn.CrossEntropyLoss()
    for epoch in range(args.epochs):
        ch.gate()
        model.train()
        t0 = time.perf_counter()
        running = 0.0
        for xb, yb in train:
            optimizer.zero_grad()
            loss = criterion(model(xb), yb)
            loss.backward()
            optimizer.step()
            running += loss.item()
        seconds = time.perf_counter() - t0
        ch.epoch(epoch + 1, seconds, torch_accuracy(model, test))


def child_lightning(args: argparse.Namespace, ch: Channel) -> None:
    """A LightningModule and Trainer; a callback gates and times each training epoch."""
    import lightning as L
    import torch
    from torch import nn

    set_torch_threads()
    torch.manual_seed(SEED)
    train, test = torch_loaders(args)
    kind = args.model

    class Classifier(L.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.net = torch_model(kind)
            self.criterion = nn.CrossEntropyLoss()

        def training_step(self, batch: Any, batch_idx: int) -> Any:
            xb, yb = batch
            return self.criterion(self.net(xb), yb)

        def configure_optimizers(self) -> Any:
            return torch_optimizer(kind, self.parameters())

    class Clock(L.Callback):
        def on_train_epoch_start(self, trainer: Any, module: Any) -> None:
            ch.gate()
            self.t0 = time.perf_counter()

        def on_train_epoch_end(self, trainer: Any, module: Any) -> None:
            seconds = time.perf_counter() - self.t0
            ch.epoch(trainer.current_epoch + 1, seconds, torch_accuracy(module.net, test))

    trainer = L.Trainer(
        max_epochs=args.epochs, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0, callbacks=[Clock()],
    )  # fmt: skip
    trainer.fit(Classifier(), train_dataloaders=train)


def child_keras(args: argparse.Namespace, ch: Channel) -> None:
    """Keras 3 (JAX backend): Sequential model, compile, fit; a callback gates and times epochs."""
    import keras
    from keras import layers

    keras.utils.set_random_seed(SEED)
    xtr, ytr, xte, yte = numpy_data(args)
    m = MODELS[args.model]
    if args.model == "mlp":
        body = [layers.Flatten()] + [layers.Dense(h, activation="relu") for h in HIDDEN]
    else:
        # torch's BatchNorm defaults (running average momentum 0.1, eps 1e-5), in Keras' terms
        bn = {"momentum": 0.9, "epsilon": 1e-5}
        body = [
            layers.Conv2D(16, 3, padding="same"), layers.BatchNormalization(**bn), layers.ReLU(),
            layers.MaxPooling2D(2),
            layers.Conv2D(32, 3, padding="same"), layers.BatchNormalization(**bn), layers.ReLU(),
            layers.MaxPooling2D(2),
            layers.Flatten(), layers.Dense(128, activation="relu"),
        ]  # fmt: skip
    model = keras.Sequential([keras.Input((28, 28, 1)), *body, layers.Dense(10)])
    if m["optimizer"] == "sgd":  # Keras' momentum update equals torch's for a constant lr
        opt = keras.optimizers.SGD(learning_rate=m["lr"], momentum=m["momentum"])
    else:
        opt = keras.optimizers.Adam(learning_rate=m["lr"], epsilon=1e-8)  # torch's eps
    model.compile(optimizer=opt, loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))

    class Clock(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch: int, logs: Any = None) -> None:
            ch.gate()
            self.t0 = time.perf_counter()

        def on_epoch_end(self, epoch: int, logs: Any = None) -> None:
            seconds = time.perf_counter() - self.t0
            pred = self.model.predict(xte, batch_size=EVAL_BATCH, verbose=0)
            ch.epoch(epoch + 1, seconds, float((pred.argmax(1) == yte).mean()))

    model.fit(
        xtr, ytr, batch_size=m["batch"], epochs=args.epochs, shuffle=True, verbose=0, callbacks=[Clock()]
    )


def child_mnistkit(args: argparse.Namespace, ch: Channel) -> None:
    """``mnistkit run recipes/<model>.yaml --progress none``, with the reporter gating epochs."""
    import mnistkit.session as session
    from mnistkit.recipe.schema import load_recipe

    m = MODELS[args.model]
    sets = ["data.dataset=fashion_mnist", f"epochs={args.epochs}", "scheduler=null", "train.plots=false"]
    sets += [f"data.batch_size={m['batch']}", f"optimizer.lr={m['lr']}"]
    if args.limit:
        sets.append(f"data.limit={args.limit}")
    sets += [f"train.threads={os.environ['PEER_THREADS']}", *PEERS[args.child].sets, *args.mnistkit_set]
    recipe = load_recipe(REPO / "recipes" / m["recipe"], sets)
    real_make_reporter = session.make_reporter

    def make_reporter(mode: str, console: Any = None) -> Any:
        reporter = real_make_reporter(mode, console)
        start, end = reporter.epoch_start, reporter.epoch_end

        def epoch_start(epoch: int, steps: int) -> None:
            ch.gate()
            start(epoch, steps)

        def epoch_end(row: dict[str, Any], improved: bool) -> None:
            end(row, improved)
            ch.epoch(row["epoch"], row["seconds"], row["test_acc"])

        reporter.epoch_start, reporter.epoch_end = epoch_start, epoch_end
        return reporter

    session.make_reporter = make_reporter
    session.run(
        recipe, session.RunOptions(data_dir=Path(args.data_dir), out=Path(args.run_dir), progress="none")
    )


def child_main(args: argparse.Namespace) -> None:
    ch = Channel(args.msg_fd)
    kind = "mnistkit" if args.child.startswith("mnistkit") else args.child
    {
        "mnistkit": child_mnistkit,
        "torch": child_torch,
        "lightning": child_lightning,
        "keras-jax": child_keras,
    }[kind](args, ch)
    ch.send(event="result", blocked=ch.blocked)


# ============================================================================ environments
def threads_env(threads: int) -> dict[str, str]:
    """The same number of compute threads for every framework (read by the child at start-up)."""
    multi = "true" if threads > 1 else "false"
    xla = f"--xla_cpu_multi_thread_eigen={multi} intra_op_parallelism_threads={threads}"
    return {"PEER_THREADS": str(threads), "OMP_NUM_THREADS": str(threads), "XLA_FLAGS": xla}


def set_torch_threads() -> None:
    import torch

    torch.set_num_threads(int(os.environ["PEER_THREADS"]))


def venv_python(name: str, args: argparse.Namespace) -> Path:
    """The peer's interpreter; creates its virtual environment with pip on first use."""
    label, requirements = PEERS[name].label, PEERS[name].requirements
    if requirements is None:
        return Path(sys.executable)
    root = Path(args.venvs) / name
    py = root / "bin" / "python"
    stamp = root / ".installed"
    if stamp.exists():
        return py
    # the torch that mnistkit runs on, so the comparison is of the code around it
    requirements = [f"torch=={md.version('torch')}" if r == "torch" else r for r in requirements]
    print(f"  creating {root} for {label}: pip install {' '.join(requirements)} ...", flush=True)
    t = time.perf_counter()
    shutil.rmtree(root, ignore_errors=True)
    subprocess.run([sys.executable, "-m", "venv", str(root)], check=True)
    before = dir_mb(root)
    subprocess.run(
        [str(py), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", *requirements], check=True
    )
    frozen = subprocess.run([str(py), "-m", "pip", "freeze"], check=True, capture_output=True, text=True)
    n = len([line for line in frozen.stdout.splitlines() if line.strip()])
    mb = dir_mb(root) - before
    note = f"{n} packages, {mb:,.0f} MB, {time.perf_counter() - t:.0f} s"
    stamp.write_text(note + "\n" + frozen.stdout)
    print(f"  installed {note}", flush=True)
    return py


def dir_mb(path: Path) -> float:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file() and not f.is_symlink()) / 2**20


def versions(name: str, py: Path) -> str:
    if PEERS[name].requirements is None:
        name = "mnistkit"
    code = {
        "mnistkit": "import torch; print('torch', torch.__version__)",
        "torch": "import torch; print('torch', torch.__version__)",
        "lightning": "import lightning as L, torch; print('lightning', L.__version__, 'torch', torch.__version__)",  # noqa: E501
        "keras-jax": "import keras, jax; print('keras', keras.__version__, 'jax', jax.__version__)",
    }[name]
    env = {**os.environ, **PEERS[name].env}
    out = subprocess.run([str(py), "-c", code], capture_output=True, text=True, env=env)
    return out.stdout.strip() or out.stderr.strip().splitlines()[-1]


# ============================================================================ parent side
class Child:
    """One peer's process, advanced one epoch at a time."""

    def __init__(self, name: str, py: Path, args: argparse.Namespace, work: Path) -> None:
        self.name = name
        r, w = os.pipe()
        self.log = work / f"{args.model}-{name}.log"
        cmd = [str(py), str(Path(__file__).resolve()), "--child", name, "--msg-fd", str(w)]
        cmd += ["--model", args.model, "--data-dir", str(args.data_dir), "--epochs", str(args.epochs)]
        cmd += ["--run-dir", str(work / f"{args.model}-{name}-run")]
        cmd += [f"--mnistkit-set={s}" for s in args.mnistkit_set]
        if args.limit:
            cmd += ["--limit", str(args.limit)]
        env = {**os.environ, **PEERS[name].env, "PYTHONUNBUFFERED": "1", **threads_env(args.threads)}
        self.t0 = time.perf_counter()
        self.proc = subprocess.Popen(
            cmd, stdin=subprocess.PIPE, stdout=self.log.open("w"), stderr=subprocess.STDOUT,
            pass_fds=(w,), env=env, text=True, cwd=REPO,
        )  # fmt: skip
        os.close(w)
        self.msgs = os.fdopen(r)
        self.epochs: list[dict[str, Any]] = []
        self.blocked: float | None = None
        self.wall = self.cpu = self.rss_mb = 0.0

    def until_ready(self) -> None:
        for line in self.msgs:
            msg = json.loads(line)
            if msg["event"] == "epoch":
                self.epochs.append(msg)
            elif msg["event"] == "ready":
                return
            elif msg["event"] == "result":
                self.blocked = msg["blocked"]
                return
        raise SystemExit(f"peer {self.name} ended unexpectedly:\n" + self.log.read_text()[-3000:])

    def go(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write("go\n")
        self.proc.stdin.flush()
        self.until_ready()

    def reap(self) -> None:
        if self.proc.returncode is not None:
            return
        if self.blocked is None:
            self.until_ready()
        _, status, usage = os.wait4(self.proc.pid, 0)
        self.proc.returncode = os.waitstatus_to_exitcode(status)
        if self.proc.returncode != 0:
            raise SystemExit(f"peer {self.name} failed:\n" + self.log.read_text()[-3000:])
        # start to exit, less the time it waited for its turn (it runs alone while it trains)
        self.wall = time.perf_counter() - self.t0 - (self.blocked or 0.0)
        self.cpu = usage.ru_utime + usage.ru_stime
        self.rss_mb = usage.ru_maxrss / 1024


def load() -> float:
    try:
        return os.getloadavg()[0]
    except OSError:
        return float("nan")


def lockstep(
    names: list[str], pythons: dict[str, Path], args: argparse.Namespace, work: Path
) -> dict[str, Child]:
    children: dict[str, Child] = {}
    for name in names:  # set-up (imports, data) one at a time, not overlapping
        children[name] = Child(name, pythons[name], args, work)
        children[name].until_ready()
    for epoch in range(args.epochs):
        order = names[epoch % len(names) :] + names[: epoch % len(names)]  # rotate each round
        for name in order:
            children[name].go()
            if children[name].blocked is not None:
                children[name].reap()  # let it exit before the next one trains
        line = "  ".join(f"{n} {c.epochs[epoch]['seconds']:.2f} s" for n, c in children.items())
        print(f"  {args.model} epoch {epoch + 1}/{args.epochs}  {line}  (load {load():.1f})", flush=True)
    for child in children.values():
        child.reap()
    return children


def summary(c: Child) -> dict[str, Any]:
    secs = [e["seconds"] for e in c.epochs]
    accs = [e["test_acc"] for e in c.epochs]
    return {
        "epoch_seconds": secs,
        "epoch_cpu": [e["cpu"] for e in c.epochs],
        "steady_s": statistics.median(secs[1:] or secs),
        "steady_cpu_s": statistics.median([e["cpu"] for e in c.epochs][1:] or [c.epochs[0]["cpu"]]),
        "first_s": secs[0],
        "process_s": c.wall,
        "cpu_s": c.cpu,
        "rss_mb": c.rss_mb,
        "acc": accs,
    }


def report(model: str, res: dict[str, dict[str, Any]], epochs: int) -> list[tuple[str, bool]]:
    print(f"\n=== {model}: {epochs} epochs each ===")
    k3 = min(3, epochs)
    cols = (
        "steady s",
        "steady CPU",
        "1st ep s",
        "process s",
        "CPU s",
        "peak RSS",
        f"acc@{k3}",
        f"acc@{epochs}",
    )
    print(f"{'':28s}" + "".join(f"{h:>11s}" for h in cols))
    for name, r in res.items():
        cells = (
            f"{r['steady_s']:.3f}", f"{r['steady_cpu_s']:.3f}", f"{r['first_s']:.3f}",
            f"{r['process_s']:.1f}", f"{r['cpu_s']:.1f}",
            f"{r['rss_mb']:.0f} MB", f"{r['acc'][k3 - 1]:.2%}", f"{r['acc'][-1]:.2%}",
        )  # fmt: skip
        print(f"{PEERS[name].label:28s}" + "".join(f"{x:>11s}" for x in cells))
    for name, r in res.items():
        print(f"  {name:10s} epochs: " + " ".join(f"{s:.2f}" for s in r["epoch_seconds"]))
        print(f"  {name:10s} CPU s:  " + " ".join(f"{s:.2f}" for s in r["epoch_cpu"]))
    print("  (steady: median of epochs 2..N; steady CPU: the same for the process's CPU seconds")
    print("   per epoch, its test evaluation included; process s: start to exit minus waiting)")
    checks: list[tuple[str, bool]] = []
    if "mnistkit" in res and len(res) > 1:
        mk = res["mnistkit"]
        others = {n: r for n, r in res.items() if n != "mnistkit"}
        fastest = min(others, key=lambda n: others[n]["steady_s"])
        ratio = mk["steady_s"] / others[fastest]["steady_s"]
        print(f"mnistkit / fastest peer ({fastest}) steady-state epoch: {ratio:.3f}")
        checks.append(
            (
                f"{model}: mnistkit steady epoch <= {GOAL_RATIO}x fastest peer ({ratio:.2f})",
                ratio <= GOAL_RATIO,
            )
        )
        lowest = min(res, key=lambda n: res[n]["process_s"])
        checks.append(
            (f"{model}: mnistkit's process time the lowest (lowest: {lowest})", lowest == "mnistkit")
        )
        if "torch" in res:
            gap = (mk["acc"][-1] - res["torch"]["acc"][-1]) * 100
            checks.append(
                (f"{model}: accuracy within 0.5 points of plain PyTorch ({gap:+.2f})", abs(gap) <= 0.5)
            )
    return checks


def parent_main(args: argparse.Namespace) -> None:
    for stem in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte"):
        idx_file(Path(args.data_dir), stem)
    cpu = next(
        (
            ln.split(":", 1)[1].strip()
            for ln in Path("/proc/cpuinfo").read_text().splitlines()
            if ln.startswith("model name")
        ),
        platform.processor(),
    )
    print(f"machine: {cpu}, {len(os.sched_getaffinity(0))} cores; {platform.platform()}")
    print(
        f"data: {args.data_dir}; {args.epochs} epochs; limit {args.limit or 'none'}; "
        f"{args.threads} threads each; load {load():.2f}",
        flush=True,
    )
    pythons = {n: venv_python(n, args) for n in args.peers}
    for n in args.peers:
        print(f"  {n:10s} {pythons[n]}  ({versions(n, pythons[n])})")
    results: dict[str, Any] = {"load_start": load(), "epochs": args.epochs, "limit": args.limit, "models": {}}
    checks: list[tuple[str, bool]] = []
    loads = [load()]
    with tempfile.TemporaryDirectory(prefix="mnistkit-peers-") as tmp:
        for model in args.models:
            args.model = model
            res = {n: summary(c) for n, c in lockstep(args.peers, pythons, args, Path(tmp)).items()}
            loads.append(load())
            results["models"][model] = res
            checks += report(model, res, args.epochs)
    results["loads"] = loads
    print(f"\nload average (1 min) at start and after each model: {', '.join(f'{x:.2f}' for x in loads)}")
    print("goals:")
    for text, ok in checks:
        print(f"  [{'PASS' if ok else 'FAIL'}] {text}")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--data-dir", default=str(DEFAULT_DATA), help="Fashion-MNIST IDX files (default: %(default)s)"
    )
    p.add_argument("--epochs", type=int, default=None, help="epochs per peer (default 10; --quick: 3)")
    p.add_argument("--limit", type=int, default=None, help="train on the first N images (--quick: 12000)")
    p.add_argument("--quick", action="store_true", help="3 epochs on 12,000 training images")
    p.add_argument("--models", nargs="+", choices=list(MODELS), default=list(MODELS))
    p.add_argument("--peers", nargs="+", choices=list(PEERS), default=DEFAULT_PEERS)
    p.add_argument(
        "--threads", type=int, default=None, help="CPU threads for every peer (default: all cores)"
    )
    p.add_argument("--venvs", default=str(REPO / ".peer-venvs"), help="where the peers' environments live")
    p.add_argument(
        "--mnistkit-set", action="append", default=[], metavar="KEY=VALUE", help="extra --set for mnistkit"
    )
    p.add_argument("--json", help="also write the results to this file")
    p.add_argument("--child", choices=list(PEERS), help=argparse.SUPPRESS)
    p.add_argument("--msg-fd", type=int, help=argparse.SUPPRESS)
    p.add_argument("--model", choices=list(MODELS), help=argparse.SUPPRESS)
    p.add_argument("--run-dir", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.threads is None:
        args.threads = len(os.sched_getaffinity(0))
    if args.epochs is None:
        args.epochs = 3 if args.quick else 10
    if args.limit is None and args.quick:
        args.limit = 12000
    if args.child:
        child_main(args)
    else:
        parent_main(args)


if __name__ == "__main__":
    main()
