"""Dynamic batching: a bounded queue of jobs and one worker thread that owns the model.

The asyncio front end submits ``Job``s; the worker collects what is waiting (up to
``max_batch_size``, waiting at most ``window_s`` for more), runs the batch through
``chat_batch`` (one prefill, per-row verdict and sign, left padding) and posts events
back to each job's asyncio queue: ``("verdict", info)``, ``("delta", text)``,
``("done", ChatResult)`` or ``("error", exception)``. A cancelled job (timeout, client
gone) leaves the queue at once, or the running batch at its next decoding step.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..decode import RowSettings, chat_batch

log = logging.getLogger("scans.serve")


class QueueFull(Exception):
    """The queue holds ``max_queue`` waiting requests."""


@dataclass
class Job:
    """One request's work and its way back to the event loop."""

    encoded: tuple[list[int], int]
    label: str
    settings: RowSettings
    steer: bool
    stream: bool
    loop: asyncio.AbstractEventLoop
    events: asyncio.Queue = field(default_factory=asyncio.Queue)
    submitted: float = field(default_factory=time.monotonic)
    _cancel: threading.Event = field(default_factory=threading.Event)

    def cancel(self) -> None:
        self._cancel.set()

    @property
    def cancelled(self) -> bool:
        return self._cancel.is_set()

    def post(self, kind: str, payload: Any) -> None:
        """Thread-safe: hand an event to the job's event loop (dropped if the loop is gone)."""
        try:
            self.loop.call_soon_threadsafe(self.events.put_nowait, (kind, payload))
        except RuntimeError:  # loop closed
            pass


@dataclass
class BatchStats:
    """Counts for the batching factor: rows and forward passes."""

    batches: int = 0
    rows: int = 0
    forwards: int = 0
    forward_rows: int = 0


class Batcher:
    """A bounded queue and one model worker thread (see the module docstring)."""

    def __init__(
        self,
        scans: Any,
        *,
        max_batch_size: int = 16,
        max_queue: int = 256,
        window_s: float = 0.01,
        on_batch: Callable[[int], None] | None = None,
        on_forward: Callable[[int], None] | None = None,
    ) -> None:
        self.scans = scans
        self.max_batch_size = max_batch_size
        self.max_queue = max_queue
        self.window_s = window_s
        self.on_batch = on_batch
        self.on_forward = on_forward
        self.stats = BatchStats()
        self.running = 0  # rows in the batch being decoded
        self._pending: deque[Job] = deque()
        self._cond = threading.Condition()
        self._paused = False
        self._stopping = False
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------ front end
    def submit(self, job: Job) -> None:
        """Queue a job; raises ``QueueFull`` when ``max_queue`` requests are waiting."""
        with self._cond:
            self._purge()
            if len(self._pending) >= self.max_queue:
                raise QueueFull
            self._pending.append(job)
            self._cond.notify_all()

    def wake(self) -> None:
        """Re-check the queue (after a cancellation, so the slot frees at once)."""
        with self._cond:
            self._purge()
            self._cond.notify_all()

    @property
    def depth(self) -> int:
        """Requests waiting (not yet in a batch), cancelled ones excluded."""
        with self._cond:
            return sum(1 for j in self._pending if not j.cancelled)

    def pause(self) -> None:
        """Stop taking new batches (the running one finishes); for maintenance and tests."""
        with self._cond:
            self._paused = True

    def resume(self) -> None:
        with self._cond:
            self._paused = False
            self._cond.notify_all()

    def start(self) -> None:
        self._thread = threading.Thread(target=self._work, name="scans-batcher", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        with self._cond:
            self._stopping = True
            for job in self._pending:
                job.post("error", RuntimeError("server shutting down"))
            self._pending.clear()
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)

    # ------------------------------------------------------------------ worker
    def _purge(self) -> None:
        if any(j.cancelled for j in self._pending):
            self._pending = deque(j for j in self._pending if not j.cancelled)

    def _collect(self) -> list[Job] | None:
        with self._cond:
            while not self._stopping and (self._paused or not self._pending):
                self._cond.wait()
                self._purge()
            if self._stopping:
                return None
            deadline = time.monotonic() + self.window_s
            while len(self._pending) < self.max_batch_size and not self._stopping:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._cond.wait(left)
                self._purge()
            jobs = []
            while self._pending and len(jobs) < self.max_batch_size:
                job = self._pending.popleft()
                if not job.cancelled:
                    jobs.append(job)
            return jobs

    def _work(self) -> None:
        while True:
            jobs = self._collect()
            if jobs is None:
                return
            if jobs:
                self._run(jobs)

    def _run(self, jobs: list[Job]) -> None:
        settings = []
        for job in jobs:
            on_text = (lambda text, job=job: job.post("delta", text)) if job.stream else None
            settings.append(
                dataclasses.replace(job.settings, on_text=on_text, cancelled=lambda job=job: job.cancelled)
            )

        def on_verdicts(verdicts: list[Any], signs: list[int]) -> None:
            for job, verdict, sign in zip(jobs, verdicts, signs):
                job.post("verdict", (verdict, sign))

        def on_forward(rows: int) -> None:
            self.stats.forwards += 1
            self.stats.forward_rows += rows
            self.running = rows
            if self.on_forward is not None:
                self.on_forward(rows)

        self.stats.batches += 1
        self.stats.rows += len(jobs)
        if self.on_batch is not None:
            self.on_batch(len(jobs))
        # the vllm backend (scans.backends.vllm.VLLMScans) runs the batch in its engine
        if getattr(self.scans, "backend", "") == "vllm":
            run_batch = self.scans.chat_batch
        else:
            run_batch = functools.partial(chat_batch, self.scans)
        try:
            results = run_batch(
                [j.encoded for j in jobs],
                settings,
                steer_rows=[j.steer for j in jobs],
                labels=[j.label for j in jobs],
                on_verdicts=on_verdicts,
                on_forward=on_forward,
            )
        except Exception as exc:  # the worker survives; every job of the batch gets the error
            log.exception("batch of %d failed", len(jobs))
            for job in jobs:
                job.post("error", exc)
        else:
            for job, result in zip(jobs, results):
                job.post("done", result)
        finally:
            self.running = 0
