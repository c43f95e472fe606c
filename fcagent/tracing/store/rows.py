"""Between records and SQL: an episode trace as named rows to insert, and typed rows out of queries.

Writing: `trace_rows` turns an `EpisodeTrace` (or the recorder's well-formed dict of the same shape)
into dicts keyed by the schema's column names. Reading: `CallRow` and `EpisodeSummary` are what the
store's queries return, so a caller reads attributes, never an SQL alias as a dict key.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from fcagent.core import keys
from fcagent.core.files import dumps
from fcagent.core.records import Completion, Episode, EpisodeTrace, Label, ToolRun

__all__ = ["TraceRows", "trace_rows", "label_row", "CallRow", "EpisodeSummary", "episode_of", "completion_of",
           "tool_run_of", "label_of"]


@dataclass(slots=True)
class TraceRows:
    """One episode's rows, each a dict keyed by its table's column names."""

    episode: dict[str, Any]
    completions: list[dict[str, Any]]
    tool_runs: list[dict[str, Any]]
    labels: list[dict[str, Any]]
    blobs: list[dict[str, Any]]  # message bodies by hash: each message stored once per store


def label_row(lb: dict[str, Any]) -> dict[str, Any]:
    return {"target_id": lb["target_id"], "candidate": lb.get("candidate"), "success": int(bool(lb["success"])),
            "reason": lb.get("reason") or "", "source": str(lb.get("source") or "user"),
            "created_at": lb.get("created_at") or time.time(), "kind": lb.get("kind")}


def trace_rows(trace: EpisodeTrace | dict[str, Any]) -> TraceRows:
    """Rows from a validated EpisodeTrace, or from the recorder's plain dict of the same shape."""
    if isinstance(trace, EpisodeTrace):
        trace = trace.model_dump(mode="json")
    e = trace["episode"]
    metadata = e.get("metadata") or {}
    episode = {"id": e["id"], "thread_id": e.get("thread_id"), "name": e.get("name"), "started_at": e["started_at"],
               "ended_at": e.get("ended_at"), "status": e.get("status", "complete"), "task": e.get("task"),
               "problem_id": e.get("problem_id"), "split": e.get("split"), "model": e.get("model"),
               "metadata": dumps(metadata), "tags": dumps(e.get("tags") or []), "outputs": dumps(e.get("outputs") or {}),
               "error": e.get("error"), "dedupe_key": metadata.get(keys.DEDUPE), "request_key": e.get("request_key")}
    blobs: dict[str, str] = {}
    digests: dict[int, str] = {}  # by record object: a message record shared by several calls is encoded once
    completions = []
    for c in trace.get("completions", []):
        hashes = []
        for m in c["messages"]:
            digest = digests.get(id(m))
            if digest is None:
                body = dumps(m)
                digest = digests[id(m)] = hashlib.blake2b(body.encode(), digest_size=16).hexdigest()
                blobs[digest] = body
            hashes.append(digest)
        completions.append({
            "id": c["id"], "episode_id": c["episode_id"], "parent_run_id": c.get("parent_run_id"), "seq": c.get("seq", 0),
            "model": c.get("model"), "protocol": c.get("protocol"), "step": c.get("step"),
            "context_hash": c["context_hash"], "messages": "[]", "tools": dumps(c.get("tools") or []),
            "params": dumps(c.get("params") or {}), "candidates": dumps(c.get("candidates") or []),
            "usage": dumps(c.get("usage") or {}), "latency_ms": c.get("latency_ms"), "error": c.get("error"),
            "message_hashes": dumps(hashes), "prompt": dumps(c["prompt"]) if c.get("prompt") else None})
    tool_runs = [{"id": t["id"], "episode_id": t["episode_id"], "parent_run_id": t.get("parent_run_id"),
                  "seq": t.get("seq", 0), "name": t["name"], "args": dumps(t.get("args")), "output": t.get("output"),
                  "error": t.get("error"), "latency_ms": t.get("latency_ms"), "tool_call_id": t.get("tool_call_id")}
                 for t in trace.get("tool_runs", [])]
    return TraceRows(episode=episode, completions=completions, tool_runs=tool_runs,
                     labels=[label_row(lb) for lb in trace.get("labels", [])],
                     blobs=[{"hash": h, "body": b} for h, b in blobs.items()])


@dataclass(slots=True)
class CallRow:
    """One model call of a complete episode as the exporter and replay read it. JSON columns stay
    encoded (`tools`, `candidates`, `prompt`, `labels`): most rows are only grouped or skipped.
    Messages are references (`TraceStore.messages_of` resolves them)."""

    id: str
    episode_id: str
    context_hash: str
    protocol: str | None
    inline_messages: str  # rows written before messages were stored once: the messages themselves
    message_hashes: str | None
    tools: str
    candidates: str
    prompt: str | None
    task: str | None
    problem_id: str | None
    split: str | None
    role: str | None = None  # the episode's `keys.ROLE`
    is_last: bool = False  # the episode's last model call (its final reply)
    episode_success: int | None = None  # the episode's newest label: 1, 0, or None (unlabelled)
    labels: str | None = None  # JSON list of the call's own labels, oldest first
    request_key: str | None = None  # the episode's request (recorded traffic is split by it)

    @classmethod
    def of(cls, r: Mapping[str, Any]) -> CallRow:
        return cls(**{k: r[k] for k in r.keys()})


@dataclass(slots=True)
class EpisodeSummary:
    """An episode as `fcagent traces ls` lists it."""

    id: str
    question: str
    model: str | None
    status: str
    task: str | None
    problem_id: str | None
    verdict: bool | None  # the newest episode label, else None
    verdict_source: str | None
    steps: int | None


def episode_of(r: Mapping[str, Any]) -> Episode:
    return Episode(id=r["id"], thread_id=r["thread_id"], name=r["name"], started_at=r["started_at"],
                   ended_at=r["ended_at"], status=r["status"], task=r["task"], problem_id=r["problem_id"],
                   split=r["split"], model=r["model"], metadata=json.loads(r["metadata"]), tags=json.loads(r["tags"]),
                   outputs=json.loads(r["outputs"]), error=r["error"], request_key=r["request_key"])


def completion_of(r: Mapping[str, Any], messages: list[Any]) -> Completion:
    return Completion(id=r["id"], episode_id=r["episode_id"], parent_run_id=r["parent_run_id"], seq=r["seq"],
                      model=r["model"], protocol=r["protocol"], step=r["step"], context_hash=r["context_hash"],
                      messages=messages, tools=json.loads(r["tools"]), params=json.loads(r["params"]),
                      candidates=json.loads(r["candidates"]), usage=json.loads(r["usage"]), latency_ms=r["latency_ms"],
                      error=r["error"], prompt=json.loads(r["prompt"]) if r["prompt"] else None)


def tool_run_of(r: Mapping[str, Any]) -> ToolRun:
    return ToolRun(id=r["id"], episode_id=r["episode_id"], parent_run_id=r["parent_run_id"], seq=r["seq"],
                   name=r["name"], args=json.loads(r["args"]) if r["args"] else None, output=r["output"],
                   error=r["error"], latency_ms=r["latency_ms"], tool_call_id=r["tool_call_id"])


def label_of(r: Mapping[str, Any]) -> Label:
    return Label(target_id=r["target_id"], candidate=r["candidate"], success=bool(r["success"]), reason=r["reason"],
                 source=r["source"], created_at=r["created_at"], kind=r["kind"])
