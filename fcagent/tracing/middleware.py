"""`TraceMiddleware`: LangChain v1 `create_agent` middleware that records what `TraceRecorder` records.

`create_agent(model, tools, middleware=[TraceMiddleware(store="traces.db")])` writes the same episodes
(candidate completions, tool runs, automatic labels for failed tools) through the agent's hooks. The
episode id is the run's `run_id` when the caller passes one (`agent.invoke(x, {"run_id": rid})`, the
id an app already holds for feedback), else a fresh uuid; either way it is in the result as
`fcagent_episode_id`. A run that raises is still stored (status `error`), and no buffer outlives its
run. Sync and async hooks share every decision (`_record_call`, `_record_tool`): only the awaiting
differs.
"""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Literal, NotRequired

from langchain.agents.middleware import AgentMiddleware, AgentState
from langchain_core.messages import AIMessage, SystemMessage
from langchain_core.outputs import ChatGeneration

from fcagent.agent.prompting import tool_schemas
from fcagent.core import keys
from fcagent.core.names import model_name
from fcagent.tracing.buffers import CallBuffer, EpisodeBuffer, ToolRunBuffer
from fcagent.tracing.episodes import EpisodeWrites, WritesEpisodes, episode_from_buffer
from fcagent.tracing.store import DEFAULT_STORE, TraceStore

__all__ = ["TraceMiddleware", "TracedState", "EPISODE_ID_KEY", "request_messages", "replies"]

if TYPE_CHECKING:  # only for the annotation: the OTLP packages are an extra
    from fcagent.tracing.otlp.outbound import OtlpSink

EPISODE_ID_KEY = keys.EPISODE_ID
_KEEP_ERRORED = 64  # buffers of runs that raised, stored already, kept in case an outer retry goes on


class TracedState(AgentState):
    """The agent state with the episode id the trace is stored under."""

    fcagent_episode_id: NotRequired[str]


def request_messages(request: Any) -> list[Any]:
    """A `ModelRequest`'s messages as the model gets them: the system message first."""
    messages = list(request.messages)
    system = getattr(request, "system_message", None)
    if system is not None:
        messages = [system if isinstance(system, SystemMessage) else SystemMessage(str(system)), *messages]
    return messages


def replies(response: Any) -> list[AIMessage]:
    """The assistant messages of a model call's response (`ModelResponse` or a bare message)."""
    result = getattr(response, "result", None)
    if result is None:
        result = [response]
    return [m for m in result if isinstance(m, AIMessage)]


class TraceMiddleware(WritesEpisodes, AgentMiddleware):
    """`create_agent(model, tools, middleware=[TraceMiddleware(store="traces.db")])`."""

    state_schema = TracedState

    def __init__(self, store: str | TraceStore = DEFAULT_STORE, *, tags: list[str] | None = None,
                 on_write_error: Literal["report", "raise"] = "report", background: bool | None = None,
                 otlp: OtlpSink | None = None,
                 **metadata: Any):
        super().__init__()
        self.writes = EpisodeWrites(store, on_write_error, background, otlp)  # the recorder's, shared
        self.store = self.writes.store
        self.metadata = metadata
        self.tags = ["middleware", *(tags or [])]
        self.on_write_error = on_write_error
        self._open: dict[str, EpisodeBuffer] = {}
        self._errored: OrderedDict[str, EpisodeBuffer] = OrderedDict()
        self._lock = threading.Lock()
        self._order = 0

    # --- episodes ------------------------------------------------------------------------------

    def _new_buffer(self, episode_id: str, metadata: dict[str, Any]) -> EpisodeBuffer:
        return EpisodeBuffer(id=episode_id, name="create_agent", started_at=time.time(), tags=list(self.tags),
                             metadata=metadata)

    def _start(self, state: Any, runtime: Any) -> dict[str, Any]:
        info = getattr(runtime, "execution_info", None)
        episode_id = str(getattr(info, "run_id", None) or uuid.uuid4())
        thread = {"thread_id": info.thread_id} if getattr(info, "thread_id", None) else {}
        with self._lock:
            self._open[episode_id] = self._new_buffer(episode_id, {**self.metadata, **thread})
        return {EPISODE_ID_KEY: episode_id}

    def _buffer(self, state: Any) -> tuple[EpisodeBuffer, int]:
        """The episode a hook belongs to, and this event's place in it."""
        episode_id = (state or {}).get(EPISODE_ID_KEY) if isinstance(state, dict) else None
        with self._lock:
            buf = self._open.get(episode_id) if episode_id else None
            if buf is None and episode_id in self._errored:
                buf = self._open[episode_id] = self._errored.pop(episode_id)  # an outer retry goes on
            if buf is None:  # a graph without before_agent (a hand-made loop): an episode per call site
                episode_id = episode_id or str(uuid.uuid4())
                buf = self._open[episode_id] = self._new_buffer(episode_id, dict(self.metadata))
            self._order += 1
            return buf, self._order

    def _write(self, buf: EpisodeBuffer, *, final: bool) -> None:
        # As it is now: an errored episode's buffer may be picked up again by an outer retry.
        snapshot = buf.snapshot()
        self.writes.submit(buf.id, lambda: episode_from_buffer(snapshot), replace=True, final=final)

    def _fail(self, buf_id: str, error: BaseException) -> None:
        """A hook raised: the run is (probably) over. Store what it did now, keep the buffer a while."""
        with self._lock:
            buf = self._open.pop(buf_id, None)
            if buf is None:
                return
            self._errored[buf_id] = buf
            while len(self._errored) > _KEEP_ERRORED:
                self._errored.popitem(last=False)
        buf.status, buf.error, buf.ended_at = "error", f"{type(error).__name__}: {error}", time.time()
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
            buf.ended_at = time.time()
            buf.status, buf.error = "complete", None
            last = state["messages"][-1] if state.get("messages") else None
            buf.outputs = {"final_answer": last.content if isinstance(last, AIMessage) else None}
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
        buf, _ = self._buffer(request.state)
        answers = replies(response) if response is not None else []
        produced_by = next((m.response_metadata.get("model_name") for m in answers
                            if isinstance(m.response_metadata.get("model_name"), str)), None)
        usage = getattr(answers[0], "usage_metadata", None) if answers else None
        call = CallBuffer(
            id=str(uuid.uuid4()), messages=request_messages(request), metadata={keys.PROTOCOL: "native"},
            tools=tool_schemas(list(request.tools or [])), model=produced_by or model_name(request.model),
            generations=[ChatGeneration(message=m) for m in answers], usage=dict(usage) if usage else {},
            latency_ms=(time.perf_counter() - started) * 1000, order=tick,
            error=f"{type(error).__name__}: {error}" if error is not None else None)
        with self._lock:
            if buf.id in self._open:
                buf.calls.append(call)

    def _record_tool(self, request: Any, result: Any, error: BaseException | None, started: float, tick: int) -> None:
        buf, _ = self._buffer(request.state)
        call = request.tool_call
        run = ToolRunBuffer(id=str(uuid.uuid4()), name=call["name"], args=call.get("args", {}),
                            tool_call_id=call.get("id"), order=tick, latency_ms=(time.perf_counter() - started) * 1000)
        if error is not None:
            run.error = f"{type(error).__name__}: {error}"
        else:
            content = getattr(result, "content", None)
            run.output = content if isinstance(content, str) else str(content)
            run.error = run.output if getattr(result, "status", None) == "error" else None
        with self._lock:
            if buf.id in self._open:
                buf.tool_runs.append(run)

    def wrap_model_call(self, request: Any, handler: Callable[[Any], Any]) -> Any:
        _, tick = self._buffer(request.state)
        started = time.perf_counter()
        try:
            response = handler(request)
        except BaseException as exc:
            self._record_call(request, None, exc, started, tick)
            self._fail(self._buffer(request.state)[0].id, exc)
            raise
        self._record_call(request, response, None, started, tick)
        return response

    async def awrap_model_call(self, request: Any, handler: Callable[[Any], Any]) -> Any:
        _, tick = self._buffer(request.state)
        started = time.perf_counter()
        try:
            response = await handler(request)
        except BaseException as exc:
            self._record_call(request, None, exc, started, tick)
            await asyncio.to_thread(self._fail, self._buffer(request.state)[0].id, exc)
            raise
        self._record_call(request, response, None, started, tick)
        return response

    def wrap_tool_call(self, request: Any, handler: Callable[[Any], Any]) -> Any:
        _, tick = self._buffer(request.state)
        started = time.perf_counter()
        try:
            result = handler(request)
        except BaseException as exc:
            self._record_tool(request, None, exc, started, tick)
            self._fail(self._buffer(request.state)[0].id, exc)  # stored now; the run may still go on
            raise
        self._record_tool(request, result, None, started, tick)
        return result

    async def awrap_tool_call(self, request: Any, handler: Callable[[Any], Any]) -> Any:
        _, tick = self._buffer(request.state)
        started = time.perf_counter()
        try:
            result = await handler(request)
        except BaseException as exc:
            self._record_tool(request, None, exc, started, tick)
            await asyncio.to_thread(self._fail, self._buffer(request.state)[0].id, exc)
            raise
        self._record_tool(request, result, None, started, tick)
        return result
