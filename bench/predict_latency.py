#!/usr/bin/env python
"""Predict latency and cold start: ``predict RUN_DIR`` (torch) next to ``predict model.onnx``
(ONNX Runtime, no torch), in one run of this script, on the same model and the same image.

* cold start: wall time of a whole ``python -m mnistkit predict X image.png --json`` process,
  from exec to exit (imports, model load, preprocessing, one prediction, JSON out). The two
  commands alternate, so machine noise lands on both alike; median and min of ``--repeat`` each.
  Each child also reports whether torch ended up in ``sys.modules``.
* single-image latency, in one warm process: (a) end to end: read and preprocess the file, run
  the model, softmax; (b) the model call alone on the prepared input. Alternating again, median
  and 90th percentile of ``--calls`` each. Thread settings are each library's defaults, as the
  CLI leaves them.

The model: ``--run RUN_DIR`` (any image run; exported to a temporary folder), or by default a
run of recipes/quickstart.yaml trained here (8x8 digits, offline, a few seconds), or with
``--fashion DIR`` the tutorial's MLP (recipes/mlp5.yaml) trained for one epoch on Fashion-MNIST.

    python bench/predict_latency.py                         # quick start model
    python bench/predict_latency.py --fashion ../shared/data/fashion-mnist
    python bench/predict_latency.py --run runs/cnn-2026... --repeat 10 --calls 500 --json out.json

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
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
CHILD_TAIL = "import sys; print('torch-imported', 'torch' in sys.modules, file=sys.stderr)"


def sh(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(args, cwd=REPO, env=env, capture_output=True, text=True, check=False)


def child_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    return env


def train(tmp: Path, fashion: Path | None, env: dict[str, str]) -> Path:
    run = tmp / "run"
    if fashion is None:
        cmd = ["run", "recipes/quickstart.yaml", "--set", "epochs=3"]
    else:
        cmd = ["run", "recipes/mlp5.yaml", "--set", "data.dataset=fashion_mnist", "--set", "epochs=1"]
        cmd += ["--data-dir", str(fashion)]
    cmd += ["--set", "expect=null"]  # a shortened run makes a model to time, not judged by expect:
    res = sh([sys.executable, "-m", "mnistkit", *cmd, "--out", str(run), "--progress", "none"], env)
    if res.returncode != 0:
        sys.exit(f"training failed:\n{res.stdout}\n{res.stderr}")
    return run


def cold_start(target: Path, image: Path, env: dict[str, str]) -> tuple[float, bool]:
    """Seconds for one predict process, and whether it imported torch."""
    code = f"from mnistkit.cli import main\ntry:\n    main()\nfinally:\n    {CHILD_TAIL}"
    args = [sys.executable, "-c", code, "predict", str(target), str(image), "--json"]
    t0 = time.perf_counter()
    res = sh(args, env)
    seconds = time.perf_counter() - t0
    if res.returncode != 0:
        sys.exit(f"{' '.join(args[3:])} failed:\n{res.stderr}")
    return seconds, "torch-imported True" in res.stderr


def warm_latency(run: Path, model: Path, image: Path, calls: int) -> dict[str, list[float]]:
    import numpy as np
    import torch

    from mnistkit.evaluation.predict import file_tensor, load_predictor, read_files
    from mnistkit.export.runtime import load_model

    pred = load_predictor(run, "best")
    onnx = load_model(model)
    x = file_tensor(image, pred.info)
    raw = read_files([image], onnx.info)

    def torch_e2e() -> Any:
        with torch.inference_mode():
            return torch.softmax(pred.model(file_tensor(image, pred.info)).float(), dim=1).numpy()

    def torch_model() -> Any:
        with torch.inference_mode():
            return pred.model(x)

    def onnx_e2e() -> Any:
        return onnx.probabilities(read_files([image], onnx.info))

    def onnx_model() -> Any:
        return onnx.probabilities(raw)

    fns = {
        "torch end to end": torch_e2e,
        "onnx end to end": onnx_e2e,
        "torch model call": torch_model,
        "onnx model call": onnx_model,
    }
    assert np.allclose(torch_e2e(), onnx_e2e(), atol=1e-5), "the two paths disagree"
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(20):  # warm-up: first calls allocate, pick kernels
        for fn in fns.values():
            fn()
    for i in range(calls):
        order = list(fns.items()) if i % 2 == 0 else list(fns.items())[::-1]
        for name, fn in order:
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    return times


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", type=Path, help="an existing image run directory (default: train one)")
    ap.add_argument("--fashion", type=Path, help="Fashion-MNIST folder: train recipes/mlp5.yaml on it")
    ap.add_argument("--repeat", type=int, default=7, help="cold starts per path (default 7)")
    ap.add_argument("--calls", type=int, default=300, help="warm single-image calls per path (default 300)")
    ap.add_argument("--json", type=Path, help="also write the results here")
    args = ap.parse_args()
    env = child_env()
    sys.path.insert(0, str(REPO))
    load_before = os.getloadavg()

    with tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        run = args.run or train(tmp, args.fashion, env)
        model = tmp / "model.onnx"
        res = sh([sys.executable, "-m", "mnistkit", "export", str(run), "--out", str(model), "--json"], env)
        if res.returncode != 0:
            sys.exit(f"export failed:\n{res.stderr}")
        meta = json.loads(res.stdout)
        if meta["input_kind"] != "image":
            sys.exit("this benchmark takes image runs (it predicts a PNG)")
        from PIL import Image

        c, h, w = meta["input_shape"][1:]
        image = tmp / "image.png"
        rng = __import__("numpy").random.default_rng(0)
        pixels = rng.integers(0, 256, (h, w) if c == 1 else (h, w, c), dtype="uint8")
        Image.fromarray(pixels).save(image)

        cold: dict[str, list[float]] = {"RUN_DIR (torch)": [], "model.onnx (onnxruntime)": []}
        torch_seen: dict[str, bool] = {}
        for i in range(args.repeat):
            pairs = [("RUN_DIR (torch)", run), ("model.onnx (onnxruntime)", model)]
            for name, target in pairs if i % 2 == 0 else pairs[::-1]:
                seconds, imported = cold_start(target, image, env)
                cold[name].append(seconds)
                torch_seen[name] = imported
        warm = warm_latency(run, model, image, args.calls)
    load_after = os.getloadavg()

    out: dict[str, Any] = {
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor() or platform.machine(),
            "cpus": os.cpu_count(),
            "loadavg_before": load_before,
            "loadavg_after": load_after,
            "python": platform.python_version(),
        },
        "model": {
            "recipe": meta["recipe_name"],
            "dataset": meta["dataset"],
            "input": meta["input_shape"],
            "onnx_bytes": meta["bytes"],
        },
        "cold_start_s": {
            k: {"median": statistics.median(v), "min": min(v), "n": len(v), "torch_imported": torch_seen[k]}
            for k, v in cold.items()
        },
        "single_image_us": {
            k: {
                "median": statistics.median(v) * 1e6,
                "p90": sorted(v)[int(0.9 * (len(v) - 1))] * 1e6,
                "n": len(v),
            }
            for k, v in warm.items()
        },
    }
    m = out["machine"]
    print(
        f"machine: {m['platform']}, {m['cpus']} CPUs, load average {m['loadavg_before'][0]:.2f} before, "
        f"{m['loadavg_after'][0]:.2f} after"
    )
    print(f"model: {meta['recipe_name']} on {meta['dataset']}, input {meta['input_shape']}")
    print(f"\ncold start (python -m mnistkit predict X image.png --json), {args.repeat} runs each:")
    print(f"  {'':28} {'median':>9} {'min':>9}  torch imported")
    for k, v in out["cold_start_s"].items():
        print(f"  {k:28} {v['median']:8.2f}s {v['min']:8.2f}s  {v['torch_imported']}")
    print(f"\nsingle image, warm process, {args.calls} calls each:")
    print(f"  {'':28} {'median':>10} {'p90':>10}")
    for k, v in out["single_image_us"].items():
        print(f"  {k:28} {v['median']:8.0f}µs {v['p90']:8.0f}µs")
    if args.json:
        args.json.write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
