"""Running a model over task problems through the agent graph: `fcagent run`, `harvest`, `eval`."""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any
from uuid import UUID

from langchain_core.callbacks import BaseCallbackHandler
from langchain_core.language_models import BaseChatModel
from pydantic import BaseModel

from fcagent.agent.graph import build_agent_graph
from fcagent.core import keys
from fcagent.core.errors import UserError
from fcagent.tasks.base import Problem, Task
from fcagent.tracing.recorder import TraceRecorder
from fcagent.tracing.store import TraceStore

__all__ = ["EpisodeResult", "run_problems", "with_sampling"]


class EpisodeResult(BaseModel):
    """What one problem's episode came to (the unit of evaluation)."""

    problem_id: str
    success: bool
    reason: str
    status: str
    final_answer: Any = None
    steps: int = 0
    calls: int = 0
    valid_calls: int = 0
    tool_errors: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    wall_s: float = 0.0
    episode_id: str | None = None
    transcript: list[dict[str, Any]] = []


class _Usage(BaseCallbackHandler):
    run_inline = True

    def __init__(self) -> None:
        self.prompt = self.completion = 0

    def on_llm_end(self, response: Any, *, run_id: UUID, **kwargs: Any) -> None:
        gens = response.generations[0] if response.generations else []
        usage = getattr(getattr(gens[0], "message", None), "usage_metadata", None) if gens else None
        if usage:
            self.prompt += usage.get("input_tokens", 0)
            self.completion += sum((getattr(g.message, "usage_metadata", None) or {}).get("output_tokens", 0)
                                   for g in gens)


def with_sampling(model: BaseChatModel, *, samples: int = 1, temperature: float | None = None) -> BaseChatModel:
    """A copy of `model` that returns `samples` candidates per call (where the model supports `n`)."""
    update: dict[str, Any] = {}
    fields = type(model).model_fields
    if samples > 1:
        if "n" not in fields:
            raise UserError(f"`samples` {samples}: {type(model).__name__} has no `n` field, so it cannot return several "
                            "candidates per call; use `samples` 1 with it")
        update["n"] = samples
    if temperature is not None and "temperature" in fields:
        update["temperature"] = temperature
    return model.model_copy(update=update) if update else model


def run_problems(model: BaseChatModel, task: Task, problems: list[Problem], *, store: TraceStore | None = None,
                 protocol: str = "auto", max_steps: int | None = None, examples: list | None = None,
                 concurrency: int = 1, metadata: dict[str, Any] | None = None,
                 on_result: Callable[[Problem, EpisodeResult], None] | None = None,
                 recorder: TraceRecorder | None = None, dedupe: bool = False) -> list[EpisodeResult]:
    """Run every problem through one graph; record into `store` (or through `recorder`) when given.
    Results in input order. `dedupe`: the store keeps one episode per problem for this model and role
    (two `harvest --resume` runs at once do not store a problem twice)."""
    max_steps = max_steps or task.max_steps
    graph = build_agent_graph(model, task=task, protocol=protocol, examples=examples, max_steps=max_steps)
    if recorder is None and store is not None:
        recorder = TraceRecorder(store, **(metadata or {}))

    def one(problem: Problem) -> EpisodeResult:
        usage = _Usage()
        callbacks: list[Any] = [usage] + ([recorder] if recorder else [])
        started = time.perf_counter()
        meta = dict(metadata or {})
        if dedupe:
            meta[keys.DEDUPE] = "|".join(str(x) for x in (task.name, problem.id, meta.get(keys.MODEL),
                                                          meta.get(keys.ROLE), meta.get(keys.SAMPLES)))
        try:
            state = graph.invoke({"problem": problem}, {"callbacks": callbacks, "metadata": meta,
                                                        "recursion_limit": 4 * max_steps + 10})
        except Exception as exc:  # noqa: BLE001 - one broken episode (e.g. a remote teacher's outage)
            # is recorded as an error episode by the recorder and counted as a failure, not a crash.
            result = EpisodeResult(problem_id=problem.id, success=False, reason=f"run error: {type(exc).__name__}: {exc}",
                                   status="error", wall_s=time.perf_counter() - started)
            if on_result:
                on_result(problem, result)
            return result
        verdict = state.get("verdict") or {"success": False, "reason": "no verdict"}
        calls = state.get("calls", [])
        result = EpisodeResult(
            problem_id=problem.id, success=bool(verdict["success"]), reason=verdict["reason"],
            status=state.get("status", "?"), final_answer=state.get("final_answer"), steps=state.get("steps", 0),
            calls=len(calls), valid_calls=sum(1 for c in calls if not c.get("error")),
            tool_errors=sum(1 for e in state.get("errors", []) if e["kind"] in ("tool_error", "timeout")),
            prompt_tokens=usage.prompt, completion_tokens=usage.completion,
            wall_s=time.perf_counter() - started,
            transcript=[{"role": m.type, "content": m.content if isinstance(m.content, str) else str(m.content),
                         "tool_calls": [{"name": t["name"], "args": t["args"]} for t in getattr(m, "tool_calls", [])]}
                        for m in state["messages"]],
        )
        if on_result:
            on_result(problem, result)
        return result

    try:
        if concurrency <= 1:
            return [one(p) for p in problems]
        with ThreadPoolExecutor(max_workers=concurrency) as pool:
            return list(pool.map(one, problems))
    finally:
        if recorder is not None:  # every episode written (or its failure reported) when this returns
            recorder.flush()
