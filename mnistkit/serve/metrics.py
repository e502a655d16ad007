"""Request counts, latencies, batch sizes and queue depth in the Prometheus text format (0.0.4).

Written by hand (a few counters and two histograms) rather than with prometheus_client: one
dependency less. With ``--workers N`` each worker process keeps and reports its own figures;
a scraper sees whichever worker answered (the ``worker`` label, its process id, tells them apart).
"""

from __future__ import annotations

import os
from bisect import bisect_left
from collections import Counter

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class _Histogram:
    def __init__(self, buckets: tuple[float, ...]) -> None:
        self.buckets = buckets
        self.counts = [0] * (len(buckets) + 1)  # the last one: above every bucket (+Inf only)
        self.total = 0.0
        self.n = 0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.buckets, value)] += 1
        self.total += value
        self.n += 1

    def lines(self, name: str, labels: str) -> list[str]:
        out, running = [], 0
        sep = "," if labels else ""
        for bound, count in zip(self.buckets, self.counts, strict=False):
            running += count
            out.append(f'{name}_bucket{{{labels}{sep}le="{bound:g}"}} {running}')
        out.append(f'{name}_bucket{{{labels}{sep}le="+Inf"}} {self.n}')
        out.append(f"{name}_sum{{{labels}}} {self.total:.6f}")
        out.append(f"{name}_count{{{labels}}} {self.n}")
        return out


class Metrics:
    def __init__(self) -> None:
        self.requests: Counter[tuple[str, int]] = Counter()  # (path, status) -> count
        self.latency: dict[str, _Histogram] = {}
        self.batch = _Histogram(BATCH_BUCKETS)
        self.inputs = 0
        self.queue = 0
        self.arriving = 0

    def observe_request(self, path: str, status: int, seconds: float) -> None:
        self.requests[(path, status)] += 1
        self.latency.setdefault(path, _Histogram(LATENCY_BUCKETS)).observe(seconds)

    def observe_batch(self, size: int) -> None:
        self.batch.observe(size)
        self.inputs += size

    def set_queue(self, pending: int) -> None:
        self.queue = pending

    def set_arriving(self, requests: int) -> None:
        self.arriving = requests

    def text(self) -> str:
        worker = f'worker="{os.getpid()}"'
        lines = [
            "# HELP mnistkit_requests_total HTTP requests answered, by path and status.",
            "# TYPE mnistkit_requests_total counter",
        ]
        for (path, status), n in sorted(self.requests.items()):
            lines.append(f'mnistkit_requests_total{{{worker},path="{path}",status="{status}"}} {n}')
        lines += [
            "# HELP mnistkit_request_duration_seconds Time from request to answer, by path.",
            "# TYPE mnistkit_request_duration_seconds histogram",
        ]
        for path, hist in sorted(self.latency.items()):
            lines += hist.lines("mnistkit_request_duration_seconds", f'{worker},path="{path}"')
        lines += [
            "# HELP mnistkit_batch_size Inputs per ONNX Runtime call (dynamic batching).",
            "# TYPE mnistkit_batch_size histogram",
            *self.batch.lines("mnistkit_batch_size", worker),
            "# HELP mnistkit_inputs_total Inputs classified.",
            "# TYPE mnistkit_inputs_total counter",
            f"mnistkit_inputs_total{{{worker}}} {self.inputs}",
            "# HELP mnistkit_queue_inputs Inputs queued or running now.",
            "# TYPE mnistkit_queue_inputs gauge",
            f"mnistkit_queue_inputs{{{worker}}} {self.queue}",
            "# HELP mnistkit_requests_arriving Predict requests being received or decoded now.",
            "# TYPE mnistkit_requests_arriving gauge",
            f"mnistkit_requests_arriving{{{worker}}} {self.arriving}",
        ]
        return "\n".join(lines) + "\n"
