"""The store's writer thread: episodes queued by recorders are built and written off the agent's path.

A recorder hands over an episode's raw buffer and a `build` function; this thread builds the trace
and writes the episodes that arrive together in one transaction. Failures are reported per episode
(`done(stored, error)`), never dropped; `flush()`, `close()` and interpreter exit write what is queued.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import queue
import threading
import time
import weakref
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, NamedTuple

from fcagent.core.errors import StoreWriteError

if TYPE_CHECKING:
    from fcagent.tracing.store.store import TraceStore

__all__ = ["EpisodeWriter", "QueuedEpisode", "QUEUED_ON"]

log = logging.getLogger("fcagent")


class QueuedEpisode(NamedTuple):
    episode_id: str
    build: Callable[[], Any]
    replace: bool
    done: Callable[..., None]


class EpisodeWriter:
    """A store's writer thread: takes what is queued, builds the traces, writes them in one transaction.

    A daemon thread, so a program that forgets `close()` still exits; what it had queued is written
    by the `atexit` hook below before the interpreter goes. A `TraceStore` is used from many threads
    already (its connection is shared under its lock), so the writer uses the caller's store object."""

    BATCH = 64  # episodes per transaction at most: a long queue still commits (and is readable) often
    # While episodes keep coming (the last batch was written under LINGER_S ago), wait this long after
    # the first of a batch for more: a commit costs more than building and inserting an episode, so
    # episodes arriving close together share one, and queueing them meanwhile does not wake this thread
    # (benchmarks/tracing.py). An episode after a quiet spell is written at once, as is everything while
    # anyone waits for the queue (`flush()`, `close()`, a read through any store on the file).
    LINGER_S = 0.05
    IDLE_S = 1.0  # an idle writer ends (a store no longer used is freed); the next episode starts another

    def __init__(self, store: TraceStore) -> None:
        self.store = store
        self.pid = os.getpid()
        self.queue: queue.Queue[QueuedEpisode | None] = queue.Queue()
        self._hurry = threading.Event()  # set while someone waits for the queue: no lingering
        self._last_write = -float("inf")  # time.monotonic() when the last batch was written
        self._waiting = 0
        self._waiting_lock = threading.Lock()
        self.thread = threading.Thread(target=self._run, name=f"fcagent-writer:{store.name}", daemon=True)
        self.thread.start()
        self.ident = self.thread.ident

    def stop(self) -> None:
        self.queue.put(None)
        with self.hurried():
            self.thread.join()

    @contextlib.contextmanager
    def hurried(self) -> Iterator[None]:
        """While inside, the writer writes what is queued at once (a lingering writer is woken)."""
        with self._waiting_lock:
            self._waiting += 1
            self._hurry.set()
        try:
            yield
        finally:
            with self._waiting_lock:
                self._waiting -= 1
                if not self._waiting:
                    self._hurry.clear()

    def _run(self) -> None:
        while True:
            try:
                first = self.queue.get(timeout=self.IDLE_S)
            except queue.Empty:
                with self.store._writer_lock:  # `write_episode_soon` queues under this lock: nothing slips in
                    if self.queue.empty():
                        if self.store._writer is self:
                            self.store._writer = None
                        return
                continue
            if first is not None and time.monotonic() - self._last_write < self.LINGER_S:
                self._hurry.wait(self.LINGER_S)
            batch = [first]  # what is queued now, up to BATCH, or up to a stop (None)
            while len(batch) < self.BATCH and batch[-1] is not None:
                try:
                    batch.append(self.queue.get_nowait())
                except queue.Empty:
                    break
            try:
                self._write([job for job in batch if job is not None])
            finally:
                self._last_write = time.monotonic()
                for _ in batch:
                    self.queue.task_done()
            if batch[-1] is None:
                return

    def _write(self, batch: list[QueuedEpisode]) -> None:
        built: list[tuple[QueuedEpisode, Any]] = []
        for job in batch:
            try:
                built.append((job, job.build()))
            except Exception as exc:  # noqa: BLE001 - reported naming the episode, never lost silently
                _report(job, None, exc)
        if not built:
            return
        try:
            stored = self.store.write_episodes([trace for _, trace in built], replace=[job.replace for job, _ in built])
        except Exception:  # noqa: BLE001 - one bad episode must not take its batch with it: one at a time
            for job, trace in built:
                try:
                    _report(job, self.store.write_episode(trace, replace=job.replace), None)
                except Exception as exc:  # noqa: BLE001
                    _report(job, None, exc)
            return
        for (job, _), ok in zip(built, stored):
            _report(job, ok, None)


def _report(job: QueuedEpisode, stored: bool | None, exc: BaseException | None) -> None:
    try:
        job.done(stored, StoreWriteError(job.episode_id, exc) if exc is not None else None)
    except Exception:  # noqa: BLE001 - a broken callback must not stop the writer
        log.exception("fcagent: write callback of episode %s failed", job.episode_id)


# Stores with a writer thread, by file: a read through any store on a file waits for their queues.
QUEUED_ON: dict[str, weakref.WeakSet[TraceStore]] = {}


@atexit.register
def _write_queued_at_exit() -> None:
    for stores in list(QUEUED_ON.values()):
        for store in list(stores):
            store.flush()
