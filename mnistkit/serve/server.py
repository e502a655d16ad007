"""Running the app under uvicorn: one process, or ``--workers N`` processes sharing the socket.

Shutdown (SIGTERM, or Ctrl-C's SIGINT): uvicorn stops accepting connections and waits for the
requests in flight; :func:`drain_on_signals` also tells the batcher to stop waiting for batches
to fill, so those requests are answered at once (:mod:`mnistkit.serve.signals`). uvicorn
re-raises the signal once it is done (so that a default handler would kill the process);
:func:`serve` has put a handler in place that ignores that second delivery, and ``mnistkit
serve`` then exits 0.
"""

from __future__ import annotations

import logging
import os
import signal
from typing import Any

from mnistkit.serve.config import ENV_VAR, ServeConfig
from mnistkit.serve.signals import SIGNALS


def serve(config: ServeConfig, log_level: str = "info") -> None:
    """Serve until SIGTERM or Ctrl-C; returns normally (exit 0) once in-flight requests are done."""
    import uvicorn

    os.environ[ENV_VAR] = config.to_env()  # what create_app reads, in this process or a worker
    options: dict[str, Any] = {
        "host": config.host,
        "port": config.port,
        "log_level": log_level,
        "timeout_graceful_shutdown": config.timeout_graceful_s,
        "server_header": False,
        "access_log": config.access_log,
    }
    from mnistkit.serve.app import create_app

    # Built here first, also with --workers: a model that cannot be served is a clean error now,
    # not a traceback in every worker.
    app = create_app(config)
    for sig in SIGNALS:  # uvicorn re-raises the signal after its graceful shutdown: let it pass
        signal.signal(sig, lambda s, f: None)
    if config.workers > 1:
        # uvicorn's supervisor: workers re-create the app from ENV_VAR; a dead worker is replaced.
        uvicorn.run("mnistkit.serve.app:create_app", workers=config.workers, factory=True, **options)
        return
    server = uvicorn.Server(uvicorn.Config(app, **options))
    server.run()
    if not server.started:
        logging.getLogger("mnistkit.serve").error("the server did not start (see above)")
        raise SystemExit(1)
