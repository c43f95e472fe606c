"""`TraceRecorder`: LangChain callbacks that record every model call as a candidate completion.

Attach it to any Runnable with `config={"callbacks": [recorder]}`: fcagent's graph, a
`langchain.agents.create_agent` agent, a plain `model.bind_tools(...)` chain. One root invocation is
one episode. Callbacks only keep references (the hot path is a few dict operations); the episode
is converted and written in one SQLite transaction when its root run ends.
"""

from __future__ import annotations

import re
import time
from typing import Any
from uuid import UUID

from langchain_core.callbacks import BaseCallbackHandler
from langchain_core.messages import BaseMessage

from fcagent.calls import CallParseError, parse_calls
from fcagent.graph import PROTOCOL_METADATA_KEY
from fcagent.records import context_hash, message_record
from fcagent.store import TraceStore, open_store

__all__ = ["TraceRecorder", "episode_from_buffer", "MAX_TOOL_OUTPUT_CHARS"]

MAX_TOOL_OUTPUT_CHARS = 200_000  # a tool's output is stored in full up to this size
_SECRET_PARAM = re.compile(r"api_?key|secret|password|token$|^token|authori[sz]ation|credential|headers|cookie", re.I)
_KEEP_PARAM = {"max_tokens", "max_new_tokens", "max_completion_tokens", "top_logprobs"}


def _safe_params(params: dict[str, Any]) -> dict[str, Any]:
    """Invocation params without tools (stored apart) and without anything that may be a credential."""
    out = {}
    for k, v in params.items():
        if k == "tools" or (_SECRET_PARAM.search(k) and k not in _KEEP_PARAM):
            continue
        if isinstance(v, str | int | float | bool) or v is None:
            out[k] = v
        elif isinstance(v, list | tuple) and all(isinstance(x, str | int | float) for x in v):
            out[k] = list(v)
    return out


def _model_name(params: dict[str, Any], serialized: dict[str, Any] | None) -> str | None:
    for key in ("model_name", "model", "model_id", "deployment_name"):
        if isinstance(params.get(key), str):
            return params[key]
    return (serialized or {}).get("name") or params.get("_type")


def _candidate(message: BaseMessage, protocol: str | None) -> dict[str, Any]:
    rec: dict[str, Any] = {"message": message_record(message)}
    if getattr(message, "tool_calls", None):
        rec["calls"] = [{"name": c["name"], "args": c.get("args", {})} for c in message.tool_calls]
    elif protocol != "native":
        try:
            rec["calls"] = [{"name": c.name, "args": c.args} for c in parse_calls(rec["message"]["content"])]
        except CallParseError as exc:
            rec["parse_error"] = str(exc)
    invalid = getattr(message, "invalid_tool_calls", None)
    if invalid:
        rec["parse_error"] = f"invalid tool call: {invalid[0].get('error')}"
    return rec


def episode_from_buffer(buf: dict[str, Any]) -> dict[str, Any]:
    """An episode trace (EpisodeTrace-shaped dict) from what the callbacks buffered."""
    ep_id = buf["id"]
    outputs = buf.get("outputs") if isinstance(buf.get("outputs"), dict) else {}
    problem = outputs.get("problem")
    meta = buf["metadata"]
    completions, labels = [], []
    step_errors: dict[int, list[dict[str, Any]]] = {}
    for err in outputs.get("errors") or []:
        if isinstance(err, dict) and isinstance(err.get("step"), int):
            step_errors.setdefault(err["step"], []).append(err)
    model = None
    for seq, c in enumerate(buf["completions"]):
        cmeta = c.get("metadata") or {}
        protocol = cmeta.get(PROTOCOL_METADATA_KEY)
        messages = [message_record(m) for m in c["messages"]]
        tools = c["params"].get("tools") or cmeta.get("fcagent_tools") or []
        gens = c.get("generations") or []
        step = cmeta.get("fcagent_step")
        model = model or c["model"]
        comp = {"id": c["id"], "episode_id": ep_id, "parent_run_id": c.get("parent"), "seq": seq, "model": c["model"],
                "protocol": protocol, "step": step, "context_hash": context_hash(messages, tools),
                "messages": messages, "tools": tools, "params": _safe_params(c["params"]),
                "candidates": [_candidate(g.message, protocol) for g in gens if hasattr(g, "message")],
                "usage": c.get("usage") or {}, "latency_ms": c.get("latency_ms"), "error": c.get("error")}
        completions.append(comp)
        if isinstance(step, int) and comp["candidates"]:
            if step in step_errors:
                e = step_errors[step][0]
                labels.append({"target_id": c["id"], "candidate": 0, "success": False, "source": "graph",
                               "reason": f"{e.get('kind')}: {e.get('detail')}"})
            elif comp["candidates"][0].get("calls"):
                labels.append({"target_id": c["id"], "candidate": 0, "success": True, "source": "graph",
                               "reason": "valid call"})
    verdict = outputs.get("verdict")
    if isinstance(verdict, dict) and "success" in verdict:
        labels.append({"target_id": ep_id, "candidate": None, "success": bool(verdict["success"]),
                       "source": "verifier", "reason": str(verdict.get("reason", ""))})
    problem_id = getattr(problem, "id", None) or meta.get("fcagent_problem_id")
    kept_outputs = {k: outputs.get(k) for k in ("final_answer", "status", "verdict", "steps", "errors") if k in outputs}
    episode = {
        "id": ep_id, "thread_id": meta.get("thread_id"), "name": buf.get("name"), "started_at": buf["started_at"],
        "ended_at": buf.get("ended_at"), "status": buf.get("status", "complete"),
        "task": getattr(problem, "task", None) or meta.get("fcagent_task"), "problem_id": problem_id,
        "split": getattr(problem, "split", None), "model": meta.get("fcagent_model") or model,
        "metadata": {k: v for k, v in meta.items() if isinstance(v, str | int | float | bool) and not k.startswith("langgraph_")},
        "tags": list(dict.fromkeys(buf.get("tags") or [])), "outputs": kept_outputs, "error": buf.get("error"),
    }
    if problem_id and not episode["split"]:
        from fcagent.tasks.base import split_of

        episode["split"] = meta.get("fcagent_split") or split_of(problem_id)
    return {"episode": episode, "completions": completions, "tool_runs": buf["tool_runs"], "labels": labels}


class TraceRecorder(BaseCallbackHandler):
    """Records episodes into a `TraceStore`: `TraceRecorder(store="traces.db", team="search")`.

    Keyword arguments become episode metadata. Sync and async runs share this one implementation
    (`run_inline` keeps events in order in async code without a thread hop).
    """

    raise_error = False
    run_inline = True

    def __init__(self, store: str | TraceStore = "fcagent-traces.db", *, tags: list[str] | None = None,
                 max_tool_output_chars: int = MAX_TOOL_OUTPUT_CHARS, **metadata: Any):
        self.store = open_store(store)
        self.metadata = metadata
        self.tags = list(tags or [])
        self.max_tool_output_chars = max_tool_output_chars
        self._root: dict[UUID, UUID] = {}
        self._open: dict[UUID, dict[str, Any]] = {}
        self._runs: dict[UUID, dict[str, Any]] = {}
        self.last_episode_id: str | None = None
        self.episodes_written = 0

    # --- episode bookkeeping -------------------------------------------------------------------

    def _start_episode(self, run_id: UUID, name: str | None, tags: list[str] | None,
                       metadata: dict[str, Any] | None) -> dict[str, Any]:
        buf = {"id": str(run_id), "name": name, "started_at": time.time(), "tags": [*self.tags, *(tags or [])],
               "metadata": {**(metadata or {}), **self.metadata}, "completions": [], "tool_runs": []}
        self._open[run_id] = buf
        self._root[run_id] = run_id
        return buf

    def _episode(self, run_id: UUID, parent_run_id: UUID | None) -> dict[str, Any] | None:
        root = self._root.get(parent_run_id) if parent_run_id is not None else None
        if root is None:
            return None
        self._root[run_id] = root
        return self._open.get(root)

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
        trace = episode_from_buffer(buf)
        self.store.write_episode(trace)
        self.last_episode_id = trace["episode"]["id"]
        self.episodes_written += 1

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
                              "model": _model_name(params, serialized), "t0": time.perf_counter()}
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
               "args": inputs if inputs is not None else input_str, "t0": time.perf_counter()}
        buf["tool_runs"].append(run)
        self._runs[run_id] = run

    def _tool_done(self, run_id: UUID, output: str | None, error: str | None) -> None:
        run = self._runs.pop(run_id, None)
        if run is None:
            return
        run["latency_ms"] = (time.perf_counter() - run.pop("t0")) * 1000
        if output is not None and len(output) > self.max_tool_output_chars:
            output = output[: self.max_tool_output_chars] + f"\n[... {len(output) - self.max_tool_output_chars} more characters not stored]"
        run["output"], run["error"] = output, error
        if run_id in self._open:
            self._finish(run_id)

    def on_tool_end(self, output: Any, *, run_id: UUID, **kwargs: Any) -> None:
        content = getattr(output, "content", output)
        self._tool_done(run_id, content if isinstance(content, str) else str(content), None)

    def on_tool_error(self, error: BaseException, *, run_id: UUID, **kwargs: Any) -> None:
        self._tool_done(run_id, None, f"{type(error).__name__}: {error}")
