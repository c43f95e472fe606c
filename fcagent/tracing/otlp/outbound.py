"""fcagent's episodes as OpenTelemetry GenAI spans: to a file, an OTLP endpoint, or live from a recorder.

One episode is one trace (its id the episode's, where that is a UUID): an `invoke_agent` span, under it a
`chat` span per model call and an `execute_tool` span per tool run. What the GenAI conventions can say is
said their way, so Langfuse and Phoenix show the traffic: the exact input messages
(`gen_ai.input.messages`), every candidate reply (`gen_ai.output.messages`), the tools offered
(`gen_ai.tool.definitions`), model, sampling parameters, token usage; a tool run's name, call id,
arguments, result, and its error as the span's status. What they cannot say (fcagent's ids, sequence
numbers, exact latencies, the parsed calls and typed step errors, the labels, the text protocol's prompt
parts) rides in `fcagent.*` attributes as JSON, so an export imports back to the same episodes.

Calls and tool runs are not recorded with wall-clock starts (latencies are measured apart), so their spans
are laid end to end from the episode's start, each as long as its latency, in the order the agent ran them.
Every export redacts by default (`Redactor`): the spans carry what `traces export` would.
"""

from __future__ import annotations

import atexit
import functools
import hashlib
import json
import logging
import os
import threading
import uuid
from collections.abc import Iterable, Iterator
from fractions import Fraction
from pathlib import Path
from typing import Any

from fcagent.core.errors import RunFailure
from fcagent.core.files import write_records_atomic
from fcagent.core.records import EpisodeTrace
from fcagent.tracing.otlp.genai import genai_message, genai_output, genai_tool
from fcagent.tracing.otlp.wire import request_json, request_record
from fcagent.tracing.redact import Redactor

__all__ = ["episode_spans", "write_otlp_file", "send_otlp", "OtlpSink", "OtlpJsonFileExporter", "EPISODE_ATTR",
           "LABELS_ATTR", "COMPLETION_ATTR", "TOOL_RUN_ATTR"]

log = logging.getLogger("fcagent")

EPISODE_ATTR = "fcagent.episode"
LABELS_ATTR = "fcagent.labels"
COMPLETION_ATTR = "fcagent.completion"
TOOL_RUN_ATTR = "fcagent.tool_run"
_SCOPE = "fcagent"


def _json(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def nanos(seconds: float) -> int:
    """A `time.time()` float in nanoseconds, exactly: the float's own value, not its product in floating
    point, so `nanos(t) / 1e9 == t` (the span's times read back to the recorded ones)."""
    return round(Fraction(seconds) * 1_000_000_000)


def _digest_id(text: str, size: int) -> int:
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:size], "big") or 1


def _trace_id(episode_id: str) -> int:
    try:
        value = uuid.UUID(episode_id).int
    except ValueError:
        value = 0
    return value or _digest_id(episode_id, 16)


def _timeline(trace: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """The episode's calls and tool runs in the order the agent ran them: each call, then the tool runs that
    answer its calls; tool runs that answer none (no call id) after the call that started before them."""
    runs = sorted(trace["tool_runs"], key=lambda r: r["seq"])
    placed: set[str] = set()
    out: list[tuple[str, dict[str, Any]]] = []
    for comp in sorted(trace["completions"], key=lambda c: c["seq"]):
        out.append(("call", comp))
        ids = {tc.get("id") for cand in comp["candidates"][:1] for tc in cand["message"].get("tool_calls") or []}
        for run in runs:
            if run["id"] not in placed and run.get("tool_call_id") in ids - {None}:
                out.append(("tool", run))
                placed.add(run["id"])
    for run in runs:  # without a matching call id: by sequence, after the calls
        if run["id"] not in placed:
            out.append(("tool", run))
    return out


@functools.cache
def _resource() -> Any:
    """This process as an OpenTelemetry resource (`service.name` fcagent unless `OTEL_SERVICE_NAME` or
    `OTEL_RESOURCE_ATTRIBUTES` say otherwise): one per process, so a batch of episodes shares it."""
    from opentelemetry.sdk.resources import Resource

    return Resource.create({"service.name": "fcagent"})


def episode_spans(trace: dict[str, Any], resource: Any = None) -> list[Any]:
    """The spans of one episode (an `EpisodeTrace` as JSON: `model_dump(mode="json")`), as the SDK's
    `ReadableSpan`s the OTLP exporters and encoders take."""
    from opentelemetry.sdk.trace import ReadableSpan
    from opentelemetry.sdk.util.instrumentation import InstrumentationScope
    from opentelemetry.trace import SpanContext, SpanKind, Status, StatusCode, TraceFlags

    from fcagent import __version__

    resource = resource or _resource()
    scope = InstrumentationScope(_SCOPE, __version__)
    ep = trace["episode"]
    trace_id = _trace_id(ep["id"])

    def context(kind: str, run_id: str) -> Any:
        return SpanContext(trace_id, _digest_id(f"{kind}:{run_id}", 8), is_remote=False,
                           trace_flags=TraceFlags(TraceFlags.SAMPLED))

    def status(error: str | None) -> Any:
        return Status(StatusCode.ERROR, error) if error is not None else Status(StatusCode.UNSET)

    root = context("episode", ep["id"])
    cursor = start = nanos(ep["started_at"])
    spans = []
    for kind, item in _timeline(trace):
        begin = cursor
        cursor += nanos((item.get("latency_ms") or 0) / 1000)
        if kind == "call":
            attrs, name = _call_attributes(item), f"chat {item.get('model') or ''}".strip()
            spans.append(ReadableSpan(name, context("completion", item["id"]), root, resource, attrs,
                                      kind=SpanKind.CLIENT, status=status(item.get("error")), start_time=begin,
                                      end_time=cursor, instrumentation_scope=scope))
        else:
            attrs = _tool_attributes(item)
            spans.append(ReadableSpan(f"execute_tool {item['name']}", context("tool_run", item["id"]), root,
                                      resource, attrs, kind=SpanKind.INTERNAL, status=status(item.get("error")),
                                      start_time=begin, end_time=cursor, instrumentation_scope=scope))
    attrs = {"gen_ai.operation.name": "invoke_agent", EPISODE_ATTR: _json(ep), LABELS_ATTR: _json(trace["labels"])}
    if ep.get("name"):
        attrs["gen_ai.agent.name"] = ep["name"]
    if ep.get("thread_id"):
        attrs["gen_ai.conversation.id"] = ep["thread_id"]
    end = max(cursor, nanos(ep["ended_at"]) if ep.get("ended_at") is not None else start)
    name = f"invoke_agent {ep['name']}" if ep.get("name") else "invoke_agent"
    episode_error = ep.get("error") if ep.get("status") == "error" else None
    return [ReadableSpan(name, root, None, resource, attrs, kind=SpanKind.INTERNAL, status=status(episode_error),
                         start_time=start, end_time=end, instrumentation_scope=scope), *spans]


def _call_attributes(comp: dict[str, Any]) -> dict[str, Any]:
    attrs: dict[str, Any] = {
        "gen_ai.operation.name": "chat",
        "gen_ai.input.messages": _json([genai_message(m) for m in comp["messages"]]),
        "gen_ai.output.messages": _json([genai_output(c["message"]) for c in comp["candidates"]]),
    }
    if comp.get("tools"):
        attrs["gen_ai.tool.definitions"] = _json([genai_tool(t) for t in comp["tools"]])
    if comp.get("model"):
        attrs["gen_ai.request.model"] = attrs["gen_ai.response.model"] = comp["model"]
    for name in ("temperature", "top_p", "top_k", "max_tokens", "frequency_penalty", "presence_penalty", "seed"):
        value = comp["params"].get(name)
        if isinstance(value, int | float) and not isinstance(value, bool):
            attrs[f"gen_ai.request.{name}"] = value
    for name, keys in (("input_tokens", ("input_tokens", "prompt_tokens")),
                       ("output_tokens", ("output_tokens", "completion_tokens"))):
        value = next((comp["usage"][k] for k in keys if isinstance(comp["usage"].get(k), int)), None)
        if value is not None:
            attrs[f"gen_ai.usage.{name}"] = value
    if comp.get("error") is not None:
        attrs["error.type"] = comp["error"].split(":", 1)[0]
    # Everything but the messages, tools and replies (said above, in the conventions' words).
    extra = {k: v for k, v in comp.items() if k not in ("messages", "tools", "candidates", "episode_id")}
    extra["candidates"] = [{k: v for k, v in c.items() if k != "message"} for c in comp["candidates"]]
    attrs[COMPLETION_ATTR] = _json(extra)
    return attrs


def _tool_attributes(run: dict[str, Any]) -> dict[str, Any]:
    attrs: dict[str, Any] = {"gen_ai.operation.name": "execute_tool", "gen_ai.tool.name": run["name"],
                             "gen_ai.tool.type": "function", "gen_ai.tool.call.arguments": _json(run.get("args"))}
    if run.get("tool_call_id"):
        attrs["gen_ai.tool.call.id"] = run["tool_call_id"]
    if run.get("output") is not None:
        attrs["gen_ai.tool.call.result"] = run["output"]
    if run.get("error") is not None:
        attrs["error.type"] = run["error"].split(":", 1)[0]
    attrs[TOOL_RUN_ATTR] = _json({k: run.get(k) for k in ("id", "parent_run_id", "seq", "latency_ms", "tool_call_id")})
    return attrs


def _episode_json(trace: EpisodeTrace | dict[str, Any], redactor: Redactor | None) -> dict[str, Any]:
    data = (trace if isinstance(trace, EpisodeTrace) else EpisodeTrace.model_validate(trace)).model_dump(mode="json")
    return redactor.redact_value(data) if redactor is not None else data


def _request(spans: list[Any]) -> Any:
    from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans

    return encode_spans(spans)


def write_otlp_file(traces: Iterable[EpisodeTrace], path: str | os.PathLike[str], *, fmt: str = "json",
                    redactor: Redactor | None = None) -> int:
    """Episodes into an OTLP file, one export request per episode: OTLP/JSON lines (`fmt="json"`) or
    length-prefixed protobuf records (`"protobuf"`). Written beside and renamed: never half-written."""

    def records() -> Iterator[bytes]:
        for trace in traces:
            request = _request(episode_spans(_episode_json(trace, redactor)))
            yield request_record(request) if fmt == "protobuf" else (request_json(request) + "\n").encode()

    return write_records_atomic(path, records())


def _batches(traces: Iterable[EpisodeTrace], redactor: Redactor | None, size: int) -> Iterator[tuple[int, list[Any]]]:
    batch: list[Any] = []
    episodes = 0
    for trace in traces:
        batch += episode_spans(_episode_json(trace, redactor))
        episodes += 1
        if len(batch) >= size:
            yield episodes, batch
            batch, episodes = [], 0
    if batch:
        yield episodes, batch


def send_otlp(traces: Iterable[EpisodeTrace], endpoint: str, *, headers: dict[str, str] | None = None,
              redactor: Redactor | None = None, batch_spans: int = 512) -> int:
    """Episodes to an OTLP/HTTP endpoint (protobuf; `https://.../v1/traces`), through the SDK's exporter
    (its retries and `OTEL_EXPORTER_OTLP_*` settings). A batch the endpoint refuses stops the export, saying
    how many episodes went before it."""
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.trace.export import SpanExportResult

    exporter = OTLPSpanExporter(endpoint=endpoint, headers=headers)
    sent = 0
    try:
        for episodes, spans in _batches(traces, redactor, batch_spans):
            if exporter.export(spans) is not SpanExportResult.SUCCESS:
                raise RunFailure(f"the OTLP endpoint {endpoint} did not take a batch of {len(spans)} spans "
                                 f"({episodes} episodes); {sent} episodes were sent before it (the SDK's log above "
                                 "says why)", evidence={"sent": sent})
            sent += episodes
    finally:
        exporter.shutdown()
    return sent


class OtlpJsonFileExporter:
    """An OpenTelemetry `SpanExporter` that appends OTLP/JSON lines to a file (what `OtlpSink.file` writes;
    `fcagent traces import-otlp` and the Collector's file receiver read it)."""

    def __init__(self, path: str | os.PathLike[str]):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()

    def export(self, spans: Any) -> Any:
        from opentelemetry.sdk.trace.export import SpanExportResult

        line = request_json(_request(list(spans))) + "\n"
        with self._lock, self.path.open("a", encoding="utf-8") as f:
            f.write(line)
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        pass

    def force_flush(self, timeout_millis: int = 30_000) -> bool:
        return True


class OtlpSink:
    """Where a recorder also sends each episode it stores, as GenAI spans:
    `TraceRecorder(store, otlp=OtlpSink.endpoint("http://localhost:6006/v1/traces"))`.

    Spans go out on the OpenTelemetry SDK's `BatchSpanProcessor` (its thread, its bounded queue: a full
    queue drops spans with the SDK's warning, and never holds up the agent or the store); the store stays
    the record. Redacted like every export unless `redact=False`. `flush()` waits for what is queued;
    what is queued at interpreter exit is sent.
    """

    def __init__(self, exporter: Any, *, redact: bool = True):
        from opentelemetry.sdk.trace.export import BatchSpanProcessor

        self.redactor = Redactor() if redact else None
        self.processor = BatchSpanProcessor(exporter)
        self.failures = 0  # episodes that could not be turned into spans (logged)
        atexit.register(self.processor.shutdown)

    @classmethod
    def endpoint(cls, url: str, *, headers: dict[str, str] | None = None, redact: bool = True) -> OtlpSink:
        """OTLP/HTTP (protobuf) to `url`, e.g. Phoenix's `http://localhost:6006/v1/traces`."""
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        return cls(OTLPSpanExporter(endpoint=url, headers=headers), redact=redact)

    @classmethod
    def file(cls, path: str | os.PathLike[str], *, redact: bool = True) -> OtlpSink:
        """OTLP/JSON lines appended to `path`."""
        return cls(OtlpJsonFileExporter(path), redact=redact)

    def emit(self, trace: EpisodeTrace | dict[str, Any]) -> None:
        """Queue one episode's spans. Never raises: a trace must not fail the store's write."""
        try:
            spans = episode_spans(_episode_json(trace, self.redactor))
        except Exception:  # logged with the episode; the store still gets it
            self.failures += 1
            ep = trace.episode.id if isinstance(trace, EpisodeTrace) else trace.get("episode", {}).get("id")
            log.exception("fcagent: episode %s was stored but not sent as OTLP spans", ep)
            return
        for span in spans:
            self.processor.on_end(span)

    def flush(self, timeout_millis: int = 30_000) -> bool:
        return self.processor.force_flush(timeout_millis)

    def shutdown(self) -> None:
        self.processor.shutdown()
