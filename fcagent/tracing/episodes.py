"""From a recording route's buffer to the stored episode, and where finished episodes go.

`episode_from_buffer` is the one conversion every route shares (callbacks, middleware, serve, the
escalation record): message records, the offered tools, secret-free params, each candidate's calls
and typed error, tool outputs capped, and the labels a trace carries by itself (the graph's step
errors, a failed tool run on the call that caused it, the task verifier's verdict). It runs on the
store's writer thread. `EpisodeWrites` sends finished episodes there (or writes them in the run).
"""

from __future__ import annotations

import functools
import json
import logging
import re
from typing import TYPE_CHECKING, Any, Literal

from langchain_core.messages import BaseMessage
from langchain_core.utils.function_calling import convert_to_openai_tool

from fcagent.core import keys
from fcagent.core.calls import CallParseError, calls_error, parse_calls
from fcagent.core.errors import StoreWriteError, UserError
from fcagent.core.records import LabelSource, StepError, context_hash, message_record, request_key
from fcagent.tracing.buffers import CallBuffer, EpisodeBuffer, ToolRunBuffer
from fcagent.tracing.redact import Redactor
from fcagent.tracing.store import TraceStore, open_store

__all__ = ["episode_from_buffer", "EpisodeWrites", "WritesEpisodes", "normalize_tools", "MAX_TOOL_OUTPUT_CHARS",
           "EPISODE_OUTPUT_KEYS"]

if TYPE_CHECKING:  # only for the annotation: the OTLP packages are an extra
    from fcagent.tracing.otlp.outbound import OtlpSink

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




def _answering_call(run: ToolRunBuffer, calls: list[CallBuffer], candidates: dict[str, list[dict[str, Any]]]
                    ) -> CallBuffer | None:
    """The model call a tool run answers: the one whose reply holds its tool-call id, else the last
    model call that started before it."""
    if run.tool_call_id:
        for call in calls:
            for cand in candidates[call.id][:1]:
                if any(tc.get("id") == run.tool_call_id for tc in cand["message"].get("tool_calls") or []):
                    return call
    before = [c for c in calls if c.order < run.order]
    return before[-1] if before else None


# The keys of a root run's outputs an episode keeps or labels from.
EPISODE_OUTPUT_KEYS = ("problem", "errors", "verdict", "final_answer", "status", "steps")


def episode_from_buffer(buf: EpisodeBuffer, *, max_tool_output_chars: int = MAX_TOOL_OUTPUT_CHARS) -> dict[str, Any]:
    """An episode trace (an `EpisodeTrace`-shaped dict, built well-formed) from a route's buffer.

    Labels written here: the graph's step errors and valid calls (fcagent's own graph), a failed tool
    run on the model call that caused it (every route), and the task verifier's verdict.
    """
    ep_id = buf.id
    outputs = buf.outputs
    problem = outputs.get("problem")
    meta = buf.metadata
    completions, labels = [], []
    step_errors: dict[int, list[dict[str, Any]]] = {}
    for err in outputs.get("errors") or []:
        if isinstance(err, dict) and isinstance(err.get("step"), int):
            step_errors.setdefault(err["step"], []).append(err)
    failed: set[str] = set()
    model = None
    candidates: dict[str, list[dict[str, Any]]] = {}
    # Each model call's input repeats the messages before it (the same objects): one record each, so
    # an episode of n steps builds n records, not n²/2 (the store writes each shared record once too).
    records: dict[int, dict[str, Any]] = {}
    for seq, c in enumerate(buf.calls):
        protocol = c.metadata.get(keys.PROTOCOL)
        messages = [records.get(id(m)) or records.setdefault(id(m), message_record(m)) for m in c.messages]
        tools = c.tools or _tools_in(c.params, c.metadata, c.serialized) or buf.tools or []
        step = c.metadata.get(keys.STEP)
        model = model or c.model
        cands = candidates[c.id] = [_candidate(g.message, protocol, tools) for g in c.generations
                                    if hasattr(g, "message")]
        completions.append({
            "id": c.id, "episode_id": ep_id, "parent_run_id": c.parent, "seq": seq, "model": c.model,
            "protocol": protocol, "step": step, "context_hash": context_hash(messages, tools, c.metadata.get(keys.PROMPT)),
            "messages": messages, "tools": tools, "params": _safe_params(c.params), "candidates": cands,
            "usage": c.usage, "latency_ms": c.latency_ms, "error": c.error, "prompt": c.metadata.get(keys.PROMPT)})
        if isinstance(step, int) and cands:
            if step in step_errors:
                e = step_errors[step][0]
                labels.append({"target_id": c.id, "candidate": 0, "success": False, "source": LabelSource.GRAPH,
                               "kind": e.get("kind"), "reason": f"{e.get('kind')}: {e.get('detail')}"})
                failed.add(c.id)
            elif cands[0].get("calls"):
                labels.append({"target_id": c.id, "candidate": 0, "success": True, "source": LabelSource.GRAPH,
                               "reason": "valid call"})
    for run in buf.tool_runs:
        if not run.error:
            continue
        call = _answering_call(run, buf.calls, candidates)
        if call is not None and call.id not in failed and candidates[call.id]:
            failed.add(call.id)
            kind = "timeout" if str(run.error).startswith("TimeoutError") else "tool_error"
            labels.append({"target_id": call.id, "candidate": 0, "success": False, "source": LabelSource.TOOL,
                           "kind": kind, "reason": f"{run.name}: {str(run.error)[:500]}"})
    tool_runs = [{"id": run.id, "episode_id": ep_id, "parent_run_id": run.parent, "seq": seq, "name": run.name,
                  "args": run.args, "output": _cap(run.output, max_tool_output_chars),
                  "error": _cap(run.error, max_tool_output_chars), "latency_ms": run.latency_ms,
                  "tool_call_id": run.tool_call_id} for seq, run in enumerate(buf.tool_runs)]
    verdict = outputs.get("verdict")
    if isinstance(verdict, dict) and "success" in verdict:
        labels.append({"target_id": ep_id, "candidate": None, "success": bool(verdict["success"]),
                       "source": LabelSource.VERIFIER, "reason": str(verdict.get("reason", ""))})
    problem_id = getattr(problem, "id", None) or meta.get(keys.PROBLEM_ID)
    first = completions[0] if completions else None
    kept_outputs = {k: outputs.get(k) for k in ("final_answer", "status", "verdict", "steps", "errors") if k in outputs}
    episode = {
        "id": ep_id, "thread_id": meta.get("thread_id"), "name": buf.name, "started_at": buf.started_at,
        "ended_at": buf.ended_at, "status": buf.status,
        "task": getattr(problem, "task", None) or meta.get(keys.TASK), "problem_id": problem_id,
        "split": getattr(problem, "split", None), "model": meta.get(keys.MODEL) or model,
        "metadata": {k: v for k, v in meta.items() if isinstance(v, str | int | float | bool) and not k.startswith("langgraph_")},
        "tags": list(dict.fromkeys(buf.tags)), "outputs": kept_outputs, "error": buf.error,
        "request_key": request_key(first["messages"], first["tools"]) if first is not None else None,
    }
    if problem_id and not episode["split"]:
        from fcagent.tasks.base import split_of

        episode["split"] = meta.get(keys.SPLIT) or split_of(problem_id)
    return {"episode": episode, "completions": completions, "tool_runs": tool_runs, "labels": labels}


def _cap(text: str | None, limit: int) -> str | None:
    if text is None or len(text) <= limit:
        return text
    return text[:limit] + f"\n[... {len(text) - limit} more characters not stored]"


class EpisodeWrites:
    """Where a recorder's (or the middleware's) finished episodes go, and what became of them.

    `background=True` (the default with `on_write_error="report"`): the episode is queued on the
    store's writer thread (`TraceStore.write_episode_soon`) and the agent's run goes on at once;
    a failure is logged naming the episode and kept in `errors`, as a failed write in the run is.
    `on_write_error="raise"` writes in the run, so the error can be raised into it. Reads through
    the store wait for queued episodes; `flush()` waits for them (the counters are final then).
    """

    def __init__(self, store: str | TraceStore, on_write_error: Literal["report", "raise"], background: bool | None,
                 otlp: OtlpSink | None = None) -> None:
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
        self.otlp = otlp  # an `OtlpSink` (fcagent.tracing.otlp.outbound): each built episode also goes out as spans

    def submit(self, episode_id: str, build: Any, *, replace: bool = False, final: bool = True) -> None:
        """Write the trace `build()` makes, now or on the writer thread."""
        if self.otlp is not None:
            build = functools.partial(_built_and_sent, build, self.otlp)
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
        if self.otlp is not None:  # after the store: the writer thread queues the spans as it builds
            self.otlp.flush()


def _built_and_sent(build: Any, otlp: Any) -> Any:
    trace = build()
    otlp.emit(trace)  # never raises: the store's write goes on whatever becomes of the spans
    return trace


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


