"""The mlp5 training step alone, four ways, alternated in one run (issue 18's peers goal).

Where does the MLP gap to Keras-on-JAX come from: Python and dispatch overhead around the
kernels (which compiling the step removes), or the kernels themselves? Each variant runs in its
own long-lived process, and rounds alternate between them; each round runs STEPS steps of
784-512-256-128-64-10 with ReLU, cross-entropy and SGD (lr 0.01, momentum 0.5) at batch 64 on
fixed random inputs, and reports CPU microseconds per step (``process_time``: less sensitive to a
busy machine than wall time) and wall microseconds per step.

* ``torch-eager``: the step as mnistkit's loop runs it (fused SGD, zero_grad(set_to_none)).
* ``torch-gemms``: only the 14 matrix multiplies that step must do (5 forward, 5 weight-gradient,
  4 input-gradient), into preallocated outputs: torch's floor with its own BLAS.
* ``torch-update``: only the fused SGD-with-momentum update of the 575,050 parameters (reads
  weights, gradients and momentum buffers, writes weights and buffers: memory-bound). With
  ``torch-gemms`` it is the floor of any implementation that runs these kernels.
* ``torch-compile``: forward, loss, backward and the SGD update in one ``torch.compile``d function.
* ``jax-jit``: the same step as one XLA program (``jax.jit``), i.e. what Keras 3 on JAX runs per
  batch without Keras' own per-step Python. Needs a Python with jax: ``--jax-python``.

    python bench/step_floor.py --jax-python /path/to/venv-with-jax/bin/python --rounds 7

Torch runs on ``--threads`` threads (default 1). XLA is asked for one
(``--xla_cpu_multi_thread_eigen=false``) but still spreads a step over the cores it has: compare
its CPU and wall columns.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

SIZES = (784, 512, 256, 128, 64, 10)
BATCH = 64
LR, MOMENTUM = 0.01, 0.5


# ---------------------------------------------------------------------- the variants (worker side)
def _torch_variant(name: str, threads: int):  # noqa: ANN202 (returns a step function)
    import torch
    import torch.nn.functional as F

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    x = torch.randn(BATCH, SIZES[0])
    y = torch.randint(0, SIZES[-1], (BATCH,))
    layers = [torch.nn.Linear(a, b) for a, b in zip(SIZES[:-1], SIZES[1:], strict=True)]
    model = torch.nn.Sequential(*[m for lin in layers for m in (lin, torch.nn.ReLU())][:-1])
    if name == "torch-gemms":
        ws = [lin.weight.detach() for lin in layers]
        acts = [torch.empty(BATCH, b) for b in SIZES[1:]]
        grads_w = [torch.empty_like(w) for w in ws]
        grads_in = [torch.empty(BATCH, a) for a in SIZES[1:-1]]
        ins = [x, *acts[:-1]]

        def gemms() -> None:
            for i, w in enumerate(ws):
                torch.mm(ins[i], w.t(), out=acts[i])
            for i in reversed(range(len(ws))):
                torch.mm(acts[i].t(), ins[i], out=grads_w[i])
                if i > 0:
                    torch.mm(acts[i], ws[i], out=grads_in[i - 1])

        return gemms
    opt = torch.optim.SGD(model.parameters(), lr=LR, momentum=MOMENTUM, fused=True)
    if name == "torch-update":
        for p in model.parameters():
            p.grad = torch.randn_like(p)
        opt.step()  # the momentum buffers exist from here on, as in training

        return opt.step

    def step() -> float:
        opt.zero_grad(set_to_none=True)
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        return loss

    if name == "torch-eager":
        return lambda: step().item()
    if name == "torch-compile":
        compiled = torch.compile(step)
        for _ in range(3):  # compile outside the timed rounds
            compiled()
        return lambda: compiled().item()
    raise SystemExit(f"unknown variant {name}")


def _jax_variant(threads: int):  # noqa: ANN202
    import jax
    import jax.numpy as jnp

    key = jax.random.PRNGKey(0)
    params = []
    for a, b in zip(SIZES[:-1], SIZES[1:], strict=True):
        key, k1 = jax.random.split(key)
        params.append((jax.random.normal(k1, (a, b)) * (1 / a) ** 0.5, jnp.zeros(b)))
    x = jax.random.normal(key, (BATCH, SIZES[0]))
    y = jax.random.randint(key, (BATCH,), 0, SIZES[-1])

    def loss_fn(ps, x, y):  # noqa: ANN001, ANN202
        h = x
        for i, (w, b) in enumerate(ps):
            h = h @ w + b
            if i < len(ps) - 1:
                h = jax.nn.relu(h)
        logp = jax.nn.log_softmax(h)
        return -jnp.mean(jnp.take_along_axis(logp, y[:, None], axis=1))

    @jax.jit
    def step(ps, vel, x, y):  # noqa: ANN001, ANN202
        loss, g = jax.value_and_grad(loss_fn)(ps, x, y)
        vel = jax.tree_util.tree_map(lambda v, gi: MOMENTUM * v + gi, vel, g)
        ps = jax.tree_util.tree_map(lambda p, v: p - LR * v, ps, vel)
        return ps, vel, loss

    state = {"ps": params, "vel": jax.tree_util.tree_map(jnp.zeros_like, params)}
    for _ in range(3):
        state["ps"], state["vel"], loss = step(state["ps"], state["vel"], x, y)
    loss.block_until_ready()

    def run() -> float:
        state["ps"], state["vel"], loss = step(state["ps"], state["vel"], x, y)
        return float(loss)  # a host read per step, as the torch variants' .item()

    return run


def worker(name: str, threads: int) -> None:
    fn = _jax_variant(threads) if name == "jax-jit" else _torch_variant(name, threads)
    print("ready", flush=True)
    for line in sys.stdin:
        steps = int(line)
        c0, w0 = time.process_time(), time.perf_counter()
        for _ in range(steps):
            fn()
        c1, w1 = time.process_time(), time.perf_counter()
        print(json.dumps({"cpu_us": (c1 - c0) / steps * 1e6, "wall_us": (w1 - w0) / steps * 1e6}), flush=True)


# ---------------------------------------------------------------------- the driver
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--steps", type=int, default=400, help="steps per round")
    ap.add_argument("--jax-python", help="a python with jax installed (else jax-jit is skipped)")
    ap.add_argument("--variants", default="torch-eager,torch-gemms,torch-update,torch-compile,jax-jit")
    args = ap.parse_args()
    if args.worker:
        worker(args.worker, args.threads)
        return
    names = [v for v in args.variants.split(",") if v != "jax-jit" or args.jax_python]
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), OMP_WAIT_POLICY="PASSIVE")
    env["XLA_FLAGS"] = "--xla_cpu_multi_thread_eigen=false" if args.threads == 1 else env.get("XLA_FLAGS", "")
    env["JAX_PLATFORMS"] = "cpu"
    procs = {}
    for name in names:
        py = args.jax_python if name == "jax-jit" else sys.executable
        procs[name] = subprocess.Popen(
            [py, __file__, "--worker", name, "--threads", str(args.threads)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env,
        )  # fmt: skip
    for name, p in procs.items():
        assert p.stdout.readline().strip() == "ready", name
    load0 = os.getloadavg()[0]
    got: dict[str, list[dict[str, float]]] = {n: [] for n in names}
    for r in range(args.rounds):
        for name in names if r % 2 == 0 else reversed(names):  # alternate the order too
            p = procs[name]
            p.stdin.write(f"{args.steps}\n")
            p.stdin.flush()
            got[name].append(json.loads(p.stdout.readline()))
    for p in procs.values():
        p.stdin.close()
        p.wait()
    load1 = os.getloadavg()[0]
    print(f"mlp5 step, batch {BATCH}, {args.threads} thread(s), {args.rounds} rounds x {args.steps} steps,"
          f" load {load0:.1f}->{load1:.1f}")  # fmt: skip
    print(f"{'variant':<15}{'CPU us/step':>13}{'wall us/step':>14}{'CPU / gemms':>13}")
    floor = statistics.median(g["cpu_us"] for g in got["torch-gemms"]) if "torch-gemms" in got else None
    for name in names:
        cpu = statistics.median(g["cpu_us"] for g in got[name])
        wall = statistics.median(g["wall_us"] for g in got[name])
        ratio = f"{cpu / floor:13.2f}" if floor else ""
        print(f"{name:<15}{cpu:13.0f}{wall:14.0f}{ratio}")


if __name__ == "__main__":
    main()
