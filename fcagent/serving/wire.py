"""OpenAI's Chat Completions wire format: the request `fcagent serve` reads and the JSON it answers with.

The request is validated strictly: a field the server does not know, or knows and cannot honour
(images, audio, penalties, `logit_bias`, ...), is a 400 naming the field, never silently dropped;
every number is range-checked; cross-field rules (`tool_choice` needs `tools`, `stream_options` needs
`stream`) are OpenAI's. `to_langchain()` turns a request into the LangChain messages the student gets;
the reply helpers write OpenAI's shapes, so the official client parses them unchanged.
"""

from __future__ import annotations

import json
import uuid
from typing import Any, Literal

from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, SystemMessage, ToolMessage
from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictFloat, StrictInt, StrictStr, field_validator

from fcagent.agent.prompting import assistant_text

__all__ = ["ChatRequest", "Feedback", "BadRequest", "message_json", "finish_reason", "error_body", "json_depth"]

_SEED_LIMIT = 2**63  # torch seeds a 64-bit generator: larger seeds are refused, not wrapped


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class _Function(_Strict):
    name: StrictStr = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.\-]+$")
    description: StrictStr = ""
    parameters: dict[str, Any] = Field(default_factory=lambda: {"type": "object", "properties": {}})
    strict: StrictBool | None = None


class _Tool(_Strict):
    type: Literal["function"] = "function"
    function: _Function


class _CallFunction(_Strict):
    name: StrictStr
    arguments: StrictStr = "{}"


class _ToolCall(_Strict):
    id: StrictStr
    type: Literal["function"] = "function"
    function: _CallFunction


class _Part(_Strict):
    """A content part: text only (an image, audio or file part is refused, naming it)."""

    type: Literal["text"]
    text: StrictStr


class _Message(_Strict):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: StrictStr | list[_Part] | None = None
    tool_calls: list[_ToolCall] | None = None
    tool_call_id: StrictStr | None = None
    name: StrictStr | None = None
    refusal: StrictStr | None = None

    def text(self) -> str:
        if isinstance(self.content, list):
            return "".join(p.text for p in self.content)
        return self.content or ""


class _FunctionChoice(_Strict):
    name: StrictStr


class _NamedToolChoice(_Strict):
    type: Literal["function"]
    function: _FunctionChoice


class _StreamOptions(_Strict):
    include_usage: StrictBool = False


class _JsonSchema(_Strict):
    name: StrictStr = Field(min_length=1, max_length=64)
    schema_: dict[str, Any] = Field(alias="schema")
    description: StrictStr | None = None
    strict: StrictBool | None = None


class _ResponseFormat(_Strict):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: _JsonSchema | None = None


class ChatRequest(_Strict):
    """The body of `POST /v1/chat/completions` (see the module docs)."""

    model: StrictStr | None = None
    messages: list[_Message] = Field(min_length=1)
    tools: list[_Tool] | None = None
    tool_choice: Literal["none", "auto", "required"] | _NamedToolChoice | None = None
    parallel_tool_calls: StrictBool | None = None
    response_format: _ResponseFormat | None = None
    temperature: StrictFloat | StrictInt | None = Field(None, ge=0.0, le=2.0)
    top_p: StrictFloat | StrictInt | None = Field(None, gt=0.0, le=1.0)
    max_tokens: StrictInt | None = Field(None, ge=1)
    max_completion_tokens: StrictInt | None = Field(None, ge=1)
    n: StrictInt = Field(1, ge=1)
    seed: StrictInt | None = Field(None, ge=-_SEED_LIMIT, lt=_SEED_LIMIT)
    stop: StrictStr | list[StrictStr] | None = None
    stream: StrictBool = False
    stream_options: _StreamOptions | None = None
    logprobs: StrictBool | None = None
    top_logprobs: StrictInt | None = Field(None, ge=0, le=20)
    user: StrictStr | None = Field(None, max_length=256)
    metadata: dict[str, StrictStr] | None = None
    store: StrictBool | None = None
    # Accepted only at their no-op values: anything else asks for what a local decode does not do.
    presence_penalty: StrictFloat | StrictInt | None = Field(None, ge=0, le=0)
    frequency_penalty: StrictFloat | StrictInt | None = Field(None, ge=0, le=0)
    logit_bias: dict[str, Any] | None = Field(None, max_length=0)
    modalities: list[Literal["text"]] | None = None

    @field_validator("stop")
    @classmethod
    def _stops(cls, value: str | list[str] | None) -> str | list[str] | None:
        if isinstance(value, list) and len(value) > 4:
            raise ValueError("at most 4 stop sequences")
        return value

    def check(self) -> None:
        """OpenAI's rules between fields (a BadRequest naming the field)."""
        if self.tool_choice is not None and not self.tools:
            raise BadRequest("`tool_choice` is only allowed when `tools` are given", "tool_choice")
        if self.parallel_tool_calls is not None and not self.tools:
            raise BadRequest("`parallel_tool_calls` is only allowed when `tools` are given", "parallel_tool_calls")
        if self.stream_options is not None and not self.stream:
            raise BadRequest("`stream_options` is only allowed when `stream` is true", "stream_options")
        if self.top_logprobs is not None and not self.logprobs:
            raise BadRequest("`top_logprobs` needs `logprobs` set to true", "top_logprobs")
        if self.response_format is not None and self.response_format.type == "json_schema" \
                and self.response_format.json_schema is None:
            raise BadRequest("`response_format.json_schema` is required for type json_schema", "response_format")
        if isinstance(self.tool_choice, _NamedToolChoice):
            name = self.tool_choice.function.name
            if name not in {t.function.name for t in self.tools or []}:
                raise BadRequest(f"`tool_choice` names {name!r}, which is not among `tools`", "tool_choice")

    def to_langchain(self) -> list[BaseMessage]:
        out: list[BaseMessage] = []
        for i, m in enumerate(self.messages):
            if m.role in ("system", "developer"):
                out.append(SystemMessage(m.text()))
            elif m.role == "user":
                out.append(HumanMessage(m.text()))
            elif m.role == "tool":
                if not m.tool_call_id:
                    raise BadRequest(f"messages[{i}].tool_call_id is required for a tool message",
                                     f"messages.{i}.tool_call_id")
                out.append(ToolMessage(m.text(), tool_call_id=m.tool_call_id))
            else:
                calls = []
                for j, call in enumerate(m.tool_calls or []):
                    try:
                        args = json.loads(call.function.arguments or "{}")
                    except (json.JSONDecodeError, RecursionError):
                        raise BadRequest(f"messages[{i}].tool_calls[{j}]: arguments of {call.function.name} are not "
                                         "JSON", f"messages.{i}.tool_calls.{j}.function.arguments") from None
                    calls.append({"name": call.function.name, "args": args if isinstance(args, dict) else {},
                                  "id": call.id})
                out.append(AIMessage(content=m.text(), tool_calls=calls))
        return out

    def tool_schemas(self) -> list[dict[str, Any]] | None:
        """The tools offered (all of them: `tool_choice` says which a reply must call)."""
        return [t.model_dump(exclude_none=True) for t in self.tools] if self.tools else None

    def tool_choice_option(self) -> Any:
        """`tool_choice` as the chat model takes it (LangChain's and OpenAI's values alike)."""
        if isinstance(self.tool_choice, _NamedToolChoice):
            return self.tool_choice.function.name
        return self.tool_choice

    def response_format_option(self) -> dict[str, Any] | None:
        if self.response_format is None or self.response_format.type == "text":
            return None
        return self.response_format.model_dump(by_alias=True, exclude_none=True)

    def requires_call(self) -> bool:
        return self.tool_choice == "required" or isinstance(self.tool_choice, _NamedToolChoice)


class BadRequest(Exception):
    def __init__(self, message: str, param: str | None = None, status: int = 400, code: str | None = None):
        super().__init__(message)
        self.message, self.param, self.status, self.code = message, param, status, code


class Feedback(_Strict):
    id: StrictStr = Field(min_length=1, max_length=200, description="A response id (chatcmpl-...) or an episode id, "
                          "whole: a prefix is not enough.")
    label: StrictStr | StrictBool | StrictFloat | StrictInt = Field(
        description="good / bad (up/down, true/false, 1/0, a score >= 0.5 is good).")
    reason: StrictStr = Field("", max_length=10_000)
    source: StrictStr = Field("feedback", max_length=100)


def json_depth(value: Any, limit: int) -> int:
    """How deep `value` nests (objects and arrays), counted only up to `limit + 1`: no recursion, so a
    hostile body cannot exhaust the stack."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict | list):
            deepest = max(deepest, depth)
            if deepest > limit:
                return deepest
            stack.extend((child, depth + 1) for child in (item.values() if isinstance(item, dict) else item))
    return deepest


def message_json(message: AIMessage) -> dict[str, Any]:
    calls = [{"id": c["id"] or f"call_{uuid.uuid4().hex[:12]}", "type": "function",
              "function": {"name": c["name"], "arguments": json.dumps(c["args"], ensure_ascii=False)}}
             for c in message.tool_calls]
    text = message.content if isinstance(message.content, str) else assistant_text(message)
    out: dict[str, Any] = {"role": "assistant", "content": text if text or not calls else None, "refusal": None}
    if calls:
        out["tool_calls"] = calls
    return out


def finish_reason(message: AIMessage) -> str:
    if message.tool_calls:
        return "tool_calls"
    return "length" if (message.response_metadata or {}).get("finish_reason") == "length" else "stop"


def error_body(message: str, param: str | None, kind: str = "invalid_request_error", code: str | None = None) -> dict:
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}
