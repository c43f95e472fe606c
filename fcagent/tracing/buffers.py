"""What a recording route keeps while an episode runs: one typed buffer for every route.

`TraceRecorder` (LangChain callbacks), `TraceMiddleware` (`create_agent` hooks), `fcagent serve` and
the escalation record all fill these, and `episode_from_buffer` turns any of them into the stored
trace. They hold references only (the LangChain messages and generations as they came): building a
buffer is on the agent's path, converting it is the store's writer thread's job. Slotted dataclasses:
typed, and as cheap to make as the dicts they replace.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

__all__ = ["CallBuffer", "ToolRunBuffer", "EpisodeBuffer"]


@dataclass(slots=True)
class CallBuffer:
    """One chat-model call: its exact input, and its outputs once it ends."""

    id: str
    messages: list[Any]  # the LangChain messages the model got
    model: str | None
    order: int  # when it started among the episode's calls and tool runs
    parent: str | None = None  # the LangChain parent run id
    params: dict[str, Any] = field(default_factory=dict)  # invocation params (secrets dropped when stored)
    metadata: dict[str, Any] = field(default_factory=dict)  # run metadata (fcagent's `keys`)
    serialized: dict[str, Any] | None = None  # the model's LangChain serialisation (tools may hide there)
    tools: list[dict[str, Any]] | None = None  # the offered tools, where the route knows them
    generations: list[Any] = field(default_factory=list)  # ChatGenerations: one per candidate
    usage: dict[str, Any] = field(default_factory=dict)
    latency_ms: float | None = None
    error: str | None = None
    started: float = 0.0  # time.perf_counter() at the start


@dataclass(slots=True)
class ToolRunBuffer:
    """One tool run: its input, and its output or error once it ends."""

    id: str
    name: str
    args: Any
    order: int
    parent: str | None = None
    tool_call_id: str | None = None  # the model's call it answers, where the agent passes it
    output: str | None = None
    error: str | None = None  # a raised exception, a handled ToolException, a ToolMessage with status "error"
    latency_ms: float | None = None
    started: float = 0.0


@dataclass(slots=True)
class EpisodeBuffer:
    """One root invocation of an agent, as it is recorded."""

    id: str
    name: str | None
    started_at: float  # time.time()
    tags: list[str] = field(default_factory=list)
    metadata: dict[str, Any] = field(default_factory=dict)
    calls: list[CallBuffer] = field(default_factory=list)
    tool_runs: list[ToolRunBuffer] = field(default_factory=list)
    tools: list[dict[str, Any]] = field(default_factory=list)  # the recorder's `tools=`, for calls that hide theirs
    outputs: dict[str, Any] = field(default_factory=dict)  # the root run's outputs fcagent reads
    ended_at: float | None = None
    status: str = "complete"
    error: str | None = None

    def snapshot(self) -> EpisodeBuffer:
        """A copy whose lists no later hook appends to (a run that raised may be picked up again)."""
        from dataclasses import replace

        return replace(self, calls=list(self.calls), tool_runs=list(self.tool_runs))
