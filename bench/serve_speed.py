#!/usr/bin/env python
"""``mnistkit serve`` under load, next to the same model called in-process through ONNX Runtime.

For each model (mlp5 and cnn, trained briefly on Fashion-MNIST: the speed of a model does not
depend on how well it was trained) this script, in one run:

* cold start: wall time from starting ``mnistkit serve model.onnx`` to its first answer on
  ``POST /predict`` (median of ``--cold`` starts);
* in-process: ``read_files`` (decode the PNGs, as the server does) + one ``OnnxModel.probabilities``
  call at batch sizes 1, 8 and 32, and the model call alone; inputs per second;
* served: a load generator written for this bench (asyncio, keep-alive HTTP/1.1 on loopback, one
  connection per client) at concurrency 1, 8 and 32, against a batching server (``--max-batch
  32 --max-wait-ms 2``, the defaults) and a batch-1 server (``--max-batch 1``); requests per
  second and p50/p95/p99 latency. Each request is one 28x28 PNG (raw ``image/png`` body). Both
  servers run at once and the levels alternate between them, ``--rounds`` times; per level the
  median round (by requests per second) is reported, with its latencies.

The load is bounded: each level stops after ``--requests`` requests or ``--seconds`` seconds,
whichever comes first; servers listen on 127.0.0.1 only and are stopped (SIGTERM) at the end.
The load generator shares the machine's cores with the server: on 2 cores that is part of the
figures (say so when quoting them).

    python bench/serve_speed.py --data-dir ../shared/data/fashion-mnist
    python bench/serve_speed.py --data-dir DIR --models mlp5 --requests 500 --json out.json

Results and the machine they came from: docs/performance.md.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
LEVELS = (1, 8, 32)


def env() -> dict[str, str]:
    out = dict(os.environ)
    out["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), out.get("PYTHONPATH")]))
    return out


def sh(args: list[str]) -> subprocess.CompletedProcess:
    res = subprocess.run(
        [sys.executable, "-m", "mnistkit", *args], cwd=REPO, env=env(), capture_output=True, text=True
    )
    if res.returncode != 0:
        sys.exit(f"mnistkit {' '.join(args)} failed:\n{res.stdout}\n{res.stderr}")
    return res


def train_and_export(name: str, data_dir: Path, tmp: Path, limit: int) -> Path:
    run = tmp / name
    sh(
        [
            "run", f"recipes/{name}.yaml", "--data-dir", str(data_dir), "--out", str(run),
            "--set", "data.dataset=fashion_mnist", "--set", "epochs=1", "--set", f"data.limit={limit}",
            "--set", "expect=null", "--progress", "none",
        ]
    )  # fmt: skip
    sh(["export", str(run)])
    return run / "export" / "model.onnx"


def pngs(n: int) -> list[bytes]:
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    out = []
    for _ in range(n):
        buf = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, (28, 28), dtype=np.uint8)).save(buf, format="PNG")
        out.append(buf.getvalue())
    return out


# ------------------------------------------------------------------------------ servers
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def post(port: int, body: bytes, timeout: float = 5) -> int:
    req = urllib.request.Request(
        f"http://127.0.0.1:{port}/predict", data=body, headers={"Content-Type": "image/png"}
    )
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        return resp.status


def start(model: Path, *options: str) -> tuple[subprocess.Popen, int, float]:
    """A server process, its port, and its cold start (seconds to the first answer)."""
    port = free_port()
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "-m", "mnistkit", "serve", str(model), "--port", str(port), *options],
        cwd=REPO,
        env=env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    body = pngs(1)[0]
    while True:
        if proc.poll() is not None:
            sys.exit(f"server exited {proc.returncode}: {proc.stderr.read().decode() if proc.stderr else ''}")
        try:
            if post(port, body) == 200:
                return proc, port, time.perf_counter() - t0
        except OSError:
            time.sleep(0.02)
        if time.perf_counter() - t0 > 120:
            proc.kill()
            sys.exit("server did not answer within 120 s")


def stop(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


# ------------------------------------------------------------------------------ load generator
async def _client(
    port: int, bodies: list[bytes], budget: dict[str, Any], latencies: list[float], errors: list[int]
) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    i = 0
    try:
        while budget["left"] > 0 and time.perf_counter() < budget["until"]:
            budget["left"] -= 1
            body = bodies[i % len(bodies)]
            i += 1
            head = (
                f"POST /predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: image/png\r\n"
                f"Content-Length: {len(body)}\r\n\r\n"
            ).encode()
            t0 = time.perf_counter()
            writer.write(head + body)
            await writer.drain()
            status_line = await reader.readline()
            length = 0
            while (line := await reader.readline()) not in (b"\r\n", b""):
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":")[1])
            await reader.readexactly(length)
            latencies.append(time.perf_counter() - t0)
            status = int(status_line.split()[1])
            if status != 200:
                errors.append(status)
    finally:
        writer.close()


def load(port: int, concurrency: int, requests: int, seconds: float, bodies: list[bytes]) -> dict[str, Any]:
    """``requests`` requests (or ``seconds``, whichever ends first) from ``concurrency`` clients."""

    async def main() -> tuple[list[float], list[int], float]:
        latencies: list[float] = []
        errors: list[int] = []
        budget = {"left": requests, "until": time.perf_counter() + seconds}
        t0 = time.perf_counter()
        await asyncio.gather(*(_client(port, bodies, budget, latencies, errors) for _ in range(concurrency)))
        return latencies, errors, time.perf_counter() - t0

    load_warm = min(50, requests)
    asyncio.run(_warm(port, bodies, load_warm))
    latencies, errors, wall = asyncio.run(main())
    q = statistics.quantiles(latencies, n=100, method="inclusive")
    return {
        "concurrency": concurrency,
        "requests": len(latencies),
        "errors": len(errors),
        "seconds": wall,
        "req_per_s": len(latencies) / wall,
        "p50_ms": q[49] * 1e3,
        "p95_ms": q[94] * 1e3,
        "p99_ms": q[98] * 1e3,
    }


async def _warm(port: int, bodies: list[bytes], n: int) -> None:
    await _client(port, bodies, {"left": n, "until": time.perf_counter() + 30}, [], [])


# ------------------------------------------------------------------------------ in-process
def in_process(model_path: Path, bodies: list[bytes], seconds: float) -> dict[str, Any]:
    from mnistkit.evaluation.inputs import InMemoryFile, read_files
    from mnistkit.export.runtime import load_model

    model = load_model(model_path)
    out: dict[str, Any] = {}
    for b in LEVELS:
        files = [InMemoryFile(f"{i}.png", bodies[i % len(bodies)]) for i in range(b)]
        raw = read_files(files, model.info)
        for name, fn in (
            ("decode+model", lambda files=files: model.probabilities(read_files(files, model.info))),
            ("model", lambda raw=raw: model.probabilities(raw)),
        ):
            for _ in range(20):
                fn()
            calls, t0 = 0, time.perf_counter()
            while time.perf_counter() - t0 < seconds:
                fn()
                calls += 1
            out[f"{name} b{b}"] = calls * b / (time.perf_counter() - t0)
    return out


# ------------------------------------------------------------------------------ main
def bench_model(name: str, model: Path, args: argparse.Namespace, bodies: list[bytes]) -> dict[str, Any]:
    print(f"\n== {name} ({model.stat().st_size / 1e3:.0f} kB ONNX)", flush=True)
    cold = []
    for _ in range(args.cold):
        proc, _, seconds = start(model)
        stop(proc)
        cold.append(seconds)
    median = statistics.median(cold)
    print(f"cold start (process start to first answer), {args.cold} starts: median {median:.2f} s")
    inproc = in_process(model, bodies, args.inproc_seconds)
    # Both servers up at once, levels interleaved (A, B, B, A, ...) and repeated: a burst of load
    # from elsewhere on the machine lands on both alike. Per level, the median round by req/s.
    configs = (("batching", ["--max-batch", "32", "--max-wait-ms", "2"]), ("batch-1", ["--max-batch", "1"]))
    servers = {label: start(model, *options, "--max-queue", "1024")[:2] for label, options in configs}
    rounds: dict[str, dict[int, list[dict[str, Any]]]] = {label: {c: [] for c in LEVELS} for label in servers}
    try:
        for r in range(args.rounds):
            for c in LEVELS:
                for label in list(servers) if r % 2 == 0 else list(servers)[::-1]:
                    rounds[label][c].append(load(servers[label][1], c, args.requests, args.seconds, bodies))
    finally:
        for proc, _ in servers.values():
            stop(proc)
    served = {
        label: [sorted(runs, key=lambda x: x["req_per_s"])[len(runs) // 2] for runs in by_level.values()]
        for label, by_level in rounds.items()
    }
    print(
        f"{'':14}{'conc':>5}{'req/s':>9}{'p50 ms':>8}{'p95 ms':>8}{'p99 ms':>8}{'errors':>7}"
        "   in-process inputs/s"
    )
    for label, rows in served.items():
        for r in rows:
            b = r["concurrency"]
            extra = (
                f"   b{b}: {inproc[f'decode+model b{b}']:,.0f} decode+model, "
                f"{inproc[f'model b{b}']:,.0f} model"
                if label == "batching"
                else ""
            )
            print(
                f"{label:14}{b:>5}{r['req_per_s']:>9,.0f}{r['p50_ms']:>8.2f}{r['p95_ms']:>8.2f}"
                f"{r['p99_ms']:>8.2f}{r['errors']:>7}{extra}"
            )
    bat32, one32 = served["batching"][-1]["req_per_s"], served["batch-1"][-1]["req_per_s"]
    ratios = {
        "served_c32_over_inprocess_b32_decode_model": bat32 / inproc["decode+model b32"],
        "served_c32_over_inprocess_b32_model": bat32 / inproc["model b32"],
        "batching_over_batch1_c32": bat32 / one32,
        "p99_ms_c1": served["batching"][0]["p99_ms"],
    }
    print(
        f"served c32 / in-process b32: {ratios['served_c32_over_inprocess_b32_decode_model']:.2f} "
        f"(decode+model), {ratios['served_c32_over_inprocess_b32_model']:.2f} (model alone); "
        f"batching / batch-1 at c32: {ratios['batching_over_batch1_c32']:.2f}; "
        f"p99 at c1: {ratios['p99_ms_c1']:.2f} ms"
    )
    return {"cold_start_s": cold, "in_process_inputs_per_s": inproc, "served": served, "ratios": ratios}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-dir", type=Path, required=True, help="the Fashion-MNIST folder (IDX files)")
    ap.add_argument("--models", default="mlp5,cnn", help="recipes to train and serve (default mlp5,cnn)")
    ap.add_argument("--limit", type=int, default=5000, help="training examples for the 1-epoch runs")
    ap.add_argument("--requests", type=int, default=1000, help="requests per load level at most")
    ap.add_argument("--seconds", type=float, default=4.0, help="seconds per load level at most")
    ap.add_argument("--rounds", type=int, default=3, help="rounds of every level (median reported)")
    ap.add_argument("--cold", type=int, default=3, help="cold starts per model")
    ap.add_argument("--inproc-seconds", type=float, default=1.0, help="seconds per in-process measurement")
    ap.add_argument("--json", type=Path, help="also write the results here")
    args = ap.parse_args()
    sys.path.insert(0, str(REPO))
    before = os.getloadavg()
    print(
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
        f"{platform.platform()}, Python {platform.python_version()}; load average {before[0]:.2f} before",
        flush=True,
    )
    bodies = pngs(64)
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models.split(","):
            model = train_and_export(name, args.data_dir, Path(tmp), args.limit)
            results[name] = bench_model(name, model, args, bodies)
    after = os.getloadavg()
    print(f"\nload average {after[0]:.2f} after")
    if args.json:
        machine = {"cpus": os.cpu_count(), "platform": platform.platform(), "loadavg": [before, after]}
        out = {"machine": machine}
        args.json.write_text(json.dumps({**out, "models": results}, indent=2))


if __name__ == "__main__":
    main()
