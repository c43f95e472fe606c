"""OTLP on disk: files of OTLP/JSON or protobuf read into plain spans, and export requests written as either.

Read: a file holds `ExportTraceServiceRequest`s (`TracesData` has the same fields) as

* OTLP/JSON: one object, a JSON list of them, or one per line (the OpenTelemetry Collector's file exporter);
  ids in hex, as OTLP/JSON has them (base64, protobuf's own JSON form, is read too);
* protobuf: one serialised message (an OTLP/HTTP body), or messages each after its length as a 4-byte
  big-endian number (the Collector's file exporter with `format: proto`).

The messages are `opentelemetry-proto`'s; its JSON is protobuf's JSON mapping, so the only thing done by
hand is OTLP/JSON's one difference from it: ids in hex. Written: OTLP/JSON lines, or length-prefixed
protobuf, one request per line or record.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fcagent.core.errors import UserError

__all__ = ["WireSpan", "read_spans", "otlp_files", "request_json", "request_record", "SUFFIXES"]

SUFFIXES = (".json", ".jsonl", ".ndjson", ".pb", ".binpb", ".protobuf", ".otlp")
_ID_KEYS = ("traceId", "spanId", "parentSpanId", "trace_id", "span_id", "parent_span_id")
_STATUS_ERROR = 2  # Status.STATUS_CODE_ERROR


@dataclass
class WireSpan:
    """One span as the importer reads it: ids in hex, attributes as Python values."""

    trace_id: str
    span_id: str
    parent_id: str | None
    name: str
    start_ns: int
    end_ns: int
    attrs: dict[str, Any]
    resource: dict[str, Any]
    where: str  # the file (and line) it came from, for messages
    failed: bool = False  # status ERROR
    status_message: str = ""
    events: list[tuple[str, dict[str, Any]]] = field(default_factory=list)


def otlp_files(path: Path) -> list[Path]:
    """The files an import reads: the file given, or every OTLP file (by suffix) under a folder."""
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in SUFFIXES)
        if not files:
            raise UserError(f"{path}: no OTLP files in this folder (looked for {', '.join(SUFFIXES)})")
        return files
    if not path.exists():
        raise UserError(f"{path}: no such file or folder")
    return [path]


def read_spans(path: Path) -> list[WireSpan]:
    """Every span of an OTLP file."""
    spans = [span for where, request in _requests(path) for span in _spans(where, request)]
    if not spans:
        raise UserError(f"{path}: holds no spans (an OTLP trace export has `resourceSpans` with `scopeSpans`)")
    return spans


def _requests(path: Path) -> Iterator[tuple[str, Any]]:
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

    try:
        data = path.read_bytes()
    except OSError as exc:
        raise UserError(f"{path}: cannot be read ({exc.strerror or exc})") from None
    if data.lstrip()[:1] in (b"{", b"["):
        yield from _json_requests(path, data)
        return
    records = _delimited(data) or [data]
    for i, record in enumerate(records, 1):
        request = ExportTraceServiceRequest()
        try:
            request.ParseFromString(record)
        except Exception as exc:  # noqa: BLE001 - protobuf's DecodeError: one line naming the file
            where = f"{path} (record {i})" if len(records) > 1 else str(path)
            raise UserError(f"{where}: neither OTLP/JSON nor OTLP protobuf ({exc})") from None
        yield (f"{path} (record {i})" if len(records) > 1 else str(path)), request


def _delimited(data: bytes) -> list[bytes] | None:
    """Messages each after its length (4 bytes, big-endian), when they tile the file exactly; else None
    (a plain message starts with a field tag, which read as such a length overruns any real file)."""
    out, pos = [], 0
    while pos < len(data):
        if pos + 4 > len(data):
            return None
        n = int.from_bytes(data[pos:pos + 4], "big")
        pos += 4
        if pos + n > len(data):
            return None
        out.append(data[pos:pos + n])
        pos += n
    return out or None


def _json_requests(path: Path, data: bytes) -> Iterator[tuple[str, Any]]:
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise UserError(f"{path}: not UTF-8 text (byte {exc.start}); OTLP/JSON is UTF-8") from None
    try:
        whole = json.loads(text)
    except ValueError:
        whole = None
    if whole is not None:
        items = whole if isinstance(whole, list) else [whole]
        for i, item in enumerate(items):
            yield from _parsed(f"{path}" if len(items) == 1 else f"{path} (item {i})", item)
        return
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
        except ValueError as exc:
            raise UserError(f"{path}:{lineno}: invalid JSON ({exc})") from None
        yield from _parsed(f"{path}:{lineno}", item)


def _parsed(where: str, item: Any) -> Iterator[tuple[str, Any]]:
    from google.protobuf import json_format
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

    if not isinstance(item, dict):
        raise UserError(f"{where}: an OTLP/JSON trace export is an object with `resourceSpans`, got "
                        f"{type(item).__name__}")
    try:
        yield where, json_format.ParseDict(_ids_as_base64(_current_names(item)), ExportTraceServiceRequest(),
                                           ignore_unknown_fields=True)  # OTLP/JSON: receivers ignore unknown fields
    except (json_format.ParseError, TypeError, ValueError, AttributeError) as exc:
        raise UserError(f"{where}: not OTLP/JSON ({exc})") from None


def _current_names(item: dict[str, Any]) -> dict[str, Any]:
    """Exports from before OTLP 0.19 call scope spans `instrumentationLibrarySpans`: the same fields."""
    found = item.get("resourceSpans") or item.get("resource_spans")
    for rs in found if isinstance(found, list) else []:  # any other shape: json_format names it
        if isinstance(rs, dict) and "instrumentationLibrarySpans" in rs and "scopeSpans" not in rs:
            rs["scopeSpans"] = [{**s, "scope": s.get("instrumentationLibrary", {})}
                                for s in rs.pop("instrumentationLibrarySpans") if isinstance(s, dict)]
    return item


def _ids_as_base64(node: Any) -> Any:
    """OTLP/JSON's hex ids in protobuf JSON's base64, for `json_format` (ids already in base64 stay)."""
    if isinstance(node, dict):
        return {k: _b64(v) if k in _ID_KEYS and isinstance(v, str) else _ids_as_base64(v) for k, v in node.items()}
    if isinstance(node, list):
        return [_ids_as_base64(v) for v in node]
    return node


def _b64(value: str) -> str:
    if len(value) in (16, 32):
        try:
            return base64.b64encode(bytes.fromhex(value)).decode()
        except ValueError:
            pass
    return value


def _value(v: Any) -> Any:
    """An OTLP `AnyValue` as a Python value (arrays as lists, key-value lists as dicts)."""
    kind = v.WhichOneof("value")
    if kind is None:
        return None
    if kind == "array_value":
        return [_value(x) for x in v.array_value.values]
    if kind == "kvlist_value":
        return {kv.key: _value(kv.value) for kv in v.kvlist_value.values}
    return getattr(v, kind)


def _attrs(kvs: Any) -> dict[str, Any]:
    return {kv.key: _value(kv.value) for kv in kvs}


def _spans(where: str, request: Any) -> Iterator[WireSpan]:
    for rs in request.resource_spans:
        resource = _attrs(rs.resource.attributes)
        for ss in rs.scope_spans:
            for s in ss.spans:
                yield WireSpan(
                    trace_id=binascii.hexlify(s.trace_id).decode(), span_id=binascii.hexlify(s.span_id).decode(),
                    parent_id=binascii.hexlify(s.parent_span_id).decode() or None, name=s.name,
                    start_ns=s.start_time_unix_nano, end_ns=s.end_time_unix_nano, attrs=_attrs(s.attributes),
                    resource=resource, where=where, failed=s.status.code == _STATUS_ERROR,
                    status_message=s.status.message, events=[(e.name, _attrs(e.attributes)) for e in s.events])


# --- writing --------------------------------------------------------------------------------------------


def request_json(request: Any) -> str:
    """An export request as one line of OTLP/JSON: protobuf's JSON mapping with enums as numbers and ids in
    hex, as the OTLP specification has it."""
    from google.protobuf import json_format

    return json.dumps(_ids_as_hex(json_format.MessageToDict(request, use_integers_for_enums=True)),
                      ensure_ascii=False, separators=(",", ":"))


def request_record(request: Any) -> bytes:
    """An export request as a protobuf record: its length (4 bytes, big-endian), then the message."""
    body = request.SerializeToString()
    return len(body).to_bytes(4, "big") + body


def _ids_as_hex(node: Any) -> Any:
    if isinstance(node, dict):
        return {k: base64.b64decode(v).hex() if k in _ID_KEYS and isinstance(v, str) else _ids_as_hex(v)
                for k, v in node.items()}
    if isinstance(node, list):
        return [_ids_as_hex(v) for v in node]
    return node
