"""Harvest from LangSmith: runs (and their feedback, as labels) become fcagent episodes.

`import_langsmith(store, project="my-agent")` reads `Client().list_runs(project_name=...)`, groups
runs by trace (one trace = one episode, its id the trace id, so a re-import adds nothing), turns
every LLM run into a candidate completion and every tool run into a tool run, and every feedback
score into a label (score >= 0.5 is good; source `langsmith:<key>`).
"""

from __future__ import annotations

import json
import os
from collections import defaultdict
from typing import Any

from langchain_core.load import load
from langchain_core.messages import (
    AIMessage,
    BaseMessage,
    HumanMessage,
    SystemMessage,
    ToolMessage,
    messages_from_dict,
)
from langchain_core.outputs import ChatGeneration

from fcagent.core.errors import UserError
from fcagent.tracing.buffers import CallBuffer, EpisodeBuffer, ToolRunBuffer
from fcagent.tracing.episodes import episode_from_buffer
from fcagent.tracing.store import TraceStore, open_store

__all__ = ["import_langsmith", "runs_to_episodes"]

_ROLE_CLASS = {"system": SystemMessage, "user": HumanMessage, "human": HumanMessage, "assistant": AIMessage,
               "ai": AIMessage}


def _message(item: Any) -> BaseMessage | None:
    if isinstance(item, BaseMessage):
        return item
    if not isinstance(item, dict):
        return HumanMessage(str(item))
    if item.get("lc") == 1:
        try:
            loaded = load(item, allowed_objects="messages")
            return loaded if isinstance(loaded, BaseMessage) else None
        except Exception:  # noqa: BLE001 - an unknown class: fall back to its kwargs
            kwargs = item.get("kwargs", {})
            return HumanMessage(str(kwargs.get("content", "")))
    if "type" in item and "data" in item:
        return messages_from_dict([item])[0]
    role = item.get("role") or item.get("type")
    if role == "tool":
        return ToolMessage(item.get("content", ""), tool_call_id=item.get("tool_call_id", ""),
                           status="error" if item.get("status") == "error" else "success")
    cls = _ROLE_CLASS.get(role, HumanMessage)
    if cls is AIMessage:
        calls = [{"name": c["function"]["name"] if "function" in c else c["name"],
                  "args": c.get("args") or json.loads(c.get("function", {}).get("arguments") or "{}"),
                  "id": c.get("id")} for c in item.get("tool_calls") or []]
        return AIMessage(content=item.get("content") or "", tool_calls=calls)
    return cls(item.get("content") or "")


def _input_messages(inputs: dict[str, Any]) -> list[BaseMessage]:
    raw = inputs.get("messages") or inputs.get("prompts") or []
    if raw and isinstance(raw[0], list):
        raw = raw[0]
    return [m for m in (_message(x) for x in raw) if m is not None]


def _generations(outputs: dict[str, Any] | None) -> list[ChatGeneration]:
    gens = (outputs or {}).get("generations") or []
    if gens and isinstance(gens[0], list):
        gens = gens[0]
    out = []
    for g in gens:
        msg = _message(g.get("message")) if isinstance(g, dict) and g.get("message") else AIMessage(
            content=g.get("text", "") if isinstance(g, dict) else str(g))
        if isinstance(msg, AIMessage):
            out.append(ChatGeneration(message=msg))
    return out


def _tool_output(outputs: Any) -> tuple[str, bool, str | None]:
    """A tool run's output as its content (not the repr of a whole ToolMessage), whether the tool
    reported an error (status "error"), and the model call it answers."""
    out = (outputs or {}).get("output", outputs) if isinstance(outputs, dict) else outputs
    if isinstance(out, dict) and (out.get("lc") == 1 or out.get("type") == "tool"):
        msg = _message(out if out.get("lc") == 1 else {**out, "role": "tool"})
        if isinstance(msg, ToolMessage):
            text = msg.content if isinstance(msg.content, str) else json.dumps(msg.content, ensure_ascii=False)
            return text, msg.status == "error", msg.tool_call_id or None
    if isinstance(out, ToolMessage):
        return str(out.content), out.status == "error", out.tool_call_id or None
    if isinstance(out, str):
        return out, False, None
    return json.dumps(out, ensure_ascii=False, default=str), False, None


def runs_to_episodes(runs: list[Any], feedback: list[Any] = ()) -> list[dict[str, Any]]:
    """EpisodeTrace-shaped dicts from LangSmith `Run` objects (and `Feedback` objects)."""
    by_trace: dict[Any, list[Any]] = defaultdict(list)
    for run in runs:
        by_trace[run.trace_id or run.id].append(run)
    scores: dict[str, list[Any]] = defaultdict(list)
    for fb in feedback:
        if fb.run_id is not None and fb.score is not None:
            scores[str(fb.run_id)].append(fb)
    episodes = []
    for trace_id, members in by_trace.items():
        members.sort(key=lambda r: (r.start_time, str(r.id)))
        root = next((r for r in members if r.parent_run_id is None), members[0])
        meta = dict((root.extra or {}).get("metadata") or {})
        buf = EpisodeBuffer(id=str(trace_id), name=root.name, started_at=root.start_time.timestamp(),
                            ended_at=root.end_time.timestamp() if root.end_time else None, tags=list(root.tags or []),
                            metadata={**meta, "source": "langsmith"}, status="error" if root.error else "complete",
                            error=root.error)
        for order, run in enumerate(members):
            latency = ((run.end_time - run.start_time).total_seconds() * 1000) if run.end_time else None
            if run.run_type == "llm":
                params = dict((run.extra or {}).get("invocation_params") or {})
                buf.calls.append(CallBuffer(
                    id=str(run.id), parent=str(run.parent_run_id) if run.parent_run_id else None,
                    messages=_input_messages(run.inputs or {}), params=params,
                    metadata=(run.extra or {}).get("metadata") or {},
                    model=params.get("model") or params.get("model_name") or run.name,
                    generations=_generations(run.outputs), latency_ms=latency, error=run.error, order=order,
                    usage={k: v for k, v in (("input_tokens", run.prompt_tokens), ("output_tokens", run.completion_tokens))
                           if v}))
            elif run.run_type == "tool":
                inputs = run.inputs or {}
                output, failed, call_id = _tool_output(run.outputs)
                buf.tool_runs.append(ToolRunBuffer(
                    id=str(run.id), parent=str(run.parent_run_id) if run.parent_run_id else None, name=run.name,
                    args=inputs.get("input", inputs), output=output if not run.error else None,
                    error=run.error or (output if failed else None), latency_ms=latency, tool_call_id=call_id,
                    order=order))
        trace = episode_from_buffer(buf)
        ids = {str(r.id) for r in members}
        for run_id, fbs in scores.items():
            if run_id not in ids:
                continue
            target = str(trace_id) if run_id == str(root.id) else run_id
            if target != str(trace_id) and target not in {c["id"] for c in trace["completions"]}:
                target = str(trace_id)
            for fb in fbs:
                trace["labels"].append({"target_id": target, "candidate": None, "success": float(fb.score) >= 0.5,
                                        "reason": fb.comment or f"{fb.key} = {fb.score}", "source": f"langsmith:{fb.key}"})
        episodes.append(trace)
    return episodes


def import_langsmith(store: str | TraceStore, *, project: str, client: Any = None, limit: int | None = None) -> dict[str, int]:
    """Read a LangSmith project's runs and feedback into the store; idempotent."""
    if client is None:
        if not (os.environ.get("LANGSMITH_API_KEY") or os.environ.get("LANGCHAIN_API_KEY")):
            raise UserError("`import-langsmith` needs LANGSMITH_API_KEY (and LANGSMITH_ENDPOINT for a self-hosted "
                            "LangSmith); nothing was contacted")
        from langsmith import Client

        client = Client()
    try:
        runs = list(client.list_runs(project_name=project, limit=limit))
        feedback = list(client.list_feedback(run_ids=[r.id for r in runs])) if runs else []
    except Exception as exc:  # noqa: BLE001 - network, auth, unknown project: one line that says which
        cause = exc
        while cause.__cause__ is not None or cause.__context__ is not None:
            cause = cause.__cause__ or cause.__context__  # type: ignore[assignment]
        raise UserError(f"cannot read LangSmith project {project!r}: {type(exc).__name__}: {str(exc)[:300]}"
                        + (f" (cause: {type(cause).__name__}: {str(cause)[:200]})" if cause is not exc else "")) from None
    trace_store = open_store(store)
    added = sum(trace_store.write_episode(ep) for ep in runs_to_episodes(runs, feedback))
    return {"runs": len(runs), "episodes_added": added, "feedback": len(feedback)}
