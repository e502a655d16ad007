"""What ``mnistkit serve`` serves and how: :class:`ServeConfig` (every default, once) and the model.

A run directory is served through its export (``RUN_DIR/export/model.onnx``); when there is none,
``mnistkit export RUN_DIR`` runs first in a child process (it imports torch and checks the ONNX
model against the checkpoint), so the serving process itself never loads torch.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from mnistkit.errors import RunError
from mnistkit.export.metadata import default_model_path
from mnistkit.runs.directory import CHECKPOINTS, RunDir

ENV_VAR = "MNISTKIT_SERVE_CONFIG"  # how the settings reach uvicorn's worker processes (JSON)


@dataclass(frozen=True)
class ServeConfig:
    model: str  # the .onnx file served
    host: str = "127.0.0.1"  # loopback: binding elsewhere is the user's explicit choice
    port: int = 8000
    workers: int = 1
    max_batch: int = 32  # inputs in one ONNX Runtime call
    # How long the first input of a batch waits for others. Inputs that arrive while a batch runs
    # are batched anyway; the wait only helps when requests arrive spread out.
    max_wait_ms: float = 2.0
    max_queue: int = 256  # inputs waiting or running, per worker; beyond it: 503 + Retry-After
    max_body_mb: float = 10.0  # a request body larger than this: 413
    max_files: int = 64  # inputs in one request
    timeout_graceful_s: float = 30.0  # SIGTERM: how long in-flight requests may take to finish
    # One log line per request: off by default. Measured (docs/performance.md): 1.7x the requests
    # per second at concurrency 32 without it; /metrics counts requests, and a proxy logs them.
    access_log: bool = False

    def to_env(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_env(cls) -> ServeConfig:
        raw = os.environ.get(ENV_VAR)
        if not raw:
            raise RunError(f"{ENV_VAR} is not set: start the server with `mnistkit serve`")
        values = json.loads(raw)
        return cls(**{f.name: values[f.name] for f in fields(cls) if f.name in values})

    def check(self) -> None:
        """Refuse settings that cannot work, naming the option."""
        for option, value, least in (
            ("--workers", self.workers, 1),
            ("--max-batch", self.max_batch, 1),
            ("--max-queue", self.max_queue, 1),
            ("--max-files", self.max_files, 1),
        ):
            if value < least:
                raise RunError(f"{option} {value}: must be at least {least}")
        if self.max_wait_ms < 0:
            raise RunError(f"--max-wait-ms {self.max_wait_ms:g}: must be 0 or more")
        if self.max_body_mb <= 0:
            raise RunError(f"--max-body-mb {self.max_body_mb:g}: must be more than 0")
        if self.max_queue < self.max_files:
            raise RunError(
                f"--max-queue {self.max_queue} is smaller than --max-files {self.max_files}: "
                "a request with that many files could never be queued"
            )


def model_to_serve(target: Path) -> Path:
    """The .onnx file for ``mnistkit serve TARGET``: TARGET itself, or a run directory's export,
    written first (``mnistkit export RUN_DIR`` in a child process) if it does not exist yet."""
    target = Path(target)
    if target.suffix.lower() == ".onnx" and not target.is_dir():
        if not target.is_file():
            raise RunError(f"{target}: no such file")
        return target
    if not target.is_dir():
        raise RunError(f"{target}: no such run directory or .onnx file")
    if not (target / "recipe.yaml").is_file():
        raise RunError(
            f"{target}: not a run directory (no recipe.yaml); give a run directory or a model.onnx"
        )
    model = default_model_path(target)
    checkpoint = "best"
    if model.is_file():
        checkpoint = _exported_from(model)
        ckpt = RunDir(target).checkpoint_path(checkpoint)
        if not (ckpt.is_file() and ckpt.stat().st_mtime > model.stat().st_mtime):
            return model
        # The run trained on (a --resume, more epochs) after the export: serving the old file
        # would answer with a model the run no longer has.
        print(f"{model} is older than {ckpt}: exporting the run again (mnistkit export)", file=sys.stderr)
    else:
        print(f"{model} does not exist yet: exporting the run first (mnistkit export)", file=sys.stderr)
    # A child process: the export imports torch; the server that follows must not carry it.
    argv = [sys.executable, "-m", "mnistkit", "export", str(target), "--checkpoint", checkpoint]
    done = subprocess.run(argv, check=False)
    if done.returncode != 0 or not model.is_file():
        raise RunError(f"{target}: the export failed (above), nothing to serve; fix it and run again")
    return model


def _exported_from(model: Path) -> str:
    """Which checkpoint (best or last) the export beside the run was made from (its model.json)."""
    try:
        value = json.loads(model.with_name("model.json").read_text()).get("checkpoint")
    except (OSError, ValueError):
        return "best"
    return value if value in CHECKPOINTS else "best"


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
