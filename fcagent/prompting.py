"""The text protocol's prompt: function descriptions and worked examples injected as text.

This is the paper's protocol for models without native tool calling. The same renderer is used by
`LocalChatModel.bind_tools`, so a local model given tools natively sees the same description.
"""

from __future__ import annotations

import json
from typing import Any

from langchain_core.tools import BaseTool
from langchain_core.utils.function_calling import convert_to_openai_tool

from fcagent.tasks.base import WorkedExample

__all__ = ["tool_schemas", "render_system_prompt", "OBSERVATION_PREFIX"]

OBSERVATION_PREFIX = "Observation: "

_PROTOCOL = (
    "You can call these functions:\n{functions}\n\n"
    "To call a function, reply with only a JSON object: {{\"name\": <function name>, \"arguments\": "
    "{{<argument name>: <value>}}}}. To call several at once, reply with a JSON list of such objects. "
    "Each call's result comes back as an Observation."
)


def tool_schemas(tools: list[BaseTool | dict[str, Any]]) -> list[dict[str, Any]]:
    """OpenAI-style function schemas (`{"type": "function", "function": {...}}`) for tools."""
    return [t if isinstance(t, dict) and t.get("type") == "function" else convert_to_openai_tool(t) for t in tools]


def _function_lines(schemas: list[dict[str, Any]]) -> str:
    lines = []
    for s in schemas:
        fn = s.get("function", s)
        lines.append(json.dumps({"name": fn["name"], "description": fn.get("description", ""),
                                 "parameters": fn.get("parameters", {})}, ensure_ascii=False))
    return "\n".join(lines)


def render_system_prompt(schemas: list[dict[str, Any]], *, instructions: str = "",
                         examples: list[WorkedExample] | None = None, system: str | None = None) -> str:
    parts = [p for p in (system, instructions) if p]
    parts.append(_PROTOCOL.format(functions=_function_lines(schemas)))
    for i, ex in enumerate(examples or [], 1):
        lines = [f"Example {i}:", f"User: {ex.question}"]
        for call, observation in ex.steps:
            lines.append(f"Assistant: {call}")
            if observation:
                lines.append(f"{OBSERVATION_PREFIX}{observation}")
        parts.append("\n".join(lines))
    return "\n\n".join(parts)
