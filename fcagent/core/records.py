"""Pydantic records for everything that crosses a boundary: the trace store, JSONL, exports.

Messages are kept in a compact role/content form (`MessageRecord`) rather than LangChain's full
serialisation: it is what a chat template and TRL consume, it round-trips to LangChain messages,
and it is several times cheaper to build on the recording hot path.
"""

from __future__ import annotations

import hashlib
import json
from enum import StrEnum
from typing import Any, Literal

from langchain_core.messages import (
    AIMessage,
    BaseMessage,
    HumanMessage,
    SystemMessage,
    ToolMessage,
)
from pydantic import BaseModel, Field, model_validator

__all__ = ["request_key", "LabelSource", "PairSource", "MessageRecord", "Candidate", "Completion", "ToolRun", "Label", "Episode", "EpisodeTrace", "StepError",
           "StepErrorKind", "message_record", "to_langchain", "context_hash", "bounded"]

class LabelSource(StrEnum):
    """Who labelled a reply, for the labels fcagent writes itself. A user's own labels may name any
    source (a reviewer, `langsmith:<key>`): `Label.source` is a string, these are the known ones."""

    VERIFIER = "verifier"  # the task's checker, on the whole episode
    GRAPH = "graph"  # fcagent's graph: a step's parse error, unknown function, invalid arguments; or a valid call
    TOOL = "tool"  # the tool the call ran failed
    USER = "user"  # `fcagent traces label`, `store.label(...)`
    FEEDBACK = "feedback"  # a feedback file, `POST /v1/feedback`
    REPLAY = "replay"  # `fcagent replay`'s check of a student's candidate
    ESCALATION = "escalation"  # a student reply the check refused (bad) and the teacher's answer to it (good)


class PairSource(StrEnum):
    """Where a preference pair's rejected side comes from (see `fcagent.data.export`)."""

    STEP = "step"  # an invalid reply: a sibling sample, or another episode's step
    TRAJECTORY = "trajectory"  # a failed chain's step where it diverges from a successful chain of the problem
    TEACHER_STUDENT = "teacher_student"  # the student's own reply: replayed, escalated, or served


StepErrorKind = Literal["parse_error", "no_call", "unknown_function", "invalid_arguments", "repeated_call", "tool_error",
                        "timeout"]


class StepError(BaseModel):
    """Why one model reply (a step) failed: the typed form every module passes around.

    `parse_error`: the reply should have been a call and is not readable as one; `no_call`: a
    text-protocol reply without a call; `unknown_function` / `invalid_arguments`: a call that does not
    fit the offered tools; `repeated_call`: the same call again in one turn (a small model's loop);
    `tool_error` / `timeout`: the call ran and failed.
    """

    kind: StepErrorKind
    detail: str = ""
    call: str | None = None  # the function's name, where there was a call

    def __str__(self) -> str:
        return f"{self.kind}: {self.detail}" if self.detail else self.kind

Role = Literal["system", "user", "assistant", "tool"]
_ROLE = {"system": "system", "human": "user", "ai": "assistant", "tool": "tool", "AIMessageChunk": "assistant",
         "chat": "user", "function": "tool"}


class MessageRecord(BaseModel):
    role: Role
    content: str = ""
    tool_calls: list[dict[str, Any]] = Field(default_factory=list)  # {"id", "name", "args"}
    tool_call_id: str | None = None
    name: str | None = None
    status: Literal["error"] | None = None  # a tool message that reports a failure


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # content blocks: keep the text ones
        return "".join(b if isinstance(b, str) else str(b.get("text", "")) if isinstance(b, dict) else str(b)
                       for b in content)
    return str(content)


def message_record(m: BaseMessage) -> dict[str, Any]:
    """A LangChain message as a MessageRecord-shaped dict (no validation: this is the hot path)."""
    rec: dict[str, Any] = {"role": _ROLE.get(m.type, "user"), "content": _text(m.content)}
    calls = getattr(m, "tool_calls", None)
    if calls:
        rec["tool_calls"] = [{"id": c.get("id"), "name": c["name"], "args": c.get("args", {})} for c in calls]
    if isinstance(m, ToolMessage):
        rec["tool_call_id"] = m.tool_call_id
        if m.name:
            rec["name"] = m.name
        if m.status == "error":
            rec["status"] = "error"
    return rec


def to_langchain(rec: MessageRecord | dict[str, Any]) -> BaseMessage:
    r = rec if isinstance(rec, MessageRecord) else MessageRecord.model_validate(rec)
    if r.role == "system":
        return SystemMessage(r.content)
    if r.role == "user":
        return HumanMessage(r.content)
    if r.role == "tool":
        return ToolMessage(r.content, tool_call_id=r.tool_call_id or "", name=r.name, status=r.status or "success")
    return AIMessage(content=r.content, tool_calls=[{"id": c.get("id"), "name": c["name"], "args": c.get("args", {})}
                                                    for c in r.tool_calls])


MAX_DEPTH = 64
DEPTH_MARKER = f"[... nested deeper than {MAX_DEPTH} levels, not stored]"


def bounded(value: Any, depth: int = MAX_DEPTH) -> Any:
    """A copy of a JSON-like value cut below `depth` levels, each cut marked: what JSON encoding
    (recursive) cannot take is stored shortened, not dropped."""
    if depth <= 0:
        return DEPTH_MARKER if isinstance(value, dict | list | tuple) else value
    if isinstance(value, dict):
        return {k: bounded(v, depth - 1) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [bounded(v, depth - 1) for v in value]
    return value


# The encoding context hashes were defined with (json.dumps's defaults but sorted keys): one
# encoder, not one per call; the output must never change, stored hashes depend on it.
_CANON_ENCODER = json.JSONEncoder(sort_keys=True, ensure_ascii=False, default=str)


def context_hash(messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None,
                 prompt: dict[str, Any] | None = None) -> str:
    """Identity of a model call's context, canonicalised: tool-call ids (random per run) dropped, and
    where fcagent's text protocol recorded the system prompt's parts (`prompt`), the parts stand for
    the rendered prompt, so a teacher's call (worked examples) and a student's (compact) on the same
    problem and history are one context."""
    canon: list[dict[str, Any]] = []
    if prompt and messages and messages[0].get("role") == "system":
        canon.append({"role": "system", "parts": {k: v for k, v in prompt.items() if k != "style"}})
        messages = messages[1:]
    for m in messages:
        c = {"role": m["role"], "content": m.get("content", "")}
        if m.get("tool_calls"):
            c["tool_calls"] = [{"name": t["name"], "args": t.get("args", {})} for t in m["tool_calls"]]
        canon.append(c)
    try:
        blob = _CANON_ENCODER.encode([canon, tools or []])
    except RecursionError:
        blob = _CANON_ENCODER.encode(bounded([canon, tools or []]))
    return hashlib.sha256(blob.encode()).hexdigest()[:32]


def request_key(messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None) -> str | None:
    """Identity of a *request*: its first user message and the names of the tools offered. A request
    asked word for word again has the same key, whatever happened after it: what a held-out split of
    recorded traffic is cut by (`fcagent.data.split`), so one request never straddles the split."""
    first = next((m.get("content", "") for m in messages if m.get("role") == "user"), None)
    if first is None:
        return None
    names = sorted(str((t.get("function") or t).get("name", "")) for t in tools or [] if isinstance(t, dict))
    blob = _CANON_ENCODER.encode([" ".join(str(first).split()), names])
    return hashlib.sha256(blob.encode()).hexdigest()[:24]


class Candidate(BaseModel):
    """One output of a model call (a call with `n` > 1 has several)."""

    message: MessageRecord
    calls: list[dict[str, Any]] = Field(default_factory=list)  # parsed {"name", "args"}
    error: StepError | None = None  # the reply is not a usable call (only where a call was expected)

    @model_validator(mode="before")
    @classmethod
    def _legacy_parse_error(cls, data: Any) -> Any:
        # Stores and exports written before typed errors kept a `parse_error` string.
        if isinstance(data, dict) and data.get("parse_error") and not data.get("error"):
            data = {**data, "error": {"kind": "parse_error", "detail": data["parse_error"]}}
        if isinstance(data, dict) and "parse_error" in data:
            data = {k: v for k, v in data.items() if k != "parse_error"}
        return data


class Completion(BaseModel):
    """A candidate completion: one chat-model call with its exact input and every output."""

    id: str  # the LangChain run id
    episode_id: str
    parent_run_id: str | None = None
    seq: int = 0
    model: str | None = None
    protocol: str | None = None  # "native" | "text" | None (not from fcagent's graph)
    step: int | None = None
    context_hash: str
    messages: list[MessageRecord]
    tools: list[dict[str, Any]] = Field(default_factory=list)
    params: dict[str, Any] = Field(default_factory=dict)
    candidates: list[Candidate] = Field(default_factory=list)
    usage: dict[str, Any] = Field(default_factory=dict)
    latency_ms: float | None = None
    error: str | None = None
    prompt: dict[str, Any] | None = None  # fcagent's text protocol: the system prompt's parts (keys.PROMPT)


class ToolRun(BaseModel):
    id: str
    episode_id: str
    parent_run_id: str | None = None
    seq: int = 0
    name: str
    args: Any = None
    output: str | None = None
    error: str | None = None  # a raised exception, a handled ToolException, a ToolMessage with status "error"
    latency_ms: float | None = None
    tool_call_id: str | None = None  # the model's call this run answers, where the agent passes it


class Label(BaseModel):
    target_id: str  # an episode id or a completion id
    candidate: int | None = None  # which candidate of a completion; None = the whole target
    success: bool
    reason: str = ""
    source: str = LabelSource.USER.value  # a `LabelSource`, or any name a user gives (a reviewer, langsmith:<key>)
    created_at: float | None = None
    kind: StepErrorKind | None = None  # for a failed step: what failed


class Episode(BaseModel):
    """One root invocation of an agent."""

    id: str
    thread_id: str | None = None
    name: str | None = None
    started_at: float
    ended_at: float | None = None
    status: Literal["complete", "error", "incomplete"] = "complete"
    task: str | None = None
    problem_id: str | None = None
    split: str | None = None
    model: str | None = None
    metadata: dict[str, Any] = Field(default_factory=dict)
    tags: list[str] = Field(default_factory=list)
    outputs: dict[str, Any] = Field(default_factory=dict)  # final_answer, status, verdict, steps
    error: str | None = None
    request_key: str | None = None  # `request_key`: the held-out split of recorded traffic goes by it


class EpisodeTrace(BaseModel):
    """An episode with everything recorded under it: the unit of JSONL export and import."""

    episode: Episode
    completions: list[Completion] = Field(default_factory=list)
    tool_runs: list[ToolRun] = Field(default_factory=list)
    labels: list[Label] = Field(default_factory=list)

    def episode_label(self) -> Label | None:
        """The newest label on the episode itself (later feedback overrides an earlier verdict)."""
        own = [lb for lb in self.labels if lb.target_id == self.episode.id]
        return own[-1] if own else None
