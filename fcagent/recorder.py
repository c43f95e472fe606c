"""`TraceRecorder`: LangChain callbacks that record every model call as a candidate completion.

Attach it to any Runnable with `config={"callbacks": [recorder]}`: fcagent's graph, a
`langchain.agents.create_agent` agent, a plain `model.bind_tools(...)` chain. One root invocation is
one episode. Callbacks only keep references (the hot path is a few dict operations); when its root
run ends, the episode is queued for the store's writer thread, which converts it and writes it
(episodes finished together in one SQLite transaction) off the agent's path.
"""

from __future__ import annotations

import functools
import json
import logging
import re
import time
from typing import Any, Literal
from uuid import UUID

from langchain_core.callbacks import BaseCallbackHandler
from langchain_core.messages import BaseMessage
from langchain_core.utils.function_calling import convert_to_openai_tool

from fcagent import keys
from fcagent.calls import CallParseError, calls_error, parse_calls
from fcagent.errors import UserError
from fcagent.prompting import tool_schemas
from fcagent.records import StepError, context_hash, message_record
from fcagent.redact import Redactor
from fcagent.store import StoreWriteError, TraceStore, open_store

__all__ = ["TraceRecorder", "EpisodeWrites", "episode_from_buffer", "normalize_tools", "MAX_TOOL_OUTPUT_CHARS"]

log = logging.getLogger("fcagent")

MAX_TOOL_OUTPUT_CHARS = 200_000  # a tool's output is stored in full up to this size
# Parameter names that may hold a credential: never stored, whatever the value looks like.
_SECRET_PARAM = re.compile(r"api[_\-]?key|secret|passw|pwd|token|auth|bearer|session|credential|header|cookie|"
                           r"signature|private|^key$|[_\-]key$", re.I)
_KEEP_PARAM = re.compile(r"^(?:max|min|num)_\w*tokens$|^top_logprobs$")  # counts, not credentials
_TOOL_PARAM_KEYS = ("tools", "functions")  # where providers' bind_tools put the schemas
_PARAM_REDACTOR = Redactor()


_redact_cached = functools.lru_cache(maxsize=4096)(_PARAM_REDACTOR.redact)


def _redact_param(value: str) -> str:
    """A parameter value, redacted. The same few values (a model name, a stop string, a base URL) come
    with every call: cached, the ~50 rules run once per distinct value, not on every model call."""
    return _redact_cached(value) if len(value) <= 4096 else _PARAM_REDACTOR.redact(value)


def _safe_params(params: dict[str, Any]) -> dict[str, Any]:
    """Invocation params without tools (stored apart) and without anything that may be a credential:
    secret-ish names are dropped, and the values left are redacted by pattern (a key inside a
    `base_url`, a token passed under an innocent name)."""
    out = {}
    for k, v in params.items():
        if k in _TOOL_PARAM_KEYS or (_SECRET_PARAM.search(k) and not _KEEP_PARAM.match(k)):
            continue
        if isinstance(v, str):
            out[k] = _redact_param(v)
        elif isinstance(v, int | float | bool) or v is None:
            out[k] = v
        elif isinstance(v, list | tuple) and all(isinstance(x, str | int | float) for x in v):
            out[k] = [_redact_param(x) if isinstance(x, str) else x for x in v]
    return out


def _model_name(params: dict[str, Any], serialized: dict[str, Any] | None) -> str | None:
    for key in ("model_name", "model", "model_id", "deployment_name"):
        if isinstance(params.get(key), str):
            return params[key]
    return (serialized or {}).get("name") or params.get("_type")


def normalize_tools(tools: Any) -> list[dict[str, Any]]:
    """Tool schemas in OpenAI's shape, from whatever a provider's `bind_tools` stored (OpenAI,
    Anthropic `input_schema`, LangChain tools, ...); what cannot be read is left out."""
    if not isinstance(tools, list | tuple):
        return []
    out = []
    for t in tools:
        if isinstance(t, dict) and t.get("type") == "function" and isinstance(t.get("function"), dict):
            out.append(t)
            continue
        try:
            out.append(convert_to_openai_tool(t))
        except Exception:  # noqa: BLE001 - a provider-specific shape (e.g. Gemini's declarations): skipped
            continue
    return out


def _tools_in(params: dict[str, Any], metadata: dict[str, Any], serialized: dict[str, Any] | None) -> list[dict[str, Any]]:
    for key in _TOOL_PARAM_KEYS:
        if params.get(key):
            found = normalize_tools(params[key])
            if found:
                return found
    if metadata.get(keys.TOOLS):
        return normalize_tools(metadata[keys.TOOLS])
    return normalize_tools(((serialized or {}).get("kwargs") or {}).get("tools"))


def _candidate(message: BaseMessage, protocol: str | None, tools: list[dict[str, Any]]) -> dict[str, Any]:
    """A candidate record: the reply, the calls it makes, and why it is not a usable call (typed).

    Only the text protocol requires a call: there a reply without one is a `parse_error`. Anywhere
    else a reply in words is an answer. Calls a model returned as `invalid_tool_calls` are read back
    where their arguments are JSON, so they are judged like any other call.
    """
    rec: dict[str, Any] = {"message": message_record(message)}
    calls = [{"name": c["name"], "args": c.get("args", {})} for c in getattr(message, "tool_calls", None) or []]
    error: StepError | None = None
    for bad in getattr(message, "invalid_tool_calls", None) or []:
        try:
            args = json.loads(bad.get("args") or "{}")
        except (json.JSONDecodeError, TypeError):
            args = None
        if bad.get("name") and isinstance(args, dict):
            calls.append({"name": bad["name"], "args": args})
        elif error is None:
            error = StepError(kind="parse_error", detail=str(bad.get("error") or "unreadable tool call"),
                              call=bad.get("name"))
    if not calls and protocol == "text":
        try:
            calls = [{"name": c.name, "args": c.args} for c in parse_calls(rec["message"]["content"])]
        except CallParseError as exc:
            error = StepError(kind="parse_error", detail=str(exc))
    if calls and error is None and tools:
        error = calls_error(calls, tools)
    if calls:
        rec["calls"] = calls
    if error is not None:
        rec["error"] = error.model_dump()
    return rec


def _answering_completion(run: dict[str, Any], completions: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The model call a tool run answers: the one whose reply holds its tool-call id, else the last
    model call that started before it."""
    call_id = run.get("tool_call_id")
    if call_id:
        for comp in completions:
            for cand in comp["candidates"][:1]:
                if any(tc.get("id") == call_id for tc in cand["message"].get("tool_calls") or []):
                    return comp
    before = [c for c in completions if c.get("_order", 0) < run.get("_order", 0)]
    return before[-1] if before else None


def episode_from_buffer(buf: dict[str, Any]) -> dict[str, Any]:
    """An episode trace (EpisodeTrace-shaped dict) from what the callbacks or middleware buffered.

    Labels written here: the graph's step errors and valid calls (fcagent's own graph), a failed tool
    run on the model call that caused it (every route), and the task verifier's verdict.
    """
    ep_id = buf["id"]
    outputs = buf.get("outputs") if isinstance(buf.get("outputs"), dict) else {}
    problem = outputs.get("problem")
    meta = buf["metadata"]
    completions, labels = [], []
    step_errors: dict[int, list[dict[str, Any]]] = {}
    for err in outputs.get("errors") or []:
        if isinstance(err, dict) and isinstance(err.get("step"), int):
            step_errors.setdefault(err["step"], []).append(err)
    failed: set[str] = set()
    model = None
    # Each model call's input repeats the messages before it (the same objects): one record each, so
    # an episode of n steps builds n records, not n²/2 (the store writes each shared record once too).
    records: dict[int, dict[str, Any]] = {}
    for seq, c in enumerate(buf["completions"]):
        cmeta = c.get("metadata") or {}
        protocol = cmeta.get(keys.PROTOCOL)
        messages = [records.get(id(m)) or records.setdefault(id(m), message_record(m)) for m in c["messages"]]
        tools = c.get("tools") or _tools_in(c["params"], cmeta, c.get("serialized")) or buf.get("tools") or []
        gens = c.get("generations") or []
        step = cmeta.get(keys.STEP)
        model = model or c["model"]
        comp = {"id": c["id"], "episode_id": ep_id, "parent_run_id": c.get("parent"), "seq": seq, "model": c["model"],
                "protocol": protocol, "step": step, "context_hash": context_hash(messages, tools, cmeta.get(keys.PROMPT)),
                "messages": messages, "tools": tools, "params": _safe_params(c["params"]),
                "candidates": [_candidate(g.message, protocol, tools) for g in gens if hasattr(g, "message")],
                "usage": c.get("usage") or {}, "latency_ms": c.get("latency_ms"), "error": c.get("error"),
                "prompt": cmeta.get(keys.PROMPT), "_order": c.get("order", seq)}
        completions.append(comp)
        if isinstance(step, int) and comp["candidates"]:
            if step in step_errors:
                e = step_errors[step][0]
                labels.append({"target_id": c["id"], "candidate": 0, "success": False, "source": "graph",
                               "kind": e.get("kind"), "reason": f"{e.get('kind')}: {e.get('detail')}"})
                failed.add(c["id"])
            elif comp["candidates"][0].get("calls"):
                labels.append({"target_id": c["id"], "candidate": 0, "success": True, "source": "graph",
                               "reason": "valid call"})
    for run in buf["tool_runs"]:
        if not run.get("error"):
            continue
        comp = _answering_completion(run, completions)
        if comp is not None and comp["id"] not in failed and comp["candidates"]:
            failed.add(comp["id"])
            kind = "timeout" if str(run["error"]).startswith("TimeoutError") else "tool_error"
            labels.append({"target_id": comp["id"], "candidate": 0, "success": False, "source": "tool", "kind": kind,
                           "reason": f"{run['name']}: {str(run['error'])[:500]}"})
    for comp in completions:
        comp.pop("_order", None)
    tool_runs = [{k: v for k, v in run.items() if k != "_order"} for run in buf["tool_runs"]]
    verdict = outputs.get("verdict")
    if isinstance(verdict, dict) and "success" in verdict:
        labels.append({"target_id": ep_id, "candidate": None, "success": bool(verdict["success"]),
                       "source": "verifier", "reason": str(verdict.get("reason", ""))})
    problem_id = getattr(problem, "id", None) or meta.get(keys.PROBLEM_ID)
    kept_outputs = {k: outputs.get(k) for k in ("final_answer", "status", "verdict", "steps", "errors") if k in outputs}
    episode = {
        "id": ep_id, "thread_id": meta.get("thread_id"), "name": buf.get("name"), "started_at": buf["started_at"],
        "ended_at": buf.get("ended_at"), "status": buf.get("status", "complete"),
        "task": getattr(problem, "task", None) or meta.get(keys.TASK), "problem_id": problem_id,
        "split": getattr(problem, "split", None), "model": meta.get(keys.MODEL) or model,
        "metadata": {k: v for k, v in meta.items() if isinstance(v, str | int | float | bool) and not k.startswith("langgraph_")},
        "tags": list(dict.fromkeys(buf.get("tags") or [])), "outputs": kept_outputs, "error": buf.get("error"),
    }
    if problem_id and not episode["split"]:
        from fcagent.tasks.base import split_of

        episode["split"] = meta.get(keys.SPLIT) or split_of(problem_id)
    return {"episode": episode, "completions": completions, "tool_runs": tool_runs, "labels": labels}


# The keys of a root run's outputs an episode keeps or labels from (`episode_from_buffer`).
_OUTPUT_KEYS = ("problem", "errors", "verdict", "final_answer", "status", "steps")


class EpisodeWrites:
    """Where a recorder's (or the middleware's) finished episodes go, and what became of them.

    `background=True` (the default with `on_write_error="report"`): the episode is queued on the
    store's writer thread (`TraceStore.write_episode_soon`) and the agent's run goes on at once;
    a failure is logged naming the episode and kept in `errors`, as a failed write in the run is.
    `on_write_error="raise"` writes in the run, so the error can be raised into it. Reads through
    the store wait for queued episodes; `flush()` waits for them (the counters are final then).
    """

    def __init__(self, store: str | TraceStore, on_write_error: Literal["report", "raise"], background: bool | None) -> None:
        if on_write_error not in ("report", "raise"):
            raise UserError(f"`on_write_error` must be 'report' or 'raise', got {on_write_error!r}")
        if background and on_write_error == "raise":
            raise UserError("`on_write_error='raise'` raises a failed write into the run, so it writes in the run: "
                            "it cannot be combined with `background=True`")
        self.store = open_store(store)  # after the checks: a bad argument creates no file
        self.raise_error = on_write_error == "raise"
        self.background = not self.raise_error if background is None else background
        self.errors: list[StoreWriteError] = []
        self.written = 0  # stored
        self.present = 0  # already in the store (an id, or a `DEDUPE` key, seen before): not stored again
        self.last_episode_id: str | None = None

    def submit(self, episode_id: str, build: Any, *, replace: bool = False, final: bool = True) -> None:
        """Write the trace `build()` makes, now or on the writer thread."""
        if self.background:
            if final:  # finished (its write may still be queued: reads wait for it)
                self.last_episode_id = episode_id
            self.store.write_episode_soon(episode_id, build, replace=replace,
                                          done=functools.partial(self._done, episode_id, False))
            return
        try:
            stored = self.store.write_episode(build(), replace=replace)
        except Exception as exc:  # noqa: BLE001 - reported or raised, as the caller chose
            failure = StoreWriteError(episode_id, exc)
            self._done(episode_id, final, None, failure)
            if self.raise_error:
                raise failure from exc
            return
        self._done(episode_id, final, stored, None)

    def _done(self, episode_id: str, final: bool, stored: bool | None, error: StoreWriteError | None) -> None:
        if error is not None:
            self.errors.append(error)
            log.error("%s", error)
            return
        if final:
            self.last_episode_id = episode_id
        if stored:
            self.written += 1
        else:
            self.present += 1

    def flush(self) -> None:
        self.store.flush()


class WritesEpisodes:
    """What the recorder and the middleware say of their writes (both hold an `EpisodeWrites`)."""

    writes: EpisodeWrites

    @property
    def write_errors(self) -> list[StoreWriteError]:
        return self.writes.errors

    @property
    def episodes_written(self) -> int:
        """Episodes stored (queued ones count once written: `flush()` first)."""
        return self.writes.written

    @property
    def episodes_present(self) -> int:
        """Episodes already in the store (an id, or a `DEDUPE` key, seen before): not stored again."""
        return self.writes.present

    @property
    def last_episode_id(self) -> str | None:
        return self.writes.last_episode_id

    def flush(self) -> None:
        """Wait until every episode finished so far is written (or its failure reported)."""
        self.writes.flush()


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
    the store wait by themselves.
    """

    run_inline = True

    def __init__(self, store: str | TraceStore = "fcagent-traces.db", *, tags: list[str] | None = None,
                 tools: list[Any] | None = None, max_tool_output_chars: int = MAX_TOOL_OUTPUT_CHARS,
                 on_write_error: Literal["report", "raise"] = "report", background: bool | None = None,
                 **metadata: Any):
        self.writes = EpisodeWrites(store, on_write_error, background)
        self.store = self.writes.store
        self.metadata = metadata
        self.tags = list(tags or [])
        self.tools = normalize_tools(tool_schemas(tools)) if tools else []
        self.max_tool_output_chars = max_tool_output_chars
        self.on_write_error = on_write_error
        self.raise_error = on_write_error == "raise"
        self._root: dict[UUID, UUID] = {}
        self._open: dict[UUID, dict[str, Any]] = {}
        self._runs: dict[UUID, dict[str, Any]] = {}
        self._order = 0
        self._warned_models: set[str] = set()


    # --- episode bookkeeping -------------------------------------------------------------------

    def _start_episode(self, run_id: UUID, name: str | None, tags: list[str] | None,
                       metadata: dict[str, Any] | None) -> dict[str, Any]:
        buf = {"id": str(run_id), "name": name, "started_at": time.time(), "tags": [*self.tags, *(tags or [])],
               "metadata": {**(metadata or {}), **self.metadata}, "completions": [], "tool_runs": [],
               "tools": self.tools}
        self._open[run_id] = buf
        self._root[run_id] = run_id
        return buf

    def _episode(self, run_id: UUID, parent_run_id: UUID | None) -> dict[str, Any] | None:
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
        buf["ended_at"] = time.time()
        buf["outputs"] = outputs
        if error is not None:
            buf["status"] = "error"
            buf["error"] = f"{type(error).__name__}: {error}"
        # Drop the run map entries of this episode (kept small for long-lived recorders).
        for rid in [r for r, root in self._root.items() if root == run_id]:
            self._root.pop(rid, None)
            self._runs.pop(rid, None)
        if isinstance(outputs, dict):  # what the episode reads, as it is now (the caller owns the state)
            buf["outputs"] = {k: outputs[k] for k in _OUTPUT_KEYS if k in outputs}

        def build() -> dict[str, Any]:
            trace = episode_from_buffer(buf)
            self._warn_missing_tools(trace)
            return trace

        self.writes.submit(buf["id"], build)

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
        self._runs[run_id] = {"id": str(run_id), "parent": str(parent_run_id) if parent_run_id else None,
                              "messages": messages[0] if messages else [], "params": params, "metadata": metadata,
                              "serialized": serialized, "model": _model_name(params, serialized),
                              "t0": time.perf_counter(), "order": self._next()}
        buf["completions"].append(self._runs[run_id])

    def on_llm_end(self, response: Any, *, run_id: UUID, **kwargs: Any) -> None:
        run = self._runs.pop(run_id, None)
        if run is None:
            return
        run["latency_ms"] = (time.perf_counter() - run["t0"]) * 1000
        run["generations"] = response.generations[0] if response.generations else []
        usage = (response.llm_output or {}).get("token_usage") or (response.llm_output or {}).get("usage")
        if not usage and run["generations"]:
            usage = getattr(getattr(run["generations"][0], "message", None), "usage_metadata", None)
        run["usage"] = dict(usage) if usage else {}
        if run_id in self._open:
            self._finish(run_id)

    def on_llm_error(self, error: BaseException, *, run_id: UUID, **kwargs: Any) -> None:
        run = self._runs.pop(run_id, None)
        if run is not None:
            run["error"] = f"{type(error).__name__}: {error}"
            run["latency_ms"] = (time.perf_counter() - run["t0"]) * 1000
        if run_id in self._open:
            self._finish(run_id, error=error)

    # --- tools ---------------------------------------------------------------------------------

    def on_tool_start(self, serialized: dict[str, Any] | None, input_str: str, *, run_id: UUID,
                      parent_run_id: UUID | None = None, inputs: dict[str, Any] | None = None, **kwargs: Any) -> None:
        buf = self._episode(run_id, parent_run_id)
        if buf is None:
            buf = self._start_episode(run_id, (serialized or {}).get("name"), kwargs.get("tags"), kwargs.get("metadata"))
        run = {"id": str(run_id), "episode_id": buf["id"], "parent_run_id": str(parent_run_id) if parent_run_id else None,
               "seq": len(buf["tool_runs"]), "name": (serialized or {}).get("name") or kwargs.get("name") or "tool",
               "args": inputs if inputs is not None else input_str, "tool_call_id": kwargs.get("tool_call_id"),
               "t0": time.perf_counter(), "_order": self._next()}
        buf["tool_runs"].append(run)
        self._runs[run_id] = run

    def _tool_done(self, run_id: UUID, output: str | None, error: str | None) -> None:
        run = self._runs.pop(run_id, None)
        if run is None:
            return
        run["latency_ms"] = (time.perf_counter() - run.pop("t0")) * 1000
        run["output"], run["error"] = _cap(output, self.max_tool_output_chars), _cap(error, self.max_tool_output_chars)
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


def _cap(text: str | None, limit: int) -> str | None:
    if text is None or len(text) <= limit:
        return text
    return text[:limit] + f"\n[... {len(text) - limit} more characters not stored]"
