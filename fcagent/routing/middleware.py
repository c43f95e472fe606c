"""`StudentMiddleware`: `create_agent`'s model calls go to the trained student first, and a step the
student fails goes to the teacher (the escalation routine shared with `fcagent serve`). In shadow mode
(`mode="shadow"`) the teacher answers every call and the student is measured beside it, off the
request path (`fcagent.routing.shadow`)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, Literal

from langchain.agents.middleware import AgentMiddleware
from langchain_core.messages import AIMessage

from fcagent.agent.prompting import tool_schemas
from fcagent.core.errors import UserError
from fcagent.core.names import model_name
from fcagent.core.records import StepError
from fcagent.routing.check import StudentCheck, Validator
from fcagent.routing.escalation import Escalations
from fcagent.routing.shadow import Shadow
from fcagent.tracing.middleware import replies, request_messages
from fcagent.tracing.store import TraceStore, open_store

__all__ = ["StudentMiddleware"]


class StudentMiddleware(AgentMiddleware):
    """Route `create_agent`'s model calls to a trained student; escalate failed steps to the teacher.

    `create_agent(teacher, tools, middleware=[StudentMiddleware(student, store="traces.db")])`: every
    model call goes to the student (`request.override(model=student)`). When the student's reply
    fails validation the same request goes to the teacher (the agent's own model, or `teacher=`),
    and both replies are stored as a teacher-vs-student preference pair for the next training round.

    Which replies fail is `StudentCheck`'s decision (`validate`, `require_call`): unreadable or
    invalid calls, repeated calls, and answers in words that `validate` rejects (`"grounded"` by
    default: an answer given without looking anything up this turn).

    Every reply is stamped with the model that produced it (`response_metadata["model_name"]`), so a
    `TraceMiddleware` in front of this one records the student's accepted replies under its name.

    `mode="shadow"`: the teacher answers every call, unchanged; the student answers the same request on
    a background queue (`shadow_queue` requests at most; a full queue drops, never waits), and both
    replies are stored side by side with their comparison (`fcagent eval --store STORE --shadow`).
    """

    def __init__(self, student: Any, *, teacher: Any = None, store: str | TraceStore | None = None,
                 validate: Validator = "grounded", require_call: bool = False,
                 mode: Literal["route", "shadow"] = "route", shadow_queue: int = 64):
        super().__init__()
        if mode not in ("route", "shadow"):
            raise UserError(f"`mode` must be 'route' (the student answers, the teacher redoes its failures) or "
                            f"'shadow' (the teacher answers, the student is measured beside it), got {mode!r}")
        self.check = StudentCheck(validate, require_call=require_call)
        self.student = student
        self.teacher = teacher
        self.mode = mode
        self.store = open_store(store) if store is not None else None
        self.routine = Escalations(self.check, self.store)
        self.shadow = Shadow(student, store=self.store, check=self.check, max_queue=shadow_queue) \
            if mode == "shadow" else None

    @property
    def student_calls(self) -> int:
        return self.routine.student_calls

    @property
    def escalations(self) -> int:
        return self.routine.escalations

    def _judge(self, request: Any, reply: AIMessage | None) -> StepError | None:
        return self.routine.judge(request_messages(request), reply, tool_schemas(list(request.tools or [])))

    @staticmethod
    def _stamp(response: Any, model: Any) -> Any:
        for m in replies(response):
            m.response_metadata.setdefault("model_name", model_name(model))
        return response

    def _teacher_request(self, request: Any, student_response: Any, why: StepError | None) -> Any:
        """After the student answered: None to accept it, else the request to send to the teacher."""
        if why is None:
            self._stamp(student_response, self.student)
            return None
        return request.override(model=self.teacher) if self.teacher is not None else request

    def _record(self, request: Any, student_reply: AIMessage | None, teacher_response: Any, why: StepError,
                teacher: Any) -> None:
        answers = replies(teacher_response)
        self.routine.record(request_messages(request), tool_schemas(list(request.tools or [])),
                            student_reply=student_reply, teacher_reply=answers[-1] if answers else None, why=why,
                            student=self.student, teacher=teacher)

    def _shadowed(self, request: Any, response: Any) -> Any:
        """Shadow mode: the teacher's response goes back as it is; the student gets the request off the path."""
        answers = replies(response)
        model = request.model if self.teacher is None else self.teacher
        self.shadow.submit(request_messages(request), tool_schemas(list(request.tools or [])),  # type: ignore[union-attr]
                           answers[-1] if answers else None, model)
        return response

    def wrap_model_call(self, request: Any, handler: Callable[[Any], Any]) -> Any:
        if self.shadow is not None:
            teacher_request = request.override(model=self.teacher) if self.teacher is not None else request
            return self._shadowed(request, handler(teacher_request))
        student_response = handler(request.override(model=self.student))
        answers = replies(student_response)
        reply = answers[-1] if answers else None
        why = self._judge(request, reply)
        teacher_request = self._teacher_request(request, student_response, why)
        if teacher_request is None:
            return student_response
        teacher_response = self._stamp(handler(teacher_request), teacher_request.model)
        self._record(request, reply, teacher_response, why, teacher_request.model)
        return teacher_response

    async def awrap_model_call(self, request: Any, handler: Callable[[Any], Any]) -> Any:
        if self.shadow is not None:
            teacher_request = request.override(model=self.teacher) if self.teacher is not None else request
            return self._shadowed(request, await handler(teacher_request))
        student_response = await handler(request.override(model=self.student))
        answers = replies(student_response)
        reply = answers[-1] if answers else None
        # A judge model is a blocking call: off the event loop.
        why = await asyncio.to_thread(self._judge, request, reply) if self.check.judges else self._judge(request, reply)
        teacher_request = self._teacher_request(request, student_response, why)
        if teacher_request is None:
            return student_response
        teacher_response = self._stamp(await handler(teacher_request), teacher_request.model)
        await asyncio.to_thread(self._record, request, reply, teacher_response, why, teacher_request.model)
        return teacher_response
