"""SIGINT/SIGTERM while serving: the batcher is told first, then uvicorn shuts down as usual."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import threading
from collections.abc import Callable, Iterator
from typing import Any

SIGNALS = (signal.SIGINT, signal.SIGTERM)


@contextlib.contextmanager
def drain_on_signals(callback: Callable[[], None]) -> Iterator[None]:
    """While inside: SIGINT/SIGTERM also run ``callback`` on the event loop, then whatever
    handler was there before (uvicorn's, which starts the graceful shutdown)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    loop = asyncio.get_running_loop()
    previous = {sig: signal.getsignal(sig) for sig in SIGNALS}

    def handler(sig: int, frame: Any) -> None:
        loop.call_soon_threadsafe(callback)  # the safe way to reach the loop from a signal handler
        before = previous[sig]
        if callable(before):
            before(sig, frame)

    for sig in SIGNALS:
        signal.signal(sig, handler)
    try:
        yield
    finally:
        for sig, before in previous.items():
            signal.signal(sig, before)
