"""The escalation routine: the student answers, `StudentCheck` judges, the teacher redoes a refused
step, and the pair is stored. `StudentMiddleware` and `fcagent serve` both run it, so both count
alike and store alike.

The stored pair is an episode of its own (role `student-escalated`): the request's exact context,
the student's refused reply labelled bad and the teacher's answer labelled good (source
`escalation`). The exporter reads it as a `teacher_student` pair, whichever route wrote it.
"""

from __future__ import annotations

import threading
import time
import uuid
from typing import Any

from langchain_core.messages import AIMessage
from langchain_core.outputs import ChatGeneration

from fcagent.core import keys
from fcagent.core.names import model_name
from fcagent.core.records import LabelSource, StepError
from fcagent.routing.check import StudentCheck
from fcagent.tracing.buffers import CallBuffer, EpisodeBuffer
from fcagent.tracing.episodes import episode_from_buffer
from fcagent.tracing.store import TraceStore

__all__ = ["Escalations"]


class Escalations:
    """Judges a route's student replies and stores its escalations; counts both."""

    def __init__(self, check: StudentCheck, store: TraceStore | None) -> None:
        self.check = check
        self.store = store
        self.student_calls = 0
        self.escalations = 0
        self._lock = threading.Lock()

    def judge(self, messages: list[Any], reply: AIMessage | None, tools: list[dict[str, Any]], *,
              require_call: bool | None = None) -> StepError | None:
        """Why the student's `reply` must go to the teacher, or None when it stands (counted)."""
        why = self.check.failure(messages, reply, tools, require_call=require_call)
        with self._lock:
            self.student_calls += 1
            self.escalations += why is not None
        return why

    def record(self, messages: list[Any], tools: list[dict[str, Any]], *, student_reply: AIMessage | None,
               teacher_reply: AIMessage | None, why: StepError, student: Any, teacher: Any) -> str | None:
        """Store an escalation (see the module docs); its episode id, or None when nothing is stored
        (no store, or a side without a reply)."""
        if self.store is None or student_reply is None or teacher_reply is None:
            return None
        now = time.time()
        teacher_call, student_call = (
            CallBuffer(id=str(uuid.uuid4()), messages=messages, tools=tools, model=name, order=order,
                       metadata={keys.PROTOCOL: "native"}, generations=[ChatGeneration(message=reply)])
            for order, (name, reply) in enumerate(((_name(teacher), teacher_reply), (_name(student), student_reply))))
        buf = EpisodeBuffer(id=str(uuid.uuid4()), name="student-escalation", started_at=now, ended_at=now,
                            tags=["escalation"], metadata={keys.ROLE: keys.Role.STUDENT_ESCALATED.value},
                            calls=[teacher_call, student_call])
        trace = episode_from_buffer(buf)
        trace["labels"] += [
            {"target_id": teacher_call.id, "candidate": 0, "success": True, "source": LabelSource.ESCALATION,
             "reason": "teacher answer after a student failure"},
            {"target_id": student_call.id, "candidate": 0, "success": False, "source": LabelSource.ESCALATION,
             "kind": why.kind, "reason": str(why)}]
        self.store.write_episode(trace)
        return buf.id


def _name(model: Any) -> str | None:
    return model if isinstance(model, str) else model_name(model)
