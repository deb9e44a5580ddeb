"""Batching: a bounded queue of jobs and one worker thread that owns the model.

The asyncio front end submits ``Job``s; the worker posts events back to each job's
asyncio queue: ``("verdict", (verdict, sign))``, ``("delta", text)``, ``("done", ChatResult)``
or ``("error", exception)``. Two modes:

- ``continuous`` (transformers backend): iteration-level batching. Before every decoding
  step, waiting jobs (up to ``max_batch_size`` rows in all) are prefilled together,
  classified and join the running ``DecodeBatch`` with their own sign and settings;
  finished rows leave after every step.
- ``closed``: waiting jobs are collected (up to ``max_batch_size``, waiting at most
  ``window_s`` for more) and run to the end as one batch before the next one starts. The
  vLLM backend always runs this way (its engine schedules continuously itself).

The queue bound (``max_queue``) counts jobs not yet in a batch; it does not limit the batch.
A cancelled job (timeout, client gone) leaves the queue at once, or the running batch at
its next decoding step. An error in one row fails that job only; an error in a forward pass
fails the rows of that pass.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..conversations import ChatResult, prepare_batch
from ..decode import FINISH_ERROR, DecodeBatch, RowSettings, can_join, row_result

log = logging.getLogger("scans.serve")
MODES = ("continuous", "closed")


def _conversations(jobs: list[Job]) -> list[list[dict[str, str]]] | None:
    """The jobs' messages, where every job has them (what a guard profile's verdicts read)."""
    messages = [j.messages for j in jobs]
    return None if any(m is None for m in messages) else messages  # type: ignore[misc]


class QueueFull(Exception):
    """The queue holds ``max_queue`` waiting requests."""


class ShuttingDown(Exception):
    """The server stopped before the request finished (drain timeout or shutdown)."""


@dataclass(eq=False)
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
    messages: list[dict[str, str]] | None = None  # what a guard profile's guard reads
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
    joins: int = 0  # admissions into a batch that was already decoding (continuous mode)


class Batcher:
    """A bounded queue and one model worker thread (see the module docstring)."""

    def __init__(
        self,
        scans: Any,
        *,
        max_batch_size: int = 16,
        max_queue: int = 256,
        window_s: float = 0.01,
        mode: str = "continuous",
        on_batch: Callable[[int], None] | None = None,
        on_forward: Callable[[int], None] | None = None,
    ) -> None:
        if mode not in MODES:
            raise ValueError(f"batching mode {mode!r}; use one of {', '.join(MODES)}")
        self.scans = scans
        self.max_batch_size = max_batch_size
        self.max_queue = max_queue
        self.window_s = window_s
        self.mode = mode if scans.capabilities.row_batching else "closed"
        self.on_batch = on_batch
        self.on_forward = on_forward
        self.stats = BatchStats()
        self.running = 0  # rows in the batch being decoded
        self._pending: deque[Job] = deque()
        self._active: set[Job] = set()  # taken from the queue, not finished
        self._cond = threading.Condition()
        self._paused = False
        self._stopping = False
        self._forming = False  # closed mode: collecting a batch (its window is open)
        self._no_join = False  # the model's KV cache cannot be merged: continuous runs closed
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------ front end
    def submit(self, job: Job) -> None:
        """Queue a job; raises ``QueueFull`` when ``max_queue`` requests are waiting."""
        with self._cond:
            if self._stopping:
                raise ShuttingDown
            self._purge()
            if len(self._pending) >= self.max_queue + self._room():
                raise QueueFull
            self._pending.append(job)
            self._cond.notify_all()

    def _room(self) -> int:
        """Rows the worker will take without waiting for a batch to end (lock held): waiting
        jobs up to this many are about to start and do not count against ``max_queue``."""
        if self._paused or ((self.mode == "closed" or self._no_join) and not self._forming):
            return 0
        return max(0, self.max_batch_size - len(self._active))

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

    @property
    def busy(self) -> bool:
        """Whether any job is waiting or running."""
        with self._cond:
            return bool(self._active) or any(not j.cancelled for j in self._pending)

    def pause(self) -> None:
        """Stop taking new jobs (running rows go on); for maintenance and tests."""
        with self._cond:
            self._paused = True

    def resume(self) -> None:
        with self._cond:
            self._paused = False
            self._cond.notify_all()

    def start(self) -> None:
        self._thread = threading.Thread(target=self._work, name="scans-batcher", daemon=True)
        self._thread.start()

    def abort(self, exc: BaseException) -> None:
        """Fail every waiting and running job with ``exc`` (running rows leave at their next step)."""
        with self._cond:
            for job in [*self._pending, *self._active]:
                job.post("error", exc)
                job.cancel()
            self._pending.clear()
            self._cond.notify_all()

    def stop(self, timeout: float = 10.0) -> None:
        with self._cond:
            self._stopping = True
        self.abort(ShuttingDown("server shutting down"))
        if self._thread is not None:
            self._thread.join(timeout)

    # ------------------------------------------------------------------ worker
    def _purge(self) -> None:
        if any(j.cancelled for j in self._pending):
            self._pending = deque(j for j in self._pending if not j.cancelled)

    def _take(self, room: int) -> list[Job]:
        """Up to ``room`` waiting jobs, now counted as active (call with the lock held)."""
        jobs = []
        while self._pending and len(jobs) < room:
            job = self._pending.popleft()
            if not job.cancelled:
                jobs.append(job)
        self._active.update(jobs)
        return jobs

    def _collect(self, running: int) -> list[Job] | None:
        """Jobs to start: with nothing running, wait for one and up to ``window_s`` for
        more (moving them out of the queue as they come); else whatever is waiting now."""
        with self._cond:
            self._forming = not running
            while not self._stopping and not running and (self._paused or not self._pending):
                self._cond.wait()
                self._purge()
            if self._stopping:
                return None
            if self._paused or (running and self._no_join):
                return []
            room = self.max_batch_size - running
            jobs = self._take(room)
            if running:
                return jobs
            deadline = time.monotonic() + self.window_s
            while len(jobs) < room and not self._stopping:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._cond.wait(left)
                jobs += self._take(room - len(jobs))
            self._forming = False
            return jobs

    def _done(self, job: Job, kind: str, payload: Any) -> None:
        with self._cond:
            self._active.discard(job)
        job.post(kind, payload)

    def _settings(self, job: Job) -> RowSettings:
        on_text = (lambda text: job.post("delta", text)) if job.stream else None
        return dataclasses.replace(job.settings, on_text=on_text, cancelled=lambda: job.cancelled)

    def _forward(self, rows: int) -> None:
        self.stats.forwards += 1
        self.stats.forward_rows += rows
        self.running = rows
        if self.on_forward is not None:
            self.on_forward(rows)

    def _count_batch(self, jobs: list[Job]) -> None:
        self.stats.batches += 1
        self.stats.rows += len(jobs)
        if self.on_batch is not None:
            self.on_batch(len(jobs))

    def _work(self) -> None:
        while True:
            try:
                if self.mode == "continuous":
                    self._work_continuous()
                    return
                while True:
                    jobs = self._collect(0)
                    if jobs is None:
                        return
                    if jobs:
                        self._run_closed(jobs)
            except Exception as exc:  # a bug in the worker: fail what it holds, keep serving
                log.exception("batch worker failed")
                with self._cond:
                    held = list(self._active)
                    self._active.clear()
                for job in held:
                    job.post("error", exc)
                    job.cancel()
                self.running = 0

    # closed batches
    def _run_closed(self, jobs: list[Job]) -> None:
        def on_verdicts(verdicts: list[Any], signs: list[int]) -> None:
            for job, verdict, sign in zip(jobs, verdicts, signs):
                job.post("verdict", (verdict, sign))

        self._count_batch(jobs)
        try:
            results = self.scans.chat_batch(
                [j.encoded for j in jobs],
                [self._settings(j) for j in jobs],
                steer_rows=[j.steer for j in jobs],
                labels=[j.label for j in jobs],
                on_verdicts=on_verdicts,
                on_forward=self._forward,
                isolate_errors=True,
                conversations=_conversations(jobs),
            )
        except Exception as exc:  # the worker survives; every job of the batch gets the error
            log.error("batch of %d failed: %s: %s", len(jobs), type(exc).__name__, exc)
            for job in jobs:
                self._done(job, "error", exc)
        else:
            for job, result in zip(jobs, results):
                self._finish(job, result)
        finally:
            self.running = 0

    def _finish(self, job: Job, result: Any) -> None:
        if result.result.finish_reason == FINISH_ERROR:
            error = result.result.error
            log.error("request failed: %s: %s", type(error).__name__, error)
            self._done(job, "error", error)
        else:
            self._done(job, "done", result)

    # continuous batching
    def _admit(self, jobs: list[Job], batch: DecodeBatch, owners: dict[int, tuple[Job, Any, int]]) -> None:
        """Prefill and classify ``jobs`` together and add them to ``batch``; if that fails,
        each job alone, so that one bad request fails only itself."""
        groups = [jobs]
        while groups:
            group = groups.pop()
            encoded = [j.encoded for j in group]
            try:
                prepared = prepare_batch(self.scans, encoded, steer_rows=[j.steer for j in group],
                                         labels=[j.label for j in group], on_forward=self._forward,
                                         conversations=_conversations(group))  # fmt: skip
            except Exception as exc:
                if len(group) > 1:
                    groups += [[j] for j in group]
                    continue
                log.error("request failed: %s: %s", type(exc).__name__, exc)
                self._done(group[0], "error", exc)
                continue
            if not can_join(prepared.pre.cache):
                # e.g. sliding-window caches: rows cannot join a running batch, so batches run
                # closed from now on; a group that was to join waits for the batch to end
                if not self._no_join:
                    log.warning("this model's KV cache cannot be merged: batching runs closed")
                    self._no_join = True
                if len(batch):
                    with self._cond:
                        self._active.difference_update(group)
                        self._pending.extendleft(reversed(group))
                    continue
            self._count_batch(group)
            self.stats.joins += bool(len(batch))
            for job, verdict, sign in zip(group, prepared.verdicts, prepared.signs):
                job.post("verdict", (verdict, sign))
            rows = batch.add(
                prepared.pre, [self._settings(j) for j in group], prepared.plan, copy_cache=False
            )
            for job, row, verdict, sign in zip(group, rows, prepared.verdicts, prepared.signs):
                owners[id(row)] = (job, verdict, sign)
                if row.finish is not None:  # finished without a step (max_tokens < 1)
                    self._leave(row, owners)

    def _leave(self, row: Any, owners: dict[int, tuple[Job, Any, int]]) -> None:
        job, verdict, sign = owners.pop(id(row))
        self._finish(job, ChatResult(verdict, sign != 0, sign, len(job.encoded[0]), row_result(row)))

    def _work_continuous(self) -> None:
        batch = DecodeBatch(self.scans.model, self.scans.tokenizer, on_forward=self._forward)
        owners: dict[int, tuple[Job, Any, int]] = {}
        while True:
            jobs = self._collect(len(batch))
            if jobs is None:
                return
            if jobs:
                self._admit(jobs, batch, owners)
            if not len(batch):
                self.running = 0
                continue
            try:
                gone = batch.step()
            except Exception as exc:  # a forward pass failed: its rows fail, the worker goes on
                log.error("decoding step of %d rows failed: %s: %s", len(batch), type(exc).__name__, exc)
                for row in batch.rows:
                    row.finish, row.error = FINISH_ERROR, exc
                gone = list(batch.rows)
                batch = DecodeBatch(self.scans.model, self.scans.tokenizer, on_forward=self._forward)
            for row in gone:
                self._leave(row, owners)
            self.running = len(batch)
