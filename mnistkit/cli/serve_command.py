"""The ``mnistkit serve`` command (registered onto the main app by :func:`register`).

The work is in :mod:`mnistkit.serve`; Starlette and uvicorn (the ``serve`` extra) are imported
only when the command runs, and nothing on its path imports torch.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer

from mnistkit.errors import RunError
from mnistkit.serve.config import ServeConfig

_D = ServeConfig(model="")  # the defaults, from the one place they are set
INSTALL_HINT = "pip install 'mnistkit[serve]'"


def _missing_extra() -> str | None:
    import importlib

    missing = []
    for module in ("starlette", "uvicorn", "multipart"):
        try:
            importlib.import_module(module)
        except ImportError:
            missing.append(module)
    return ", ".join(missing) or None


def register(app: typer.Typer, guarded: Callable[[Callable[[], Any]], Any]) -> None:
    @app.command()
    def serve(
        target: Annotated[
            Path,
            typer.Argument(
                help="A run directory (its export is served; exported first if missing) or a model.onnx.",
                show_default=False,
                metavar="RUN_DIR|MODEL.onnx",
            ),
        ],
        host: Annotated[
            str, typer.Option("--host", help="Address to listen on (loopback by default).", metavar="ADDR")
        ] = _D.host,
        port: Annotated[int, typer.Option("--port", "-p", help="TCP port.", metavar="PORT")] = _D.port,
        workers: Annotated[
            int,
            typer.Option("--workers", min=1, help="Server processes, each with its own model.", metavar="N"),
        ] = _D.workers,
        max_batch: Annotated[
            int, typer.Option("--max-batch", min=1, help="Most inputs run in one model call.", metavar="B")
        ] = _D.max_batch,
        max_wait_ms: Annotated[
            float,
            typer.Option(
                "--max-wait-ms",
                min=0,
                help="How long a batch waits for more inputs to join it.",
                metavar="MS",
            ),
        ] = _D.max_wait_ms,
        max_queue: Annotated[
            int,
            typer.Option(
                "--max-queue", min=1, help="Inputs queued or running per worker; beyond: 503.", metavar="N"
            ),
        ] = _D.max_queue,
        max_body_mb: Annotated[
            float, typer.Option("--max-body-mb", help="Largest request body (larger: 413).", metavar="MB")
        ] = _D.max_body_mb,
        max_files: Annotated[
            int, typer.Option("--max-files", min=1, help="Most files in one request.", metavar="N")
        ] = _D.max_files,
        access_log: Annotated[
            bool,
            typer.Option("--access-log/--no-access-log", help="Log one line per request (off: faster)."),
        ] = _D.access_log,
    ) -> None:
        """Serve a model over HTTP: POST /predict, /health, /metadata, /metrics, a page at /.

        The exported ONNX model runs in ONNX Runtime (no torch); files are read exactly as
        `mnistkit predict` reads them, and answers carry the same classes and notes.
        Concurrent requests are batched (--max-batch, --max-wait-ms). Ctrl-C or SIGTERM
        lets requests in flight finish, then exits 0. See docs/serving.md."""

        def body() -> None:
            missing = _missing_extra()
            if missing:
                raise RunError(f"mnistkit serve needs the 'serve' extra ({missing} missing): {INSTALL_HINT}")
            from mnistkit.serve.config import model_to_serve
            from mnistkit.serve.server import serve as run_server

            config = ServeConfig(
                model="",
                host=host,
                port=port,
                workers=workers,
                max_batch=max_batch,
                max_wait_ms=max_wait_ms,
                max_queue=max_queue,
                max_body_mb=max_body_mb,
                max_files=max_files,
                access_log=access_log,
            )
            config.check()  # before a possibly long export
            from dataclasses import replace

            run_server(replace(config, model=str(model_to_serve(target).resolve())))

        guarded(body)
