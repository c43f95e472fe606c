"""A server follows a promoted student: `fcagent serve --student runs/prod` keeps serving while `runs/prod`
is pointed at a new run (`fcagent distill --store ... --promote runs/prod`).

The reloader checks where the student's path leads (at most once a second, on requests, and at once on
SIGHUP). When it leads elsewhere, the new student is loaded on a thread of its own beside the old one,
then swapped in: a request in flight finishes on the student it started with, the next one gets the
new student, and none fails. A student that does not load is logged and the old one keeps serving.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from typing import Any

__all__ = ["StudentReloader"]

log = logging.getLogger("fcagent")


class StudentReloader:
    def __init__(self, server: Any, source: str, *, check_every_s: float = 1.0) -> None:
        self.server, self.source, self.check_every_s = server, source, check_every_s
        self.loaded = os.path.realpath(source)  # the run the student now serving came from
        self._checked = time.monotonic()
        self._lock = threading.Lock()  # one reload at a time
        self.reloads = 0
        self.failures: list[str] = []

    def maybe_reload(self) -> None:
        """On a request: look where the path leads, at most every `check_every_s` seconds."""
        now = time.monotonic()
        if now - self._checked < self.check_every_s:
            return
        self._checked = now
        self.reload_now()

    def reload_now(self) -> threading.Thread | None:
        """Load the student the path leads to now, on a thread, if it is not the one serving."""
        target = os.path.realpath(self.source)
        if target == self.loaded or self._lock.locked():
            return None
        thread = threading.Thread(target=self._load, args=(target,), name="fcagent-reload", daemon=True)
        thread.start()
        return thread

    def _load(self, target: str) -> None:
        from fcagent.models.spec import ModelSpec

        with self._lock:
            if target == self.loaded:
                return
            try:
                student = ModelSpec.parse(target).load()
            except Exception as exc:  # noqa: BLE001 - the old student keeps serving; the failure is kept and logged
                self.failures.append(f"{target}: {type(exc).__name__}: {exc}")
                log.error("fcagent serve: the student at %s did not load (%s); still serving %s", target, exc,
                          self.loaded)
                return
            self.server.student, self.loaded = student, target
            self.reloads += 1
            log.info("fcagent serve: now serving the student at %s", target)
