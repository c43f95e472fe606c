"""LangChain v1 `create_agent` middleware: recording (`TraceMiddleware`) and the student in front
of the teacher (`StudentMiddleware`).

`TraceMiddleware` writes the same records as `TraceRecorder` (episodes, candidate completions, tool
runs, automatic labels for failed tools) through the agent's hooks. The episode id is the run's
`run_id` when the caller passes one (`agent.invoke(x, {"run_id": rid})`, the id an app already holds
for feedback), else a fresh uuid; either way it is in the result as `fcagent_episode_id`. A run that
raises is still stored (status `error`), and no buffer outlives its run.

Sync and async hooks share every decision (`_record_call`, `_route`): only the awaiting differs.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable
from typing import Any, Literal, NotRequired

from langchain.agents.middleware import AgentMiddleware, AgentState
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, HumanMessage, SystemMessage, ToolMessage
from langchain_core.outputs import ChatGeneration

from fcagent import keys
from fcagent.calls import CallParseError, calls_error, parse_calls
from fcagent.errors import UserError
from fcagent.prompting import tool_schemas
from fcagent.records import StepError
from fcagent.recorder import EpisodeWrites, WritesEpisodes, episode_from_buffer
from fcagent.store import TraceStore, open_store

__all__ = ["TraceMiddleware", "StudentMiddleware", "StudentCheck", "TracedState", "student_failure", "EPISODE_ID_KEY",
           "grounded_answer", "repeated_call"]

EPISODE_ID_KEY = keys.EPISODE_ID
_KEEP_ERRORED = 64  # buffers of runs that raised, stored already, kept in case an outer retry goes on


class TracedState(AgentState):
    """The agent state with the episode id the trace is stored under."""

    fcagent_episode_id: NotRequired[str]


def _model_name(model: Any) -> str | None:
    for attr in ("model_name", "model", "model_id"):
        value = getattr(model, attr, None)
        if isinstance(value, str):
            return value
    return type(model).__name__ if model is not None else None


def _request_messages(request: Any) -> list[Any]:
    messages = list(request.messages)
    system = getattr(request, "system_message", None)
    if system is not None:
        messages = [system if isinstance(system, SystemMessage) else SystemMessage(str(system)), *messages]
    return messages


def _replies(response: Any) -> list[AIMessage]:
    result = getattr(response, "result", None)
    if result is None:
        result = [response]
    return [m for m in result if isinstance(m, AIMessage)]


class TraceMiddleware(WritesEpisodes, AgentMiddleware):
    """`create_agent(model, tools, middleware=[TraceMiddleware(store="traces.db")])`."""

    state_schema = TracedState

    def __init__(self, store: str | TraceStore = "fcagent-traces.db", *, tags: list[str] | None = None,
                 on_write_error: Literal["report", "raise"] = "report", background: bool | None = None,
                 **metadata: Any):
        super().__init__()
        self.writes = EpisodeWrites(store, on_write_error, background)  # the recorder's, shared
        self.store = self.writes.store
        self.metadata = metadata
        self.tags = ["middleware", *(tags or [])]
        self.on_write_error = on_write_error
        self._open: dict[str, dict[str, Any]] = {}
        self._errored: OrderedDict[str, dict[str, Any]] = OrderedDict()
        self._lock = threading.Lock()
        self._order = 0

    # --- episodes ------------------------------------------------------------------------------

    def _start(self, state: Any, runtime: Any) -> dict[str, Any]:
        info = getattr(runtime, "execution_info", None)
        episode_id = str(getattr(info, "run_id", None) or uuid.uuid4())
        with self._lock:
            self._open[episode_id] = {
                "id": episode_id, "name": "create_agent", "started_at": time.time(), "tags": list(self.tags),
                "metadata": {**self.metadata, **({"thread_id": info.thread_id} if getattr(info, "thread_id", None) else {})},
                "completions": [], "tool_runs": []}
        return {EPISODE_ID_KEY: episode_id}

    def _buffer(self, state: Any) -> dict[str, Any]:
        episode_id = (state or {}).get(EPISODE_ID_KEY) if isinstance(state, dict) else None
        with self._lock:
            buf = self._open.get(episode_id) if episode_id else None
            if buf is None and episode_id in self._errored:
                buf = self._open[episode_id] = self._errored.pop(episode_id)  # an outer retry goes on
            if buf is None:  # a graph without before_agent (a hand-made loop): an episode per call site
                episode_id = episode_id or str(uuid.uuid4())
                buf = self._open[episode_id] = {"id": episode_id, "name": "create_agent", "started_at": time.time(),
                                                "tags": list(self.tags), "metadata": dict(self.metadata),
                                                "completions": [], "tool_runs": []}
            self._order += 1
            return {**buf, "_tick": self._order}

    def _write(self, buf: dict[str, Any], *, final: bool) -> None:
        # As it is now: an errored episode's buffer may be picked up again by an outer retry.
        snapshot = {**buf, "completions": list(buf["completions"]), "tool_runs": list(buf["tool_runs"])}
        self.writes.submit(buf["id"], lambda: episode_from_buffer(snapshot), replace=True, final=final)

    def _fail(self, buf_id: str, error: BaseException) -> None:
        """A hook raised: the run is (probably) over. Store what it did now, keep the buffer a while."""
        with self._lock:
            buf = self._open.pop(buf_id, None)
            if buf is None:
                return
            self._errored[buf_id] = buf
            while len(self._errored) > _KEEP_ERRORED:
                self._errored.popitem(last=False)
        buf.update(status="error", error=f"{type(error).__name__}: {error}", ended_at=time.time())
        self._write(buf, final=True)

    def before_agent(self, state: Any, runtime: Any) -> dict[str, Any] | None:
        return self._start(state, runtime)

    async def abefore_agent(self, state: Any, runtime: Any) -> dict[str, Any] | None:
        return self._start(state, runtime)

    def after_agent(self, state: Any, runtime: Any) -> dict[str, Any] | None:
        episode_id = state.get(EPISODE_ID_KEY) if isinstance(state, dict) else None
        with self._lock:
            buf = self._open.pop(episode_id, None) if episode_id else None
        if buf is not None:
            buf["ended_at"] = time.time()
            buf.pop("status", None)
            buf.pop("error", None)
            last = state["messages"][-1] if state.get("messages") else None
            buf["outputs"] = {"final_answer": last.content if isinstance(last, AIMessage) else None}
            self._write(buf, final=True)
        return None

    async def aafter_agent(self, state: Any, runtime: Any) -> dict[str, Any] | None:
        if self.writes.background:  # queued for the store's writer thread: nothing here blocks
            return self.after_agent(state, runtime)
        # A write in the run blocks (SQLite): off the event loop (LangGraph's server refuses blocking calls on it).
        return await asyncio.to_thread(self.after_agent, state, runtime)

    # --- model and tool calls ------------------------------------------------------------------

    def _record_call(self, request: Any, response: Any, error: BaseException | None, started: float,
                     tick: int) -> None:
        buf_view = self._buffer(request.state)
        replies = _replies(response) if response is not None else []
        produced_by = next((m.response_metadata.get("model_name") for m in replies
                            if isinstance(m.response_metadata.get("model_name"), str)), None)
        usage = getattr(replies[0], "usage_metadata", None) if replies else None
        completion = {
            "id": str(uuid.uuid4()), "parent": None, "messages": _request_messages(request),
            "metadata": {keys.PROTOCOL: "native"}, "params": {}, "tools": tool_schemas(list(request.tools or [])),
            "model": produced_by or _model_name(request.model), "generations": [ChatGeneration(message=m) for m in replies],
            "usage": dict(usage) if usage else {}, "latency_ms": (time.perf_counter() - started) * 1000,
            "error": f"{type(error).__name__}: {error}" if error is not None else None, "order": tick}
        with self._lock:
            target = self._open.get(buf_view["id"])
        if target is not None:
            target["completions"].append(completion)

    def _record_tool(self, request: Any, result: Any, error: BaseException | None, started: float, tick: int) -> None:
        buf_view = self._buffer(request.state)
        call = request.tool_call
        run = {"id": str(uuid.uuid4()), "episode_id": buf_view["id"], "parent_run_id": None, "name": call["name"],
               "args": call.get("args", {}), "tool_call_id": call.get("id"), "_order": tick,
               "latency_ms": (time.perf_counter() - started) * 1000}
        if error is not None:
            run |= {"output": None, "error": f"{type(error).__name__}: {error}"}
        else:
            content = getattr(result, "content", None)
            text = content if isinstance(content, str) else str(content)
            run |= {"output": text, "error": text if getattr(result, "status", None) == "error" else None}
        with self._lock:
            target = self._open.get(buf_view["id"])
            if target is not None:
                target["tool_runs"].append({**run, "seq": len(target["tool_runs"])})

    def wrap_model_call(self, request: Any, handler: Callable[[Any], Any]) -> Any:
        tick = self._buffer(request.state)["_tick"]
        started = time.perf_counter()
        try:
            response = handler(request)
        except BaseException as exc:
            self._record_call(request, None, exc, started, tick)
            self._fail(self._buffer(request.state)["id"], exc)
            raise
        self._record_call(request, response, None, started, tick)
        return response

    async def awrap_model_call(self, request: Any, handler: Callable[[Any], Any]) -> Any:
        tick = self._buffer(request.state)["_tick"]
        started = time.perf_counter()
        try:
            response = await handler(request)
        except BaseException as exc:
            self._record_call(request, None, exc, started, tick)
            await asyncio.to_thread(self._fail, self._buffer(request.state)["id"], exc)
            raise
        self._record_call(request, response, None, started, tick)
        return response

    def wrap_tool_call(self, request: Any, handler: Callable[[Any], Any]) -> Any:
        tick = self._buffer(request.state)["_tick"]
        started = time.perf_counter()
        try:
            result = handler(request)
        except BaseException as exc:
            self._record_tool(request, None, exc, started, tick)
            self._fail(self._buffer(request.state)["id"], exc)  # stored now; the run may still go on
            raise
        self._record_tool(request, result, None, started, tick)
        return result

    async def awrap_tool_call(self, request: Any, handler: Callable[[Any], Any]) -> Any:
        tick = self._buffer(request.state)["_tick"]
        started = time.perf_counter()
        try:
            result = await handler(request)
        except BaseException as exc:
            self._record_tool(request, None, exc, started, tick)
            await asyncio.to_thread(self._fail, self._buffer(request.state)["id"], exc)
            raise
        self._record_tool(request, result, None, started, tick)
        return result


# --- the student in front of the teacher ---------------------------------------------------------


def grounded_answer(messages: list[Any], reply: AIMessage, tools: list[dict[str, Any]]) -> StepError | None:
    """The default check of a student's answer in words: where tools are offered, it must come after a
    tool result of this turn (an answer given without looking anything up is the small model's
    typical hallucination); without tools any answer goes."""
    if not tools:
        return None
    for m in reversed(messages):
        if isinstance(m, ToolMessage):
            return None
        if isinstance(m, HumanMessage):
            break
    return StepError(kind="no_call", detail="answered in words without calling a tool this turn")


def student_failure(message: Any, tools: list[dict[str, Any]], *, require_call: bool = False) -> StepError | None:
    """Why a student's reply is not a usable call (so it goes to the teacher), or None. A reply in
    words is judged by `StudentMiddleware.validate`, not here (unless `require_call`)."""
    if not isinstance(message, AIMessage):
        return StepError(kind="no_call", detail="not an assistant message")
    if message.invalid_tool_calls:
        bad = message.invalid_tool_calls[0]
        return StepError(kind="parse_error", detail=str(bad.get("error") or "unreadable call"), call=bad.get("name"))
    if not message.tool_calls:
        text = message.content if isinstance(message.content, str) else ""
        try:
            parse_calls(text)
            return StepError(kind="parse_error", detail="a call written as text, not parsed into tool_calls")
        except CallParseError:
            return StepError(kind="no_call", detail="the reply has no function call") if require_call else None
    return calls_error([{"name": c["name"], "args": c.get("args") or {}} for c in message.tool_calls], tools)


def repeated_call(messages: list[Any], reply: AIMessage) -> StepError | None:
    """A call the agent already made with the same arguments since the user's last message: a small
    model going round in circles (its context grows until the step limit or the model's length)."""
    earlier = set()
    for m in reversed(messages):
        if isinstance(m, HumanMessage):
            break
        if isinstance(m, AIMessage):
            earlier |= {(c["name"], json.dumps(c.get("args") or {}, sort_keys=True)) for c in m.tool_calls}
    for c in reply.tool_calls:
        if (c["name"], json.dumps(c.get("args") or {}, sort_keys=True)) in earlier:
            return StepError(kind="repeated_call", detail=f"{c['name']} was already called with these arguments",
                             call=c["name"])
    return None


_JUDGE_PROMPT = ("You check an assistant's final answer. Reply with only YES if the answer follows from the "
                 "conversation (the user's request and the tool results), or NO: <why> if it does not.")

Validator = Literal["grounded", "any"] | Callable[..., Any] | BaseChatModel


class StudentCheck:
    """Whether a student's reply can stand, or must go to the teacher: one decision for
    `StudentMiddleware` and `fcagent serve`.

    A call fails when it cannot be read, names an unknown function, has schema-invalid arguments or
    repeats a call already made in this turn (`repeated_call`: a small model's loop). An answer in
    words is checked by `validate`:

    * `"grounded"` (default): accepted where a tool result of this turn came before it, or no tools
      are offered (`grounded_answer`); a small model that answers without looking anything up is
      escalated;
    * `"any"`: every answer in words is accepted;
    * a function `(messages, reply) -> bool | str | None` (False or a string: the reason it fails);
    * a chat model: a judge asked whether the answer follows from the conversation (YES / NO: why).
    """

    def __init__(self, validate: Validator = "grounded", *, require_call: bool = False):
        if not (validate in ("grounded", "any") or callable(validate) or isinstance(validate, BaseChatModel)):
            raise UserError("`validate` must be 'grounded', 'any', a function (messages, reply) -> bool | str | None, "
                            f"or a chat model, got {validate!r}")
        self.validate = validate
        self.require_call = require_call
        self.judges = isinstance(validate, BaseChatModel)  # a model call: async callers run it off the loop

    def failure(self, messages: list[Any], reply: AIMessage | None, tools: list[dict[str, Any]]) -> StepError | None:
        """Why `reply` (to `messages`, with `tools` offered) fails, or None when it can stand."""
        if reply is None:
            return StepError(kind="no_call", detail="the student returned no message")
        why = student_failure(reply, tools, require_call=self.require_call)
        if why is None and reply.tool_calls:
            return repeated_call(messages, reply)
        if why is None:
            return self._judge_text(messages, reply, tools)
        return why

    def _judge_text(self, messages: list[Any], reply: AIMessage, tools: list[dict[str, Any]]) -> StepError | None:
        if self.validate == "any":
            return None
        if self.validate == "grounded":
            return grounded_answer(messages, reply, tools)
        if isinstance(self.validate, BaseChatModel):
            transcript = "\n".join(f"{m.type}: {m.content}" for m in messages if isinstance(m.content, str))
            verdict = self.validate.invoke([SystemMessage(_JUDGE_PROMPT),
                                            HumanMessage(f"{transcript}\n\nFinal answer: {reply.content}")])
            text = str(verdict.content).strip()
            return None if text.upper().startswith("YES") else StepError(kind="no_call", detail=f"judge: {text[:300]}")
        outcome = self.validate(messages, reply)  # type: ignore[operator]
        if outcome is None or outcome is True:
            return None
        return StepError(kind="no_call", detail=outcome if isinstance(outcome, str) else "rejected by `validate`")


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
    """

    def __init__(self, student: Any, *, teacher: Any = None, store: str | TraceStore | None = None,
                 validate: Validator = "grounded", require_call: bool = False):
        super().__init__()
        self.check = StudentCheck(validate, require_call=require_call)
        self.student = student
        self.teacher = teacher
        self.store = open_store(store) if store is not None else None
        self.escalations = 0
        self.student_calls = 0
        self._lock = threading.Lock()

    def _failure(self, request: Any, reply: AIMessage | None) -> StepError | None:
        return self.check.failure(_request_messages(request), reply, tool_schemas(list(request.tools or [])))

    def _stamp(self, response: Any, model: Any) -> Any:
        for m in _replies(response):
            m.response_metadata.setdefault("model_name", _model_name(model))
        return response

    def _route(self, request: Any, student_response: Any, why: StepError | None) -> Any:
        """After the student answered: None to accept it, else the request to send to the teacher."""
        with self._lock:
            self.student_calls += 1
            if why is not None:
                self.escalations += 1
        if why is None:
            self._stamp(student_response, self.student)
            return None
        return request.override(model=self.teacher) if self.teacher is not None else request

    def wrap_model_call(self, request: Any, handler: Callable[[Any], Any]) -> Any:
        student_response = handler(request.override(model=self.student))
        replies = _replies(student_response)
        why = self._failure(request, replies[-1] if replies else None)
        teacher_request = self._route(request, student_response, why)
        if teacher_request is None:
            return student_response
        teacher_response = self._stamp(handler(teacher_request), teacher_request.model)
        self._record_pair(request, replies[-1] if replies else None, _replies(teacher_response), why,
                          teacher_request.model)
        return teacher_response

    async def awrap_model_call(self, request: Any, handler: Callable[[Any], Any]) -> Any:
        student_response = await handler(request.override(model=self.student))
        replies = _replies(student_response)
        reply = replies[-1] if replies else None
        why = await asyncio.to_thread(self._failure, request, reply) if self.check.judges else self._failure(request, reply)
        teacher_request = self._route(request, student_response, why)
        if teacher_request is None:
            return student_response
        teacher_response = self._stamp(await handler(teacher_request), teacher_request.model)
        await asyncio.to_thread(self._record_pair, request, replies[-1] if replies else None,
                                _replies(teacher_response), why, teacher_request.model)
        return teacher_response

    def _record_pair(self, request: Any, student_msg: AIMessage | None, teacher_msgs: list[AIMessage],
                     why: StepError | None, teacher_model: Any) -> None:
        if self.store is None or student_msg is None or not teacher_msgs or why is None:
            return
        messages = _request_messages(request)
        tools = tool_schemas(list(request.tools or []))
        now = time.time()
        buf = {"id": str(uuid.uuid4()), "name": "student-escalation", "started_at": now, "ended_at": now,
               "tags": ["escalation"], "metadata": {keys.ROLE: keys.Role.STUDENT_ESCALATED.value}, "tool_runs": [],
               "completions": [
                   {"id": str(uuid.uuid4()), "messages": messages, "params": {}, "tools": tools,
                    "model": _model_name(teacher_model), "metadata": {keys.PROTOCOL: "native"},
                    "generations": [ChatGeneration(message=teacher_msgs[-1])]},
                   {"id": str(uuid.uuid4()), "messages": messages, "params": {}, "tools": tools,
                    "model": _model_name(self.student), "metadata": {keys.PROTOCOL: "native"},
                    "generations": [ChatGeneration(message=student_msg)]}]}
        trace = episode_from_buffer(buf)
        teacher_id, student_id = (c["id"] for c in trace["completions"])
        trace["labels"] += [
            {"target_id": teacher_id, "candidate": 0, "success": True, "source": "student-middleware",
             "reason": "teacher answer after a student failure"},
            {"target_id": student_id, "candidate": 0, "success": False, "source": "student-middleware",
             "kind": why.kind, "reason": str(why)}]
        self.store.write_episode(trace)
