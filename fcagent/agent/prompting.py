"""The text protocol's prompt: function descriptions and worked examples injected as text.

This is the paper's protocol for models without native tool calling. The same renderer is used by
`LocalChatModel.bind_tools`, so a local model given tools natively sees the same description.

Two styles. `examples` (the teacher's, the paper's): each function's JSON schema and the task's worked
examples. `compact` (the trained student's): one line per function, its signature and descriptions,
and no worked examples, so whole chains take far fewer tokens (docs/training.md). A
student is trained and served with the style its run folder records, so the two prompts match
byte for byte.
"""

from __future__ import annotations

import json
from enum import StrEnum
from typing import Any

from langchain_core.messages import AIMessage, BaseMessage, SystemMessage, ToolMessage
from langchain_core.tools import BaseTool
from langchain_core.utils.function_calling import convert_to_openai_tool

from fcagent.core.calls import Call, format_calls
from fcagent.tasks.base import WorkedExample

__all__ = ["tool_schemas", "render_system_prompt", "to_chat_dicts", "assistant_text", "OBSERVATION_PREFIX",
           "PromptStyle", "PROMPT_STYLES", "compact_signature", "restyle"]

class PromptStyle(StrEnum):
    """How the functions are shown to the model (see the module docs): the one vocabulary of the local
    model, the exporter, training and distill."""

    EXAMPLES = "examples"  # the teacher's prompt: JSON schemas and the task's worked examples
    COMPACT = "compact"  # the student's: one signature line per function, no examples


PROMPT_STYLES: tuple[str, ...] = tuple(s.value for s in PromptStyle)

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


def _type_of(schema: Any) -> str:
    if not isinstance(schema, dict):
        return "any"
    if "enum" in schema:
        return "|".join(json.dumps(v, ensure_ascii=False) for v in schema["enum"])
    kind = schema.get("type", "any")
    if isinstance(kind, list):
        return "|".join(str(k) for k in kind)
    if kind == "array":
        return f"array[{_type_of(schema.get('items'))}]"
    if kind in ("object", "dict") and schema.get("properties"):
        required = set(schema.get("required") or [])
        inner = ", ".join(f"{k}{'' if k in required else '?'}: {_type_of(v)}" for k, v in schema["properties"].items())
        return "{" + inner + "}"
    return str(kind)


def compact_signature(schema: dict[str, Any]) -> str:
    """One line: `name(arg: type, opt?: type): description. arg: its description; ...` (defaults kept)."""
    fn = schema.get("function", schema)
    params = fn.get("parameters") or {}
    props = params.get("properties") or {}
    required = set(params.get("required") or [])
    args = ", ".join(f"{k}{'' if k in required else '?'}: {_type_of(v)}" for k, v in props.items())
    notes = []
    for k, v in props.items():
        text = (v.get("description") or "").strip() if isinstance(v, dict) else ""
        if isinstance(v, dict) and "default" in v:
            text = f"{text} (default {json.dumps(v['default'], ensure_ascii=False)})".strip()
        if text:
            notes.append(f"{k}: {text}")
    line = f"{fn['name']}({args})"
    if (fn.get("description") or "").strip():
        line += f": {fn['description'].strip()}"
    if notes:
        line += " " + "; ".join(notes)
    return line


def render_system_prompt(schemas: list[dict[str, Any]], *, instructions: str = "",
                         examples: list[WorkedExample] | None = None, system: str | None = None,
                         style: PromptStyle | str = PromptStyle.EXAMPLES) -> str:
    """The system prompt of the text protocol (see the module docs for the two styles)."""
    parts = [p for p in (system, instructions) if p]
    if style == "compact":
        parts.append(_PROTOCOL.format(functions="\n".join(compact_signature(s) for s in schemas)))
        return "\n\n".join(parts)
    parts.append(_PROTOCOL.format(functions=_function_lines(schemas)))
    for i, ex in enumerate(examples or [], 1):
        lines = [f"Example {i}:", f"User: {ex.question}"]
        for call, observation in ex.steps:
            lines.append(f"Assistant: {call}")
            if observation:
                lines.append(f"{OBSERVATION_PREFIX}{observation}")
        parts.append("\n".join(lines))
    return "\n\n".join(parts)


def restyle(messages: list[BaseMessage], parts: dict[str, Any] | None, tools: list[dict[str, Any]],
            style: str) -> list[BaseMessage]:
    """A text-protocol context with its system prompt rendered in `style`, from the prompt parts fcagent's
    graph recorded (`keys.PROMPT`); unchanged when there are no parts or the style is already that."""
    if not parts or parts.get("style", "examples") == style or style != "compact" or not messages or \
            not isinstance(messages[0], SystemMessage):
        return messages
    prompt = render_system_prompt(tools, instructions=parts.get("instructions") or "", system=parts.get("system"),
                                  style="compact")
    return [SystemMessage("\n\n".join([*(parts.get("leading") or []), prompt])), *messages[1:]]


def assistant_text(message: AIMessage) -> str:
    """An assistant turn as the student writes it: its calls as JSON (valid ones, and ones its own
    check refused), else its text."""
    calls = [Call(name=t["name"], args=t.get("args") or {}) for t in message.tool_calls]
    for bad in message.invalid_tool_calls:
        try:
            args = json.loads(bad.get("args") or "")
        except (json.JSONDecodeError, TypeError):
            args = None
        if not bad.get("name") or not isinstance(args, dict):
            return message.content if isinstance(message.content, str) and message.content else str(bad.get("args") or "")
        calls.append(Call(name=bad["name"], args=args))
    if calls:
        return format_calls(calls)
    return message.content if isinstance(message.content, str) else str(message.content)


def to_chat_dicts(messages: list[BaseMessage]) -> list[dict[str, str]]:
    """Messages as the role/content dicts a chat template renders, tool traffic as plain text: the
    student's view, shared by inference (`LocalChatModel`) and the exporter."""
    out: list[dict[str, str]] = []
    for m in messages:
        content = m.content if isinstance(m.content, str) else str(m.content)
        if isinstance(m, SystemMessage):
            role = "system"
        elif isinstance(m, AIMessage):
            role, content = "assistant", assistant_text(m)
        elif isinstance(m, ToolMessage):
            role, content = "user", OBSERVATION_PREFIX + content
        else:
            role = "user"
        if out and out[-1]["role"] == role == "system":
            out[-1]["content"] += "\n\n" + content
        else:
            out.append({"role": role, "content": content})
    return out
