"""OpenAI's Chat Completions wire format: the request `fcagent serve` reads and the JSON it answers with.

The request models validate what the server accepts; `to_langchain()` turns a request into the
LangChain messages the student gets. The reply helpers write OpenAI's shapes, so the official client
parses them unchanged.
"""

from __future__ import annotations

import json
import uuid
from typing import Any, Literal

from langchain_core.messages import (
    AIMessage,
    BaseMessage,
    HumanMessage,
    SystemMessage,
    ToolMessage,
)
from pydantic import BaseModel, ConfigDict, Field, field_validator

from fcagent.agent.prompting import assistant_text

__all__ = ["ChatRequest", "Feedback", "BadRequest", "message_json", "finish_reason", "error_body"]


class _Function(BaseModel):
    name: str = Field(min_length=1, max_length=128)
    description: str = ""
    parameters: dict[str, Any] = Field(default_factory=lambda: {"type": "object", "properties": {}})


class _Tool(BaseModel):
    type: Literal["function"] = "function"
    function: _Function


class _CallFunction(BaseModel):
    name: str
    arguments: str = "{}"


class _ToolCall(BaseModel):
    id: str
    type: Literal["function"] = "function"
    function: _CallFunction


class _Message(BaseModel):
    model_config = ConfigDict(extra="allow")

    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[dict[str, Any]] | None = None
    tool_calls: list[_ToolCall] | None = None
    tool_call_id: str | None = None
    name: str | None = None

    def text(self) -> str:
        if isinstance(self.content, list):  # content parts: the text ones
            return "".join(str(p.get("text", "")) for p in self.content if p.get("type") in ("text", "input_text"))
        return self.content or ""


class ChatRequest(BaseModel):
    """The body of `POST /v1/chat/completions` (fields the server does not use are accepted and ignored)."""

    model_config = ConfigDict(extra="allow")

    model: str | None = None
    messages: list[_Message] = Field(min_length=1)
    tools: list[_Tool] | None = None
    tool_choice: Literal["none", "auto", "required"] | dict[str, Any] | None = None
    temperature: float | None = Field(None, ge=0.0, le=2.0)
    top_p: float | None = Field(None, gt=0.0, le=1.0)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    n: int = Field(1, ge=1)
    seed: int | None = None
    stop: str | list[str] | None = None
    stream: bool = False
    stream_options: dict[str, Any] | None = None

    @field_validator("stop")
    @classmethod
    def _stops(cls, value: str | list[str] | None) -> str | list[str] | None:
        if isinstance(value, list) and len(value) > 4:
            raise ValueError("at most 4 stop sequences")
        return value

    def to_langchain(self) -> list[BaseMessage]:
        out: list[BaseMessage] = []
        for i, m in enumerate(self.messages):
            if m.role in ("system", "developer"):
                out.append(SystemMessage(m.text()))
            elif m.role == "user":
                out.append(HumanMessage(m.text()))
            elif m.role == "tool":
                if not m.tool_call_id:
                    raise BadRequest(f"messages[{i}].tool_call_id is required for a tool message", "messages")
                out.append(ToolMessage(m.text(), tool_call_id=m.tool_call_id))
            else:
                calls = []
                for call in m.tool_calls or []:
                    try:
                        args = json.loads(call.function.arguments or "{}")
                    except json.JSONDecodeError:
                        raise BadRequest(f"messages[{i}].tool_calls: arguments of {call.function.name} are not JSON",
                                          "messages") from None
                    calls.append({"name": call.function.name, "args": args if isinstance(args, dict) else {}, "id": call.id})
                out.append(AIMessage(content=m.text(), tool_calls=calls))
        return out

    def tool_schemas(self) -> list[dict[str, Any]] | None:
        """The tools the reply may call: none for `tool_choice="none"`, the named one for a function choice."""
        if not self.tools or self.tool_choice == "none":
            return None
        tools = [t.model_dump() for t in self.tools]
        if isinstance(self.tool_choice, dict):
            name = (self.tool_choice.get("function") or {}).get("name")
            tools = [t for t in tools if t["function"]["name"] == name]
            if not tools:
                raise BadRequest(f"tool_choice names {name!r}, which is not among `tools`", "tool_choice")
        return tools

    def requires_call(self) -> bool:
        return self.tool_choice == "required" or isinstance(self.tool_choice, dict)


class BadRequest(Exception):
    def __init__(self, message: str, param: str | None = None, status: int = 400, code: str | None = None):
        super().__init__(message)
        self.message, self.param, self.status, self.code = message, param, status, code


class Feedback(BaseModel):
    id: str = Field(min_length=1, description="A response id (chatcmpl-...) or an episode id.")
    label: str | bool | float = Field(description="good / bad (up/down, true/false, 1/0, a score >= 0.5 is good).")
    reason: str = ""
    source: str = "feedback"


def message_json(message: AIMessage) -> dict[str, Any]:
    calls = [{"id": c["id"] or f"call_{uuid.uuid4().hex[:12]}", "type": "function",
              "function": {"name": c["name"], "arguments": json.dumps(c["args"], ensure_ascii=False)}}
             for c in message.tool_calls]
    text = message.content if isinstance(message.content, str) else assistant_text(message)
    out: dict[str, Any] = {"role": "assistant", "content": text if text or not calls else None}
    if calls:
        out["tool_calls"] = calls
    return out


def finish_reason(message: AIMessage) -> str:
    if message.tool_calls:
        return "tool_calls"
    return "length" if (message.response_metadata or {}).get("finish_reason") == "length" else "stop"


def error_body(message: str, param: str | None, kind: str = "invalid_request_error", code: str | None = None) -> dict:
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}
