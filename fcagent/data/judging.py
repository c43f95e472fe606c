"""Judging candidate completions: good, bad, diverged, or unknown, under the exporter's policy.

The policy is documented in `fcagent.data.export`; this module holds its per-reply parts: a reply's
identity (two replies making the same calls are one), its structural error (unreadable, unknown
function, invalid arguments), and `judge`, a judgement per candidate of one model call.
"""

from __future__ import annotations

import json
from typing import Any, Literal

from pydantic import BaseModel

from fcagent.core.calls import (
    Call,
    CallParseError,
    calls_error,
    format_calls,
    parse_calls,
)
from fcagent.core.records import StepError
from fcagent.tracing.store.rows import CallRow

__all__ = ["Judgement", "judge", "candidate_identity", "structural_error", "reply_text"]


def reply_text(candidate: dict[str, Any]) -> str:
    """A reply as the student writes it: its calls as JSON (the text protocol's form), else its text."""
    msg = candidate["message"]
    if msg.get("tool_calls"):
        return format_calls([Call(name=c["name"], args=c.get("args", {})) for c in msg["tool_calls"]])
    return msg.get("content", "")


def candidate_identity(candidate: dict[str, Any]) -> str:
    """Equal for candidates that make the same calls (whatever their spacing), else the text."""
    calls = candidate.get("calls")
    if calls:
        return json.dumps([[c["name"], c.get("args", {})] for c in calls], sort_keys=True, default=str)
    return reply_text(candidate).strip()


def structural_error(candidate: dict[str, Any], tools: list[dict[str, Any]], protocol: str | None) -> StepError | None:
    """Why a candidate is not a usable reply on its own terms (unreadable, unknown function, invalid
    arguments), whatever its episode's verdict; None when nothing is wrong with its form."""
    if candidate.get("error"):
        return StepError.model_validate(candidate["error"])
    if candidate.get("parse_error"):  # a store written before typed errors
        return StepError(kind="parse_error", detail=candidate["parse_error"])
    calls = candidate.get("calls")
    if calls is None and protocol == "text":
        try:
            calls = [{"name": c.name, "args": c.args} for c in parse_calls(reply_text(candidate))]
        except CallParseError as exc:
            return StepError(kind="parse_error", detail=str(exc))
    if not calls or not tools:
        return None
    return calls_error(calls, tools)


class Judgement(BaseModel):
    verdict: Literal["good", "bad", "diverged", "unknown"]
    reason: str = ""
    kind: str | None = None  # the StepError kind of a bad step


def judge(row: CallRow, *, unlabelled_good: bool = False) -> list[Judgement]:
    """A judgement per candidate of one model call, under the exporter's policy (`fcagent.data.export`).
    `unlabelled_good`: an episode nobody labelled counts as labelled good."""
    labels = json.loads(row.labels) if row.labels else []
    candidates = json.loads(row.candidates)
    tools = json.loads(row.tools)
    ep_ok = row.episode_success
    if ep_ok is None and unlabelled_good:
        ep_ok = 1
    out: list[Judgement] = []
    for i, cand in enumerate(candidates):
        mine = [lb for lb in labels if lb["candidate"] == i or (lb["candidate"] is None and i == 0)]
        explicit = mine[-1] if mine else None
        if explicit is not None and not explicit["success"]:
            out.append(Judgement(verdict="bad", reason=explicit["reason"], kind=explicit.get("kind")))
            continue
        structural = structural_error(cand, tools, row.protocol)
        if structural is not None:
            out.append(Judgement(verdict="bad", reason=str(structural), kind=structural.kind))
            continue
        if explicit is None and i > 0 and out and candidate_identity(cand) == candidate_identity(candidates[0]):
            out.append(out[0])  # the same call as the executed candidate has its outcome
            continue
        if explicit is not None and explicit["source"] != "graph":  # a verdict on this very call
            out.append(Judgement(verdict="good", reason=explicit["reason"]))
        elif i > 0 and explicit is None:
            out.append(Judgement(verdict="unknown"))
        elif ep_ok:
            out.append(Judgement(verdict="good", reason="step of an episode labelled good"))
        elif ep_ok is not None and row.is_last:
            out.append(Judgement(verdict="bad", reason="final reply of an episode labelled bad"))
        elif ep_ok is not None:
            out.append(Judgement(verdict="diverged", reason="step of an episode labelled bad"))
        else:
            out.append(Judgement(verdict="unknown"))
    return out


