"""Dynamic batching: inputs of concurrent requests run together in one ONNX Runtime call.

Every input (one file of a request) is queued with a future. One task takes the first input, then
keeps taking more until ``max_batch`` inputs are in hand or ``max_wait_ms`` has passed since the
first, and runs them as one batch in a worker thread (ONNX Runtime releases the GIL, so the event
loop keeps accepting requests meanwhile). While one batch runs the next one gathers, so under load
batches fill without any wait. The wait is only spent while another request is on its way (its
handler has started: :meth:`Batcher.announce`, body still arriving or being decoded): a lone
request runs at once, so batching costs nothing at concurrency 1.

Admission is bounded: ``max_queue`` inputs at most are waiting or running; a request that would
go beyond it is refused (:class:`Overloaded`, a 503) instead of letting memory grow.
:meth:`Batcher.drain` (on SIGTERM) stops the waiting: what is queued runs now.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from mnistkit.serve.metrics import Metrics


class Overloaded(Exception):
    """The queue has no room for a request's inputs."""


@dataclass
class _Item:
    raw: np.ndarray  # one input, [C, ...]
    future: asyncio.Future[np.ndarray]


_DRAIN = object()  # queued by drain(): stop waiting for a batch to fill


class Batcher:
    def __init__(
        self,
        run: Callable[[np.ndarray], np.ndarray],
        max_batch: int,
        max_wait_ms: float,
        max_queue: int,
        metrics: Metrics,
    ) -> None:
        self._run = run  # raw batch [N, C, ...] -> probabilities [N, classes]
        self.max_batch = max_batch
        self.max_wait = max_wait_ms / 1000
        self.max_queue = max_queue
        self.pending = 0  # inputs admitted and not yet answered
        self.arriving = 0  # requests announced (being read or decoded), not yet submitted
        self._arrived = asyncio.Event()  # set when an input is queued or an announced request ends
        self._metrics = metrics
        self._queue: asyncio.Queue[_Item | object] = asyncio.Queue()
        self._draining = False
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="mnistkit-ort")
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._loop())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self._executor.shutdown(wait=True)

    def drain(self) -> None:
        """From now on run what is queued at once (shutdown: in-flight requests finish quickly)."""
        self._draining = True
        self._queue.put_nowait(_DRAIN)
        self._arrived.set()  # a batch waiting to fill stops waiting

    def announce(self) -> None:
        """A request has started: a batch in the making may wait for its inputs. Every
        announcement ends with :meth:`probabilities` or :meth:`withdraw`."""
        self.arriving += 1
        self._metrics.set_arriving(self.arriving)

    def withdraw(self) -> None:
        """An announced request will not submit inputs (refused, or the client went away)."""
        self.arriving -= 1
        self._metrics.set_arriving(self.arriving)
        self._arrived.set()

    async def probabilities(self, raw: np.ndarray) -> np.ndarray:
        """Class probabilities ``[N, classes]`` of an announced request's raw inputs ``[N, C, ...]``."""
        self.arriving -= 1
        self._metrics.set_arriving(self.arriving)
        self._arrived.set()
        n = len(raw)
        if self.pending + n > self.max_queue:
            raise Overloaded(
                f"the server is busy: {self.pending} inputs queued or running, at most "
                f"{self.max_queue} (--max-queue); retry shortly"
            )
        self.pending += n
        self._metrics.set_queue(self.pending)
        loop = asyncio.get_running_loop()
        items = [_Item(x, loop.create_future()) for x in raw]
        try:
            for item in items:
                self._queue.put_nowait(item)
            self._arrived.set()
            return np.stack(await asyncio.gather(*(i.future for i in items)))
        finally:
            self.pending -= n
            self._metrics.set_queue(self.pending)

    def _take(self) -> _Item | None:
        """A queued input without waiting, or None (a drain marker is dropped)."""
        while True:
            try:
                got = self._queue.get_nowait()
            except asyncio.QueueEmpty:
                return None
            if isinstance(got, _Item):
                return got

    async def _gather(self, first: _Item) -> list[_Item]:
        """``first`` and what joins it: all that is queued, then, while another request is on its
        way and the wait is not over, what arrives, up to ``max_batch``."""
        loop = asyncio.get_running_loop()
        batch = [first]
        deadline = loop.time() + self.max_wait
        while len(batch) < self.max_batch:
            item = self._take()
            if item is not None:
                batch.append(item)
                continue
            remaining = deadline - loop.time()
            if self.arriving <= 0 or self._draining or remaining <= 0:
                break
            self._arrived.clear()
            try:
                await asyncio.wait_for(self._arrived.wait(), remaining)
            except asyncio.TimeoutError:
                break
        return batch

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            first = await self._queue.get()
            if not isinstance(first, _Item):
                continue  # a drain marker with nothing waiting
            batch = await self._gather(first)
            batch = [i for i in batch if not i.future.done()]  # callers gone (disconnected)
            if not batch:
                continue
            try:
                probs = await loop.run_in_executor(
                    self._executor, self._run, np.stack([i.raw for i in batch])
                )
            except Exception as exc:  # the model failed: every caller of the batch gets the error
                for i in batch:
                    if not i.future.done():
                        i.future.set_exception(exc)
                continue
            self._metrics.observe_batch(len(batch))
            for i, p in zip(batch, probs, strict=True):
                if not i.future.done():
                    i.future.set_result(p)
