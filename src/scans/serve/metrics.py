"""Prometheus metrics of one server (own registry, so several apps can live in one process)."""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2, 4, 8, 15, 30, 60, 120, 300)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)


class Metrics:
    """Requests by status, latency, tokens, verdicts, queue depth, batch sizes, forward rows."""

    def __init__(self, queue_depth: Callable[[], int], running: Callable[[], int]) -> None:
        r = self.registry = CollectorRegistry()
        self.requests = Counter(
            "scans_requests", "HTTP requests by endpoint and status", ["endpoint", "status"], registry=r
        )
        self.latency = Histogram("scans_request_latency_seconds", "Chat completion latency (until the last byte)",
                                 buckets=LATENCY_BUCKETS, registry=r)  # fmt: skip
        self.prompt_tokens = Counter("scans_prompt_tokens", "Prompt tokens of answered requests", registry=r)
        self.completion_tokens = Counter("scans_completion_tokens", "Generated tokens", registry=r)
        self.verdicts = Counter("scans_verdicts", "Classifier verdicts", ["verdict", "steered"], registry=r)
        self.rejected = Counter(
            "scans_rejected", "Requests refused before running (429 queue full)", registry=r
        )
        self.batch_size = Histogram(
            "scans_batch_size", "Requests per batch", buckets=BATCH_BUCKETS, registry=r
        )
        self.forwards = Counter(
            "scans_forward_passes", "Model forward passes (prefill, probe, decode steps)", registry=r
        )
        self.forward_rows = Counter("scans_forward_rows", "Batch rows summed over forward passes", registry=r)
        depth = Gauge("scans_queue_depth", "Requests waiting for a batch", registry=r)
        depth.set_function(queue_depth)
        rows = Gauge("scans_running_rows", "Rows in the batch being decoded", registry=r)
        rows.set_function(running)

    def forward(self, rows: int) -> None:
        self.forwards.inc()
        self.forward_rows.inc(rows)

    def render(self) -> bytes:
        return generate_latest(self.registry)
