"""Shadow mode: the teacher answers the user; the student answers the same request off the request path.

`StudentMiddleware(student, mode="shadow")` and `fcagent serve --teacher SPEC --shadow` hand every request
the teacher answered to a `Shadow`: a bounded queue and a worker thread that asks the student, judges its
reply (`StudentCheck`: would it have escalated?) and compares it with the teacher's
(`fcagent.routing.agreement`), and stores both replies side by side as one episode (role
`student-shadow`, the comparison in its outputs). The user's reply never waits for it, and nothing the
student does reaches it: a full queue drops the request (counted), a student that raises is counted.
`fcagent eval --store STORE --shadow` reports the agreement of live traffic from those episodes.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
import uuid
from typing import Any

from langchain_core.messages import AIMessage
from langchain_core.outputs import ChatGeneration

from fcagent.core import keys
from fcagent.core.names import model_name
from fcagent.routing.agreement import Judge, StringMatch, same_answer
from fcagent.routing.check import StudentCheck
from fcagent.tracing.buffers import CallBuffer, EpisodeBuffer
from fcagent.tracing.episodes import EpisodeWrites, episode_from_buffer
from fcagent.tracing.store import TraceStore

__all__ = ["Shadow", "SHADOW_EPISODE"]

log = logging.getLogger("fcagent")
SHADOW_EPISODE = "student-shadow"


class Shadow:
    """The student's shadow of a route (see the module docs). `max_queue`: requests waiting at most (a full
    queue drops the newest: shadowing is a sample, never a backlog)."""

    def __init__(self, student: Any, *, store: TraceStore | None, check: StudentCheck | None = None,
                 judge: Judge = same_answer, max_queue: int = 64) -> None:
        self.student, self.check, self.judge = student, check or StudentCheck(), judge
        self.writes = EpisodeWrites(store, "report", None) if store is not None else None
        self.queue: queue.Queue[tuple[list[Any], list[dict[str, Any]], AIMessage, Any] | None] = queue.Queue(max_queue)
        self.submitted = self.done = self.dropped = self.failed = self.agreed = 0
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._work, name="fcagent-shadow", daemon=True)
        self._thread.start()

    def submit(self, messages: list[Any], tools: list[dict[str, Any]], teacher_reply: AIMessage | None,
               teacher: Any = None) -> bool:
        """Queue a request the teacher answered; False (and counted) when the queue is full. Never blocks."""
        if teacher_reply is None:
            return False
        try:
            self.queue.put_nowait((list(messages), list(tools), teacher_reply, teacher))
        except queue.Full:
            with self._lock:
                self.dropped += 1
            return False
        with self._lock:
            self.submitted += 1
        return True

    def join(self, timeout: float = 60.0) -> None:
        """Wait until every queued request is shadowed (tests, shutdown)."""
        deadline = time.monotonic() + timeout
        while self.queue.unfinished_tasks and time.monotonic() < deadline:
            time.sleep(0.01)
        if self.writes is not None:
            self.writes.flush()

    def _work(self) -> None:
        from fcagent.routing.agreement import calls_agree

        while True:
            item = self.queue.get()
            try:
                if item is None:
                    return
                messages, tools, teacher_reply, teacher = item
                started = time.perf_counter()
                try:
                    bound = self.student.bind_tools(tools) if tools else self.student
                    reply = bound.invoke(messages)
                except Exception as exc:  # noqa: BLE001 - the user's reply is long gone: counted and logged
                    with self._lock:
                        self.failed += 1
                    log.warning("fcagent shadow: the student raised %s: %s", type(exc).__name__, exc)
                    continue
                latency_ms = (time.perf_counter() - started) * 1000
                wanted = [{"name": c["name"], "args": c.get("args") or {}} for c in teacher_reply.tool_calls]
                got = [{"name": c["name"], "args": c.get("args") or {}} for c in reply.tool_calls]
                if wanted:
                    agrees, reason = calls_agree(got, wanted, tools, StringMatch())
                elif got or reply.invalid_tool_calls:
                    agrees, reason = False, "a call where the teacher answered in words"
                else:
                    agrees = self.judge(str(teacher_reply.content), str(reply.content))
                    reason = "the same answer" if agrees else "another answer"
                why = self.check.failure(messages, reply, tools)
                with self._lock:
                    self.done += 1
                    self.agreed += agrees
                self._record(messages, tools, teacher_reply, reply, teacher, latency_ms,
                             {"agrees": agrees, "reason": reason, "escalates": why is not None,
                              "escalation": str(why) if why else None})
            finally:
                self.queue.task_done()

    def _record(self, messages: list[Any], tools: list[dict[str, Any]], teacher_reply: AIMessage, reply: AIMessage,
                teacher: Any, latency_ms: float, comparison: dict[str, Any]) -> None:
        if self.writes is None:
            return
        now = time.time()
        teacher_name = teacher if isinstance(teacher, str) else model_name(teacher) if teacher is not None else \
            (teacher_reply.response_metadata or {}).get("model_name")
        calls = [CallBuffer(id=str(uuid.uuid4()), messages=messages, tools=tools, model=name, order=i,
                            metadata={keys.PROTOCOL: "native"}, generations=[ChatGeneration(message=msg)],
                            usage=dict(msg.usage_metadata or {}), latency_ms=latency if i else None)
                 for i, (name, msg, latency) in enumerate(((teacher_name, teacher_reply, None),
                                                           (model_name(self.student), reply, latency_ms)))]
        buf = EpisodeBuffer(id=str(uuid.uuid4()), name=SHADOW_EPISODE, started_at=now, ended_at=now, tags=["shadow"],
                            metadata={keys.ROLE: keys.Role.STUDENT_SHADOW.value}, calls=calls,
                            outputs={"shadow": comparison})
        self.writes.submit(buf.id, lambda: _with_comparison(episode_from_buffer(buf), comparison))


def _with_comparison(trace: dict[str, Any], comparison: dict[str, Any]) -> dict[str, Any]:
    trace["episode"]["outputs"]["shadow"] = comparison  # kept: `fcagent eval --shadow` reads it
    return trace
