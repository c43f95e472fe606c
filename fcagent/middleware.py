"""LangChain v1 `create_agent` middleware: `TraceMiddleware` records through the agent's hooks.

Same records as `TraceRecorder` (episodes, candidate completions, tool runs), for users who prefer
middleware to callbacks. An episode is keyed by the id of the user message that started the run,
so concurrent runs sharing one middleware instance never mix.
"""

from __future__ import annotations

import threading
import time
import uuid
from typing import Any

from langchain.agents.middleware import AgentMiddleware
from langchain_core.messages import AIMessage, HumanMessage, SystemMessage
from langchain_core.outputs import ChatGeneration

from fcagent.prompting import tool_schemas
from fcagent.recorder import episode_from_buffer
from fcagent.store import TraceStore, open_store

__all__ = ["TraceMiddleware", "episode_key"]


def episode_key(state: Any) -> str:
    messages = (state or {}).get("messages", []) if isinstance(state, dict) else getattr(state, "messages", [])
    for m in reversed(messages):
        if isinstance(m, HumanMessage):
            return m.id or str(id(m))
    return "no-user-message"


def _model_name(model: Any) -> str | None:
    for attr in ("model_name", "model", "model_id"):
        value = getattr(model, attr, None)
        if isinstance(value, str):
            return value
    return type(model).__name__


class TraceMiddleware(AgentMiddleware):
    """`create_agent(model, tools, middleware=[TraceMiddleware(store="traces.db")])`."""

    def __init__(self, store: str | TraceStore = "fcagent-traces.db", **metadata: Any):
        super().__init__()
        self.store = open_store(store)
        self.metadata = metadata
        self._open: dict[str, dict[str, Any]] = {}
        self._lock = threading.Lock()

    def _buffer(self, state: Any) -> dict[str, Any]:
        key = episode_key(state)
        with self._lock:
            if key not in self._open:
                self._open[key] = {"id": str(uuid.uuid4()), "name": "create_agent", "started_at": time.time(),
                                   "tags": ["middleware"], "metadata": dict(self.metadata), "completions": [],
                                   "tool_runs": []}
            return self._open[key]

    def before_agent(self, state: Any, runtime: Any) -> dict[str, Any] | None:
        self._buffer(state)
        return None

    def after_agent(self, state: Any, runtime: Any) -> dict[str, Any] | None:
        with self._lock:
            buf = self._open.pop(episode_key(state), None)
        if buf is not None:
            buf["ended_at"] = time.time()
            buf["outputs"] = {"final_answer": state["messages"][-1].content if state.get("messages") else None}
            self.store.write_episode(episode_from_buffer(buf))
        return None

    def wrap_model_call(self, request: Any, handler: Any) -> Any:
        buf = self._buffer(request.state)
        messages = list(request.messages)
        system = getattr(request, "system_message", None)
        if system is not None:
            messages = [system if isinstance(system, SystemMessage) else SystemMessage(str(system)), *messages]
        started = time.perf_counter()
        response = handler(request)
        result = getattr(response, "result", None) or ([response] if isinstance(response, AIMessage) else [])
        outputs = [m for m in result if isinstance(m, AIMessage)]
        usage = getattr(outputs[0], "usage_metadata", None) if outputs else None
        buf["completions"].append({
            "id": str(uuid.uuid4()), "parent": None, "messages": messages, "metadata": {"fcagent_protocol": "native"},
            "params": {"tools": tool_schemas(list(request.tools or []))}, "model": _model_name(request.model),
            "generations": [ChatGeneration(message=m) for m in outputs], "usage": dict(usage) if usage else {},
            "latency_ms": (time.perf_counter() - started) * 1000})
        return response

    def wrap_tool_call(self, request: Any, handler: Any) -> Any:
        buf = self._buffer(request.state)
        call = request.tool_call
        run = {"id": str(uuid.uuid4()), "episode_id": buf["id"], "parent_run_id": None, "seq": len(buf["tool_runs"]),
               "name": call["name"], "args": call.get("args", {})}
        started = time.perf_counter()
        try:
            result = handler(request)
        except Exception as exc:
            run |= {"error": f"{type(exc).__name__}: {exc}", "latency_ms": (time.perf_counter() - started) * 1000}
            buf["tool_runs"].append(run)
            raise
        content = getattr(result, "content", None)
        status = getattr(result, "status", None)
        run |= {"output": content if isinstance(content, str) else str(content),
                "error": content if status == "error" else None, "latency_ms": (time.perf_counter() - started) * 1000}
        buf["tool_runs"].append(run)
        return result


STUDENT_FAILURE_KINDS = ("invalid_tool_call", "unknown_function", "invalid_arguments", "no_call")


def student_failure(message: Any, tools: list[dict[str, Any]], *, require_call: bool = False) -> str | None:
    """Why a student's reply fails validation (and should go to the teacher), or None."""
    from fcagent.calls import CallParseError, calls_error, parse_calls

    if not isinstance(message, AIMessage):
        return "no_call: not an assistant message"
    if getattr(message, "invalid_tool_calls", None):
        return f"invalid_tool_call: {message.invalid_tool_calls[0].get('error')}"
    if not message.tool_calls:
        text = message.content if isinstance(message.content, str) else ""
        try:
            parse_calls(text)
            return "invalid_tool_call: a call written as text, not parsed into tool_calls"
        except CallParseError:
            return "no_call: the reply has no function call" if require_call else None
    return calls_error([{"name": c["name"], "args": c.get("args") or {}} for c in message.tool_calls], tools)


class StudentMiddleware(AgentMiddleware):
    """Route `create_agent`'s model calls to a trained student; escalate failed steps to the teacher.

    `create_agent(teacher, tools, middleware=[StudentMiddleware(student, store="traces.db")])`: every
    model call goes to the student (`request.override(model=student)`). When the student's reply
    fails validation (no parsable call, unknown function, schema-invalid arguments) the same request
    goes to the teacher (the agent's own model, or `teacher=`), and both replies are stored as a
    teacher-vs-student preference pair for the next training round.
    """

    def __init__(self, student: Any, *, teacher: Any = None, store: str | TraceStore | None = None,
                 require_call: bool = False):
        super().__init__()
        self.student = student
        self.teacher = teacher
        self.store = open_store(store) if store is not None else None
        self.require_call = require_call
        self.escalations = 0
        self.student_calls = 0

    def wrap_model_call(self, request: Any, handler: Any) -> Any:
        self.student_calls += 1
        student_response = handler(request.override(model=self.student))
        result = getattr(student_response, "result", None) or [student_response]
        tools = tool_schemas(list(request.tools or []))
        why = student_failure(result[-1], tools, require_call=self.require_call)
        if why is None:
            return student_response
        self.escalations += 1
        teacher_request = request.override(model=self.teacher) if self.teacher is not None else request
        teacher_response = handler(teacher_request)
        if self.store is not None:
            self._record_pair(request, tools, result[-1], getattr(teacher_response, "result", [teacher_response])[-1],
                              why, teacher_request.model)
        return teacher_response

    def _record_pair(self, request: Any, tools: list[dict[str, Any]], student_msg: Any, teacher_msg: Any,
                     why: str, teacher_model: Any) -> None:
        messages = list(request.messages)
        system = getattr(request, "system_message", None)
        if system is not None:
            messages = [system if isinstance(system, SystemMessage) else SystemMessage(str(system)), *messages]
        episode_id = str(uuid.uuid4())
        buf = {"id": episode_id, "name": "student-escalation", "started_at": time.time(), "ended_at": time.time(),
               "tags": ["escalation"], "metadata": {"fcagent_role": "student-escalated"}, "tool_runs": [],
               "completions": [
                   {"id": str(uuid.uuid4()), "messages": messages, "params": {"tools": tools}, "model": _model_name(teacher_model),
                    "metadata": {"fcagent_protocol": "native"}, "generations": [ChatGeneration(message=teacher_msg)]},
                   {"id": str(uuid.uuid4()), "messages": messages, "params": {"tools": tools}, "model": _model_name(self.student),
                    "metadata": {"fcagent_protocol": "native"}, "generations": [ChatGeneration(message=student_msg)]}]}
        trace = episode_from_buffer(buf)
        teacher_id, student_id = (c["id"] for c in trace["completions"])
        trace["labels"] += [
            {"target_id": teacher_id, "candidate": 0, "success": True, "source": "student-middleware",
             "reason": "teacher answer after a student failure"},
            {"target_id": student_id, "candidate": 0, "success": False, "source": "student-middleware", "reason": why}]
        self.store.write_episode(trace)
