"""The ASGI app (Starlette): ``POST /predict`` and the endpoints around it.

``create_app`` is what uvicorn's workers call (``factory=True``); the settings come in
:data:`mnistkit.serve.config.ENV_VAR`. Each request's files are read by
:func:`mnistkit.evaluation.inputs.read_files` and answered by
:func:`mnistkit.evaluation.inputs.prediction_items`, exactly as ``mnistkit predict`` does; only
the model call goes through the :class:`~mnistkit.serve.batcher.Batcher`. Every refusal is JSON
``{"error": ..., "problem": ...}`` with a 4xx (503 when busy); an unexpected failure is a 500
with no traceback in it (the traceback goes to the server's log).
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from mnistkit.errors import RunError
from mnistkit.evaluation.inputs import prediction_items, read_files
from mnistkit.export.runtime import OnnxModel, load_model
from mnistkit.serve.batcher import Batcher, Overloaded
from mnistkit.serve.config import ServeConfig, file_sha256
from mnistkit.serve.metrics import CONTENT_TYPE, Metrics
from mnistkit.serve.uploads import ACCEPTED, ServeError, request_inputs

log = logging.getLogger("mnistkit.serve")
RETRY_AFTER_S = 1  # what a 503 asks the client to wait
_PATHS = ("/", "/predict", "/health", "/metadata", "/metrics", "/openapi.json")
_INLINE_BYTES = 64 * 1024  # smaller bodies are decoded on the event loop; larger ones in a thread


def create_app(config: ServeConfig | None = None) -> Any:
    from starlette.applications import Starlette
    from starlette.routing import Route

    config = config or ServeConfig.from_env()
    # One ONNX Runtime thread: the batcher's worker thread runs the model while the event loop
    # parses and decodes the next requests on another core; ORT's own pool of one thread per core
    # only took those cores away from it (issue 23: cnn at concurrency 32, 962 -> 1,529 req/s on
    # 2 cores). More cores: --workers.
    model = load_model(Path(config.model), intra_op_threads=1)
    state = _State(config, model)
    routes = [
        Route("/", state.page, methods=["GET"]),
        Route("/predict", state.predict, methods=["POST"]),
        Route("/health", state.health, methods=["GET"]),
        Route("/metadata", state.metadata, methods=["GET"]),
        Route("/metrics", state.metrics_text, methods=["GET"]),
        Route("/openapi.json", state.openapi, methods=["GET"]),
    ]
    app = Starlette(
        routes=routes,
        lifespan=state.lifespan,
        exception_handlers={Exception: _internal_error, 404: _http_error, 405: _http_error},
    )
    return _Timed(app, state.metrics)


class _State:
    def __init__(self, config: ServeConfig, model: OnnxModel) -> None:
        self.config = config
        self.model = model
        self.metrics = Metrics()
        self.batcher = Batcher(
            model.probabilities, config.max_batch, config.max_wait_ms, config.max_queue, self.metrics
        )
        self.ready = False
        meta = model.meta
        self.model_summary = {
            "file": Path(config.model).name,
            "sha256": file_sha256(Path(config.model)),
            "run_dir": meta["run_dir"],
            "checkpoint": meta["checkpoint"],
            "checkpoint_when": meta["checkpoint_when"],
            "dataset": meta["dataset"],
        }

    @asynccontextmanager
    async def lifespan(self, app: Any) -> AsyncIterator[None]:
        from mnistkit.serve.signals import drain_on_signals

        self.batcher.start()
        self.ready = True
        with drain_on_signals(self._shutting_down):
            yield
        await self.batcher.stop()

    def _shutting_down(self) -> None:
        self.ready = False
        self.batcher.drain()

    # ------------------------------------------------------------------ endpoints
    async def predict(self, request: Any) -> Any:
        self.batcher.announce()  # a batch in the making may wait for this request's inputs
        submitted = False
        try:
            top, invert = _query(request)
            files = await request_inputs(request, int(self.config.max_body_mb * 1e6), self.config.max_files)
            info = self.model.info
            notes: list[list[str]] = []
            try:
                if sum(len(f.data) for f in files) <= _INLINE_BYTES:
                    raw = read_files(files, info, invert, notes)
                else:
                    from starlette.concurrency import run_in_threadpool

                    raw = await run_in_threadpool(read_files, files, info, invert, notes)
            except RunError as exc:
                raise ServeError(422, "unreadable_input", str(exc)) from None
            try:
                submitted = True
                probs = await self.batcher.probabilities(raw)
            except Overloaded as exc:
                raise ServeError(503, "overloaded", str(exc), {"Retry-After": str(RETRY_AFTER_S)}) from None
        except ServeError as exc:
            return _error(exc.status, exc.problem, str(exc), exc.headers)
        finally:
            if not submitted:
                self.batcher.withdraw()
        items = prediction_items(files, probs, raw, info, top, invert, notes, note_list=True)
        return _json({"predictions": items, "model": self.model_summary})

    async def health(self, request: Any) -> Any:
        status = 200 if self.ready else 503
        return _json({"live": True, "ready": self.ready, "queue": self.batcher.pending}, status)

    async def metadata(self, request: Any) -> Any:
        meta = self.model.meta
        return _json(
            {
                "classes": list(meta["classes"]),
                "input": {
                    "kind": meta["input_kind"],
                    "dtype": meta["input_dtype"],
                    "shape": meta["input_shape"],
                    "normalization": meta["normalization"],
                    "features": meta["features"],
                    "accepts": ACCEPTED,
                },
                "model": {**self.model_summary, "bytes": Path(self.config.model).stat().st_size},
                "source": {
                    "run_dir": meta["run_dir"],
                    "recipe_name": meta["recipe_name"],
                    "checkpoint": meta["checkpoint"],
                    "checkpoint_epoch": meta["checkpoint_epoch"],
                    "checkpoint_when": meta["checkpoint_when"],
                    "checkpoint_test_accuracy": meta["checkpoint_test_accuracy"],
                    "mnistkit_version": meta["mnistkit_version"],
                },
                "limits": {
                    "max_body_bytes": int(self.config.max_body_mb * 1e6),
                    "max_files": self.config.max_files,
                    "max_queue": self.config.max_queue,
                },
                "batching": {"max_batch": self.config.max_batch, "max_wait_ms": self.config.max_wait_ms},
            }
        )

    async def metrics_text(self, request: Any) -> Any:
        from starlette.responses import Response

        return Response(self.metrics.text(), media_type=CONTENT_TYPE)

    async def openapi(self, request: Any) -> Any:
        from mnistkit.serve.openapi import openapi

        return _json(openapi(self.model.meta, self.config))

    async def page(self, request: Any) -> Any:
        from starlette.responses import HTMLResponse

        from mnistkit.serve.page import page_html

        return HTMLResponse(page_html(self.model.meta))


def _query(request: Any) -> tuple[int, bool]:
    params = request.query_params
    raw_top = params.get("top", "1")
    if not raw_top.isdigit() or int(raw_top) < 1:
        raise ServeError(400, "bad_parameter", f"top={raw_top!r}: must be a whole number, at least 1")
    raw_invert = params.get("invert", "false").lower()
    if raw_invert not in ("true", "false", "1", "0"):
        raise ServeError(400, "bad_parameter", f"invert={raw_invert!r}: must be true or false")
    return int(raw_top), raw_invert in ("true", "1")


def _json(content: Any, status: int = 200, headers: dict[str, str] | None = None) -> Any:
    from starlette.responses import JSONResponse

    return JSONResponse(content, status_code=status, headers=headers)


def _error(status: int, problem: str, message: str, headers: dict[str, str] | None = None) -> Any:
    return _json({"error": message, "problem": problem}, status, headers)


async def _http_error(request: Any, exc: Any) -> Any:
    if exc.status_code == 404:
        return _error(404, "not_found", f"{request.url.path}: no such endpoint; see /openapi.json")
    return _error(exc.status_code, "method_not_allowed", f"{request.method} {request.url.path}: not allowed")


async def _internal_error(request: Any, exc: Exception) -> Any:
    log.exception("%s %s failed", request.method, request.url.path)
    return _error(500, "internal_error", "the server failed on this request (its log says why)")


class _Timed:
    """ASGI middleware: every HTTP request's status and duration into the metrics."""

    def __init__(self, app: Any, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500

        async def send_status(message: dict[str, Any]) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            path = scope["path"] if scope["path"] in _PATHS else "other"
            self.metrics.observe_request(path, status, time.perf_counter() - start)
