"""`TraceRecorder`: LangChain callbacks that record every model call as a candidate completion.

Attach it to any Runnable with `config={"callbacks": [recorder]}`: fcagent's graph, a
`langchain.agents.create_agent` agent, a plain `model.bind_tools(...)` chain. One root invocation is
one episode. Callbacks only keep references in an `EpisodeBuffer` (the hot path is a few attribute
writes); when its root run ends, the episode is queued for the store's writer thread, which converts
it (`episode_from_buffer`) and writes it, episodes finished together in one SQLite transaction.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any, Literal
from uuid import UUID

from langchain_core.callbacks import BaseCallbackHandler
from langchain_core.messages import BaseMessage

from fcagent.agent.prompting import tool_schemas
from fcagent.core.names import invocation_model_name
from fcagent.tracing.buffers import CallBuffer, EpisodeBuffer, ToolRunBuffer
from fcagent.tracing.episodes import (
    EPISODE_OUTPUT_KEYS,
    MAX_TOOL_OUTPUT_CHARS,
    EpisodeWrites,
    WritesEpisodes,
    episode_from_buffer,
    normalize_tools,
)
from fcagent.tracing.store import DEFAULT_STORE, TraceStore

__all__ = ["TraceRecorder"]

if TYPE_CHECKING:  # only for the annotation: the OTLP packages are an extra
    from fcagent.tracing.otlp.outbound import OtlpSink

log = logging.getLogger("fcagent")


class TraceRecorder(WritesEpisodes, BaseCallbackHandler):
    """Records episodes into a `TraceStore`: `TraceRecorder(store="traces.db", team="search")`.

    One root run is one episode, and the episode's id is that run's `run_id` (pass
    `config={"run_id": ...}` to know it before the run; label it later with that id). Keyword
    arguments become episode metadata. Sync and async runs share this one implementation
    (`run_inline` keeps events in order in async code without a thread hop).

    `tools=[...]`: the agent's tools, for models whose `bind_tools` keeps the schemas somewhere the
    callbacks cannot see (the recorder warns once per such model). `on_write_error`: a failed store
    write is `"report"`ed (logged naming the episode and kept in `write_errors`, the agent's run
    goes on: the default, since a trace should not take production down) or `"raise"`d into the run.
    With `"report"` the episode is written by the store's writer thread (`background`, see
    `EpisodeWrites`): `flush()` before reading `episodes_written` or `write_errors`; reads through
    the store wait by themselves. `otlp=OtlpSink.endpoint(url)` (or `.file(path)`): each episode is also sent
    as OpenTelemetry GenAI spans, redacted, off the agent's path (`fcagent.tracing.otlp.outbound`).
    """

    run_inline = True

    def __init__(self, store: str | TraceStore = DEFAULT_STORE, *, tags: list[str] | None = None,
                 tools: list[Any] | None = None, max_tool_output_chars: int = MAX_TOOL_OUTPUT_CHARS,
                 on_write_error: Literal["report", "raise"] = "report", background: bool | None = None,
                 otlp: OtlpSink | None = None,
                 **metadata: Any):
        self.writes = EpisodeWrites(store, on_write_error, background, otlp)
        self.store = self.writes.store
        self.metadata = metadata
        self.tags = list(tags or [])
        self.tools = normalize_tools(tool_schemas(tools)) if tools else []
        self.max_tool_output_chars = max_tool_output_chars
        self.on_write_error = on_write_error
        self.raise_error = on_write_error == "raise"
        self._root: dict[UUID, UUID] = {}
        self._open: dict[UUID, EpisodeBuffer] = {}
        self._runs: dict[UUID, CallBuffer | ToolRunBuffer] = {}
        self._order = 0
        self._warned_models: set[str] = set()

    # --- episode bookkeeping -------------------------------------------------------------------

    def _start_episode(self, run_id: UUID, name: str | None, tags: list[str] | None,
                       metadata: dict[str, Any] | None) -> EpisodeBuffer:
        buf = EpisodeBuffer(id=str(run_id), name=name, started_at=time.time(), tags=[*self.tags, *(tags or [])],
                            metadata={**(metadata or {}), **self.metadata}, tools=self.tools)
        self._open[run_id] = buf
        self._root[run_id] = run_id
        return buf

    def _episode(self, run_id: UUID, parent_run_id: UUID | None) -> EpisodeBuffer | None:
        root = self._root.get(parent_run_id) if parent_run_id is not None else None
        if root is None:
            return None
        self._root[run_id] = root
        return self._open.get(root)

    def _next(self) -> int:
        self._order += 1
        return self._order

    def _finish(self, run_id: UUID, *, outputs: Any = None, error: BaseException | None = None) -> None:
        buf = self._open.pop(run_id, None)
        self._root.pop(run_id, None)
        if buf is None:
            return
        buf.ended_at = time.time()
        if error is not None:
            buf.status = "error"
            buf.error = f"{type(error).__name__}: {error}"
        # Drop the run map entries of this episode (kept small for long-lived recorders).
        for rid in [r for r, root in self._root.items() if root == run_id]:
            self._root.pop(rid, None)
            self._runs.pop(rid, None)
        if isinstance(outputs, dict):  # what the episode reads, as it is now (the caller owns the state)
            buf.outputs = {k: outputs[k] for k in EPISODE_OUTPUT_KEYS if k in outputs}

        def build() -> dict[str, Any]:
            trace = episode_from_buffer(buf, max_tool_output_chars=self.max_tool_output_chars)
            self._warn_missing_tools(trace)
            return trace

        self.writes.submit(buf.id, build)

    def _warn_missing_tools(self, trace: dict[str, Any]) -> None:
        for comp in trace["completions"]:
            uses_tools = any(m.get("tool_calls") or m["role"] == "tool" for m in comp["messages"]) or any(
                cand.get("calls") for cand in comp["candidates"])
            name = comp.get("model") or "?"
            if uses_tools and not comp["tools"] and comp.get("protocol") != "text" and name not in self._warned_models:
                self._warned_models.add(name)
                log.warning("fcagent: model %s calls tools but its tool schemas are not in its invocation params; "
                            "exported rows will lack the function list. Pass them: TraceRecorder(store, tools=[...])",
                            name)

    # --- chains --------------------------------------------------------------------------------

    def on_chain_start(self, serialized: dict[str, Any] | None, inputs: Any, *, run_id: UUID,
                       parent_run_id: UUID | None = None, tags: list[str] | None = None,
                       metadata: dict[str, Any] | None = None, **kwargs: Any) -> None:
        if parent_run_id is None or parent_run_id not in self._root:
            self._start_episode(run_id, kwargs.get("name") or (serialized or {}).get("name"), tags, metadata)
        else:
            self._root[run_id] = self._root[parent_run_id]

    def on_chain_end(self, outputs: Any, *, run_id: UUID, **kwargs: Any) -> None:
        if run_id in self._open:
            self._finish(run_id, outputs=outputs)

    def on_chain_error(self, error: BaseException, *, run_id: UUID, **kwargs: Any) -> None:
        if run_id in self._open:
            self._finish(run_id, error=error)

    # --- chat models ---------------------------------------------------------------------------

    def on_chat_model_start(self, serialized: dict[str, Any] | None, messages: list[list[BaseMessage]], *,
                            run_id: UUID, parent_run_id: UUID | None = None, tags: list[str] | None = None,
                            metadata: dict[str, Any] | None = None, **kwargs: Any) -> None:
        buf = self._episode(run_id, parent_run_id)
        if buf is None:  # a model called on its own is an episode of one call
            buf = self._start_episode(run_id, (serialized or {}).get("name"), tags, metadata)
        params = kwargs.get("invocation_params") or {}
        call = self._runs[run_id] = CallBuffer(
            id=str(run_id), parent=str(parent_run_id) if parent_run_id else None,
            messages=messages[0] if messages else [], params=params, metadata=metadata or {}, serialized=serialized,
            model=invocation_model_name(params, serialized), started=time.perf_counter(), order=self._next())
        buf.calls.append(call)

    def on_llm_end(self, response: Any, *, run_id: UUID, **kwargs: Any) -> None:
        call = self._runs.pop(run_id, None)
        if not isinstance(call, CallBuffer):
            return
        call.latency_ms = (time.perf_counter() - call.started) * 1000
        call.generations = response.generations[0] if response.generations else []
        usage = (response.llm_output or {}).get("token_usage") or (response.llm_output or {}).get("usage")
        if not usage and call.generations:
            usage = getattr(getattr(call.generations[0], "message", None), "usage_metadata", None)
        call.usage = dict(usage) if usage else {}
        if run_id in self._open:
            self._finish(run_id)

    def on_llm_error(self, error: BaseException, *, run_id: UUID, **kwargs: Any) -> None:
        call = self._runs.pop(run_id, None)
        if call is not None:
            call.error = f"{type(error).__name__}: {error}"
            call.latency_ms = (time.perf_counter() - call.started) * 1000
        if run_id in self._open:
            self._finish(run_id, error=error)

    # --- tools ---------------------------------------------------------------------------------

    def on_tool_start(self, serialized: dict[str, Any] | None, input_str: str, *, run_id: UUID,
                      parent_run_id: UUID | None = None, inputs: dict[str, Any] | None = None, **kwargs: Any) -> None:
        buf = self._episode(run_id, parent_run_id)
        if buf is None:
            buf = self._start_episode(run_id, (serialized or {}).get("name"), kwargs.get("tags"), kwargs.get("metadata"))
        run = self._runs[run_id] = ToolRunBuffer(
            id=str(run_id), parent=str(parent_run_id) if parent_run_id else None,
            name=(serialized or {}).get("name") or kwargs.get("name") or "tool",
            args=inputs if inputs is not None else input_str, tool_call_id=kwargs.get("tool_call_id"),
            started=time.perf_counter(), order=self._next())
        buf.tool_runs.append(run)

    def _tool_done(self, run_id: UUID, output: str | None, error: str | None) -> None:
        run = self._runs.pop(run_id, None)
        if not isinstance(run, ToolRunBuffer):
            return
        run.latency_ms = (time.perf_counter() - run.started) * 1000
        run.output, run.error = output, error  # capped when the episode is built, off the agent's path
        if run_id in self._open:
            self._finish(run_id)

    def on_tool_end(self, output: Any, *, run_id: UUID, **kwargs: Any) -> None:
        content = getattr(output, "content", output)
        text = content if isinstance(content, str) else str(content)
        # A ToolException the tool handled itself (`handle_tool_error=True`) ends as a ToolMessage
        # with status "error": a failed call all the same.
        failed = getattr(output, "status", None) == "error"
        self._tool_done(run_id, text, text if failed else None)

    def on_tool_error(self, error: BaseException, *, run_id: UUID, **kwargs: Any) -> None:
        self._tool_done(run_id, None, f"{type(error).__name__}: {error}")
