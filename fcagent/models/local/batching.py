"""Combining concurrent generation requests into one batch (flat combining).

On a CPU, single-stream decoding of a small model is bound by per-step overhead, far below the
matmul ceiling, so a step over 8 rows costs about what a step over one does (docs/performance.md).
Requests arriving from several threads are queued; whichever caller takes the lock serves a batch
of compatible requests (its own first) and hands every caller its result. No background thread,
and a lone caller runs at once.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

__all__ = ["RequestBatcher", "Pending"]

R = TypeVar("R")


@dataclass
class Pending(Generic[R]):
    """One caller's request, waiting to be served (possibly inside another caller's batch)."""

    request: Any
    key: Hashable  # requests batch together only when their keys are equal
    rows: int  # sequences the request adds to a batch
    done: threading.Event = field(default_factory=threading.Event)
    result: R | None = None
    error: BaseException | None = None
    cancelled: bool = False  # the caller went away before its turn (e.g. a client disconnected)


class RequestBatcher(Generic[R]):
    """`submit(request, key, rows)` runs `run_batch([requests...]) -> [results...]` for a batch that
    includes the request, from whichever calling thread holds the lock."""

    def __init__(self, run_batch: Callable[[list[Any]], list[R]], *, max_rows: int = 8, wait_s: float = 0.02):
        self.run_batch = run_batch
        self.max_rows = max_rows
        self.wait_s = wait_s
        self._lock = threading.Lock()  # held while a batch runs
        self._pending: list[Pending[R]] = []
        self._pending_lock = threading.Lock()
        self._overlap = False  # whether calls have been seen to overlap (then a leader waits for company)
        self.batches = 0  # counters, for tests and benchmarks
        self.rows_served = 0

    def submit(self, request: Any, *, key: Hashable, rows: int = 1) -> R:
        item: Pending[R] = Pending(request=request, key=key, rows=rows)
        with self._pending_lock:
            self._pending.append(item)
        try:
            while not item.done.is_set():
                with self._lock:
                    if item.done.is_set():  # served inside another caller's batch while we waited
                        break
                    if self.max_rows > 1 and self._overlap and self.wait_s > 0:
                        time.sleep(self.wait_s)  # let the other threads' next calls arrive
                    batch = self._take(item)
                    self._run(batch)
        except BaseException:
            self.cancel(item)
            raise
        if item.error is not None:
            raise item.error
        return item.result  # type: ignore[return-value]

    def cancel(self, item: Pending[R]) -> None:
        """Withdraw a request that has not been served yet (its slot goes to others)."""
        with self._pending_lock:
            item.cancelled = True
            if item in self._pending:
                self._pending.remove(item)

    def _take(self, leader: Pending[R]) -> list[Pending[R]]:
        with self._pending_lock:
            batch, rows = [], 0
            for other in [leader] + [p for p in self._pending if p is not leader]:
                if other.key == leader.key and (not batch or rows + other.rows <= self.max_rows):
                    batch.append(other)
                    rows += other.rows
            for p in batch:
                if p in self._pending:
                    self._pending.remove(p)
            self._overlap = len(batch) > 1 or bool(self._pending)
        return batch

    def _run(self, batch: list[Pending[R]]) -> None:
        try:
            results = self.run_batch([p.request for p in batch])
            for p, res in zip(batch, results):
                p.result = res
            self.batches += 1
            self.rows_served += sum(p.rows for p in batch)
        except BaseException as exc:  # noqa: BLE001 - every caller in the batch gets the error
            for p in batch:
                p.error = exc
        finally:
            for p in batch:
                p.done.set()
