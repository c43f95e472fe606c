"""What a local model's call asks for, and what its reply text becomes.

* `ToolChoice`: LangChain's and OpenAI's `tool_choice` (`"auto"`, `"none"`, `"any"` / `"required"` /
  `True`, a function's name, `{"type": "function", "function": {"name": ...}}`), read once.
* `response_schema`: OpenAI's `response_format` (`json_object`, `json_schema`) as the JSON schema
  the grammar holds the reply to.
* `reply_message`: the reply text as an `AIMessage`: `tool_calls`, `invalid_tool_calls`, or text.
* `drop_ungrounded_from_reply`: the `drop_ungrounded` option's edit of a reply.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, ToolMessage
from langchain_core.messages.tool import invalid_tool_call, tool_call

from fcagent.core.calls import (
    Call,
    CallParseError,
    calls_error,
    drop_ungrounded_arguments,
    format_calls,
    looks_like_call,
    parse_calls,
)
from fcagent.core.errors import UserError

__all__ = ["ToolChoice", "response_schema", "reply_message", "drop_ungrounded_from_reply"]


@dataclass(frozen=True)
class ToolChoice:
    """`mode`: `auto` (the model decides), `none` (no call: the tools are not offered), `required` (a call,
    to one of `names` when given, held to it by the call grammar)."""

    mode: str = "auto"
    names: tuple[str, ...] = ()

    @classmethod
    def read(cls, value: Any, tools: list[dict[str, Any]] | None) -> ToolChoice:
        if value is None or value == "auto" or value is False:
            return cls()
        if value == "none":
            return cls("none")
        if value in ("any", "required") or value is True:
            return cls("required")
        name = value if isinstance(value, str) else ((value or {}).get("function") or {}).get("name") \
            if isinstance(value, dict) else None
        if not isinstance(name, str) or not name:
            raise UserError(f"`tool_choice` must be auto, none, any, required, a function's name or "
                            f"{{'type': 'function', 'function': {{'name': ...}}}}, got {value!r}")
        known = [t.get("function", t).get("name") for t in tools or []]
        if name not in known:
            raise UserError(f"`tool_choice` names {name!r}, which is not among the tools bound "
                            f"({', '.join(map(str, known)) or 'none'})")
        return cls("required", (name,))

    def offered(self, tools: list[dict[str, Any]] | None) -> list[dict[str, Any]] | None:
        """The tools a reply may call under this choice."""
        if self.mode == "none" or not tools:
            return None
        if self.names:
            return [t for t in tools if t.get("function", t).get("name") in self.names]
        return tools


def response_schema(response_format: Any) -> dict[str, Any] | None:
    """The JSON schema a reply must match under OpenAI's `response_format`; None for plain text."""
    if response_format is None:
        return None
    kind = response_format.get("type") if isinstance(response_format, dict) else None
    if kind == "text":
        return None
    if kind == "json_object":
        return {"type": "object"}
    if kind == "json_schema":
        spec = response_format.get("json_schema") or {}
        schema = spec.get("schema") if isinstance(spec, dict) else None
        if not isinstance(schema, dict):
            raise UserError("`response_format.json_schema.schema` must be a JSON schema object")
        return schema
    raise UserError(f"`response_format.type` must be text, json_object or json_schema, got {kind!r}")


def reply_message(content: str, tools: list[dict[str, Any]] | None) -> AIMessage:
    """The reply text as an AIMessage. With tools offered, a reply that reads as calls to them with
    arguments that fit their schemas becomes `tool_calls` (content empty, as chat APIs return them);
    a call to an unknown function, with schema-invalid arguments, or one that cannot be read becomes
    `invalid_tool_calls` with the reason in `error` (content keeps the text); a reply in words is an
    answer. Without tools the reply is text."""
    if not tools or not looks_like_call(content):
        return AIMessage(content=content)
    try:
        calls = parse_calls(content)
    except CallParseError as exc:
        return AIMessage(content=content, invalid_tool_calls=[invalid_tool_call(
            name=None, args=content, id=Call(name="_").id, error=f"parse_error: {exc}")])
    valid, invalid = [], []
    for c in calls:
        why = calls_error([{"name": c.name, "args": c.args}], tools)
        if why is None:
            valid.append(tool_call(name=c.name, args=c.args, id=c.id))
        else:
            invalid.append(invalid_tool_call(name=c.name, args=json.dumps(c.args, ensure_ascii=False), id=c.id,
                                             error=str(why)))
    return AIMessage(content="" if not invalid else content, tool_calls=valid, invalid_tool_calls=invalid)


def drop_ungrounded_from_reply(reply: str, tools: list[dict[str, Any]], messages: list[BaseMessage]) -> str:
    """The reply with its calls' ungrounded optional string arguments removed (`drop_ungrounded_arguments`;
    what counts as stated: user messages and tool results, not system prompts, which hold the functions'
    own descriptions and examples, nor the model's earlier turns). A reply that is not a readable call,
    or loses nothing, is returned unchanged."""
    if not looks_like_call(reply):
        return reply
    try:
        calls = parse_calls(reply)
    except CallParseError:
        return reply
    said = "\n".join(m.text for m in messages if isinstance(m, (HumanMessage, ToolMessage)))
    kept = drop_ungrounded_arguments(calls, tools, said)
    return reply if all(a is b for a, b in zip(kept, calls)) else format_calls(kept)
