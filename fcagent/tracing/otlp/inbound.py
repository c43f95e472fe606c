"""OpenTelemetry GenAI spans as fcagent episodes: `fcagent traces import-otlp FILE|DIR`.

A trace is an episode (its id the trace id, as a UUID, so a re-import adds nothing): its root span names it
and gives its times and status; every model-call span (`genai.is_model_call`) becomes a candidate
completion with its exact input messages, the tools offered and every reply; every tool span
(`execute_tool`, OpenInference's `TOOL`, OpenLLMetry's `tool`) a tool run with its arguments, output or
error. They go through the same conversion as every recording route (`episode_from_buffer`), so calls
are parsed, checked against the tools and labelled alike. Spans fcagent wrote (`fcagent.*` attributes)
are read back exactly as they were exported.

A model call recorded twice, by a framework's instrumentation and a provider's under it (LangChain's
`chat` span around OpenAI's), is one call: the inner span, the request as it went to the provider, is kept.
"""

from __future__ import annotations

import json
import uuid
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from langchain_core.outputs import ChatGeneration

from fcagent.core.calls import CallParseError, python_literal
from fcagent.core.errors import UserError
from fcagent.core.records import EpisodeTrace, to_langchain
from fcagent.tracing.buffers import CallBuffer, EpisodeBuffer, ToolRunBuffer
from fcagent.tracing.episodes import episode_from_buffer
from fcagent.tracing.otlp.genai import Skipped, is_model_call, is_tool_run, json_value, read_model_call
from fcagent.tracing.otlp.outbound import COMPLETION_ATTR, EPISODE_ATTR, LABELS_ATTR, TOOL_RUN_ATTR
from fcagent.tracing.otlp.wire import WireSpan, otlp_files, read_spans

__all__ = ["OtlpImport", "spans_to_episodes", "read_otlp", "import_otlp"]


@dataclass
class OtlpImport:
    """What an import read and did."""

    files: int = 0
    spans: int = 0
    episodes: int = 0
    added: int = 0
    present: int = 0
    skipped: Counter = field(default_factory=Counter)  # what was left out, by why

    def store(self, trace_store: Any, traces: list[EpisodeTrace]) -> None:
        """Write the episodes read, one transaction each (a known one adds only its labels)."""
        for trace in traces:
            stored = trace_store.write_episode(trace)
            self.added += stored
            self.present += not stored

    def summary(self) -> str:
        text = (f"read {self.spans} spans from {self.files} file(s): {self.episodes} episodes, {self.added} added, "
                f"{self.present} already present")
        if self.skipped:
            text += "; left out: " + ", ".join(f"{n} {why}" for why, n in self.skipped.most_common())
        return text


def _episode_id(trace_id: str) -> str:
    return str(uuid.UUID(hex=trace_id)) if len(trace_id) == 32 else trace_id


def _attr_json(span: WireSpan, key: str) -> Any:
    try:
        return json.loads(span.attrs[key])
    except (TypeError, ValueError) as exc:
        raise UserError(f"{span.where}: span {span.span_id} `{key}` is not the JSON fcagent writes ({exc})") from None


def _error(span: WireSpan) -> str | None:
    """A failed span's error as fcagent words one (`Type: message`), from its exception event or status."""
    if not span.failed:
        return None
    for name, attrs in span.events:
        if name == "exception":
            kind, message = attrs.get("exception.type"), attrs.get("exception.message", "")
            return f"{kind}: {message}" if kind else str(message)
    kind = span.attrs.get("error.type")
    message = span.status_message
    return f"{kind}: {message}" if kind and message and not message.startswith(str(kind)) else message or kind or ""


def _lc_tool_message(value: Any) -> dict[str, Any] | None:
    """A LangChain ToolMessage serialised (`dumpd`'s `lc` form or `message_to_dict`'s `type`/`data`)."""
    if not isinstance(value, dict):
        return None
    if value.get("lc") == 1 and isinstance(value.get("kwargs"), dict):
        value = value["kwargs"]
    elif value.get("type") == "tool" and isinstance(value.get("data"), dict):
        value = value["data"]
    return value if value.get("type") == "tool" and "content" in value else None


def _tool_output(raw: Any) -> tuple[str | None, bool, str | None]:
    """A tool span's result as (output, whether the tool reported an error, the call id it answers). Reads a
    plain result, and LangChain's ToolMessage as OpenLLMetry and OpenInference serialise it."""
    if raw is None:
        return None, False, None
    value = json_value(raw)
    if isinstance(value, dict) and "output" in value and set(value) <= {"output", "kwargs", "inputs"}:
        value = raw = value["output"]  # OpenLLMetry's wrapper around the callback's arguments
    msg = _lc_tool_message(value)
    if msg is not None:
        content = msg["content"] if isinstance(msg["content"], str) else json.dumps(msg["content"], ensure_ascii=False)
        return content, msg.get("status") == "error", msg.get("tool_call_id")
    return (raw if isinstance(raw, str) else json.dumps(value, ensure_ascii=False)), False, None


def _tool_args(span: WireSpan) -> Any:
    raw = next((span.attrs[k] for k in ("gen_ai.tool.call.arguments", "input.value", "traceloop.entity.input")
                if k in span.attrs), None)
    value = json_value(raw)
    # OpenLLMetry wraps LangChain's callback arguments: the tool's input is `inputs`, else `input_str`
    # (a Python repr of a dict, as LangChain writes it).
    if isinstance(value, dict) and "input_str" in value and set(value) <= {"input_str", "inputs", "tags", "metadata",
                                                                          "kwargs"}:
        if isinstance(value.get("inputs"), dict):
            return value["inputs"]
        text = value["input_str"]
        try:
            return json.loads(text)
        except (TypeError, ValueError):
            try:  # LangChain's `input_str` is often the Python repr of the arguments
                return python_literal(text)
            except CallParseError:
                return text
    return value


def _tool_name(span: WireSpan) -> str:
    for key in ("gen_ai.tool.name", "tool.name", "traceloop.entity.name"):
        if isinstance(span.attrs.get(key), str) and span.attrs[key]:
            return span.attrs[key]
    return span.name.removeprefix("execute_tool ").strip() or "tool"


def _latency(span: WireSpan) -> float | None:
    return (span.end_ns - span.start_ns) / 1e6 if span.end_ns >= span.start_ns > 0 else None


def _root(spans: list[WireSpan]) -> WireSpan:
    ids = {s.span_id for s in spans}
    roots = [s for s in spans if s.parent_id is None or s.parent_id not in ids]
    return min(roots or spans, key=lambda s: (s.start_ns, s.span_id))


def _innermost_calls(spans: list[WireSpan]) -> list[WireSpan]:
    calls = [s for s in spans if is_model_call(s.attrs)]
    by_id = {s.span_id: s for s in spans}
    outer = set()
    for s in calls:
        parent = by_id.get(s.parent_id or "")
        while parent is not None:
            if is_model_call(parent.attrs):
                outer.add(parent.span_id)
            parent = by_id.get(parent.parent_id or "")
    return [s for s in calls if s.span_id not in outer]


def _own_episode(spans: list[WireSpan], root: WireSpan, skipped: Skipped) -> dict[str, Any]:
    """An episode fcagent exported, as it was: its records from the `fcagent.*` attributes, the messages,
    tools, replies and tool traffic from the GenAI ones."""
    episode = _attr_json(root, EPISODE_ATTR)
    completions, tool_runs = [], []
    for span in spans:
        if COMPLETION_ATTR in span.attrs:
            extra = _attr_json(span, COMPLETION_ATTR)
            call = read_model_call(span.attrs, skipped)
            cands = [{"message": m, **c} for m, c in zip(call.replies, extra.pop("candidates", []), strict=True)]
            completions.append({**extra, "episode_id": episode["id"], "messages": call.messages, "tools": call.tools,
                                "candidates": cands})
        elif TOOL_RUN_ATTR in span.attrs:
            extra = _attr_json(span, TOOL_RUN_ATTR)
            error = span.status_message if span.failed else None
            tool_runs.append({**extra, "episode_id": episode["id"], "name": _tool_name(span),
                              "args": json.loads(span.attrs["gen_ai.tool.call.arguments"]),
                              "output": span.attrs.get("gen_ai.tool.call.result"), "error": error})
    return {"episode": episode, "completions": sorted(completions, key=lambda c: c["seq"]),
            "tool_runs": sorted(tool_runs, key=lambda r: r["seq"]), "labels": _attr_json(root, LABELS_ATTR)}


def _foreign_episode(trace_id: str, spans: list[WireSpan], root: WireSpan, skipped: Skipped) -> dict[str, Any] | None:
    calls = _innermost_calls(spans)
    if not calls:
        return None
    service = root.resource.get("service.name")
    buf = EpisodeBuffer(
        id=_episode_id(trace_id), name=root.attrs.get("gen_ai.agent.name") or root.name,
        started_at=root.start_ns / 1e9, ended_at=root.end_ns / 1e9 if root.end_ns else None,
        metadata={"source": "otlp", "trace_id": trace_id, **({"service.name": service} if service else {})},
        status="error" if root.failed else "complete", error=_error(root))
    if root.attrs.get("gen_ai.conversation.id"):
        buf.metadata["thread_id"] = str(root.attrs["gen_ai.conversation.id"])
    order = {s.span_id: i for i, s in enumerate(sorted(spans, key=lambda s: (s.start_ns, s.span_id)))}
    for span in calls:
        call = read_model_call(span.attrs, skipped)
        buf.calls.append(CallBuffer(
            id=span.span_id, parent=span.parent_id, messages=[to_langchain(m) for m in call.messages],
            model=call.model, order=order[span.span_id], params=call.params, tools=call.tools,
            generations=[ChatGeneration(message=to_langchain(r)) for r in call.replies], usage=call.usage,
            latency_ms=_latency(span), error=_error(span)))
    for span in (s for s in spans if is_tool_run(s.attrs) and not is_model_call(s.attrs)):
        output, reported, call_id = _tool_output(
            next((span.attrs[k] for k in ("gen_ai.tool.call.result", "output.value", "traceloop.entity.output")
                  if k in span.attrs), None))
        error = _error(span)
        buf.tool_runs.append(ToolRunBuffer(
            id=span.span_id, parent=span.parent_id, name=_tool_name(span), args=_tool_args(span),
            order=order[span.span_id], tool_call_id=span.attrs.get("gen_ai.tool.call.id") or call_id,
            output=output, error=error if error is not None else (output if reported else None),
            latency_ms=_latency(span)))
    buf.calls.sort(key=lambda c: c.order)
    buf.tool_runs.sort(key=lambda r: r.order)
    # Some instrumentations record a tool's input as LangChain's `input_str` (OpenInference: the bare value
    # of a one-argument tool): where the run answers a call, the call's own arguments are the exact ones.
    called = {tc["id"]: tc["args"] for c in buf.calls for g in c.generations for tc in g.message.tool_calls
              if tc.get("id")}
    for run in buf.tool_runs:
        if not isinstance(run.args, dict) and run.tool_call_id in called:
            run.args = called[run.tool_call_id]
    return episode_from_buffer(buf)


def spans_to_episodes(spans: list[WireSpan], skipped: Skipped | None = None) -> list[EpisodeTrace]:
    """Episodes from spans, one per trace; traces without a model call are counted in `skipped`."""
    skipped = skipped if skipped is not None else Skipped()
    by_trace: dict[str, list[WireSpan]] = defaultdict(list)
    for span in spans:
        by_trace[span.trace_id].append(span)
    out = []
    for trace_id, members in by_trace.items():
        root = _root(members)
        if EPISODE_ATTR in root.attrs:
            data = _own_episode(members, root, skipped)
        else:
            data = _foreign_episode(trace_id, members, root, skipped)
        if data is None:
            skipped.counts["traces without a model call"] += 1
            continue
        try:
            out.append(EpisodeTrace.model_validate(data))
        except ValueError as exc:  # pydantic's ValidationError: name the trace and the field
            raise UserError(f"{root.where}: trace {trace_id} does not make an episode: {str(exc).splitlines()[0]} "
                            f"({_first_error(exc)})") from None
    return out


def _first_error(exc: Exception) -> str:
    errors = getattr(exc, "errors", None)
    if not callable(errors):
        return str(exc)
    err = errors()[0]
    return f"`{'.'.join(str(p) for p in err['loc'])}`: {err['msg']}"


def read_otlp(paths: list[Path]) -> tuple[list[EpisodeTrace], OtlpImport]:
    """The episodes of OTLP files (or of every OTLP file under folders), and what was read: every file is
    read and every trace converted here, before any store is touched, so bad input writes nothing."""
    report = OtlpImport()
    files = [f for p in paths for f in otlp_files(Path(p))]
    spans: list[WireSpan] = []
    for f in files:
        spans += read_spans(f)
    skipped = Skipped()
    traces = spans_to_episodes(spans, skipped)
    report.files, report.spans, report.episodes, report.skipped = len(files), len(spans), len(traces), skipped.counts
    return traces, report


def import_otlp(store: Any, paths: list[Path]) -> OtlpImport:
    """Read OTLP files into the store (a path or a `TraceStore`); idempotent (an episode's id is its trace's)."""
    from fcagent.tracing.store import open_store

    traces, report = read_otlp(paths)
    report.store(open_store(store), traces)
    return report
