"""OpenAI's fine-tuning formats, beside TRL's: `fcagent export --format openai`.

Two line formats, as OpenAI's fine-tuning guides and API reference give them (`FineTuneChatRequestInput`,
`FineTunePreferenceRequestInput`):

* supervised: `{"messages": [...], "tools": [...]}`; an assistant message may carry `weight` (0 or 1:
  whether it is trained on). A whole good chain trains every assistant turn, a step row only its last;
* preference (DPO): `{"input": {"messages": [...], "tools": [...]}, "preferred_output": [one assistant
  message], "non_preferred_output": [one assistant message]}`.

Messages are Chat Completions messages: an assistant's calls are `tool_calls` (`{"id", "type": "function",
"function": {"name", "arguments": <a JSON string>}}`), a tool's result a `tool` message naming the call it
answers; `tools` are `{"type": "function", "function": {"name", "description", "parameters"}}`. Rows
are the messages as the model exchanged them, not the student view TRL rows are rendered in (OpenAI's
trainer writes its own prompt from `tools`). Call ids are renumbered (`call_1`, `call_2`, ... by order,
each tool message following its call): recorded ids are random per run, and two replies making the same
calls must read the same. OpenAI refuses unknown keys, so provenance (task, problem, context) stays out
of the rows; the export's stats file keeps the counts.

The pydantic models here are the shapes checked before a row is written (`extra="forbid"`, strict types).
"""

from __future__ import annotations

import copy
import json
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_serializer, model_validator

from fcagent.data.rows import ExportError

__all__ = ["OpenAIChatRow", "OpenAIPreferenceRow", "ChatExample", "PreferenceExample", "chat_row", "preference_row"]

# OpenAI's rule for a function's name.
_FUNCTION_NAME = r"^[a-zA-Z0-9_-]{1,64}$"


class _Wire(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class FunctionCall(_Wire):
    name: str = Field(pattern=_FUNCTION_NAME)
    arguments: str  # a JSON object, as a string

    @field_validator("arguments")
    @classmethod
    def _json_object(cls, value: str) -> str:
        try:
            parsed = json.loads(value)
        except ValueError as exc:
            raise ValueError(f"must be a JSON string ({exc})") from None
        if not isinstance(parsed, dict):
            raise ValueError("must encode a JSON object")
        return value


class ToolCall(_Wire):
    id: str = Field(min_length=1)
    type: Literal["function"]
    function: FunctionCall


class SystemMessage(_Wire):
    role: Literal["system"]
    content: str
    name: str | None = None


class UserMessage(_Wire):
    role: Literal["user"]
    content: str
    name: str | None = None


class AssistantMessage(_Wire):
    role: Literal["assistant"]
    content: str | None = None
    tool_calls: list[ToolCall] | None = Field(None, min_length=1)
    name: str | None = None
    weight: Literal[0, 1] | None = None  # supervised rows only: whether this turn is trained on

    @model_validator(mode="after")
    def _says_something(self) -> AssistantMessage:
        if self.content is None and not self.tool_calls:
            raise ValueError("an assistant message needs `content` or `tool_calls`")
        return self


class ToolMessage(_Wire):
    role: Literal["tool"]
    content: str
    tool_call_id: str = Field(min_length=1)


Message = Annotated[SystemMessage | UserMessage | AssistantMessage | ToolMessage, Field(discriminator="role")]


class FunctionDefinition(_Wire):
    name: str = Field(pattern=_FUNCTION_NAME)
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class ToolDefinition(_Wire):
    type: Literal["function"]
    function: FunctionDefinition


def _check_conversation(messages: list[Any], tools: list[ToolDefinition] | None,
                        outputs: tuple[AssistantMessage, ...] = ()) -> None:
    """Each tool message answers a call an earlier assistant message made (once), and every call names an
    offered function."""
    names = {t.function.name for t in tools or []}
    open_calls: set[str] = set()
    for i, m in enumerate([*messages, *outputs]):
        if isinstance(m, AssistantMessage):
            for call in m.tool_calls or []:
                if tools is not None and call.function.name not in names:
                    raise ValueError(f"message {i} calls `{call.function.name}`, which is not in `tools`")
                open_calls.add(call.id)
        elif isinstance(m, ToolMessage):
            if m.tool_call_id not in open_calls:
                raise ValueError(f"message {i} (tool) answers `{m.tool_call_id}`, which no earlier call made")
            open_calls.discard(m.tool_call_id)


class ChatExample(_Wire):
    """One line of a supervised fine-tuning file."""

    messages: list[Message] = Field(min_length=1)
    tools: list[ToolDefinition] | None = None
    parallel_tool_calls: bool | None = None

    @model_validator(mode="after")
    def _conversation(self) -> ChatExample:
        if not any(isinstance(m, AssistantMessage) for m in self.messages):
            raise ValueError("a supervised example needs an assistant message to train on")
        _check_conversation(self.messages, self.tools)
        return self


class PreferenceInput(_Wire):
    messages: list[Message] = Field(min_length=1)
    tools: list[ToolDefinition] | None = None
    parallel_tool_calls: bool | None = None


class PreferenceExample(_Wire):
    """One line of a preference (DPO) fine-tuning file."""

    input: PreferenceInput
    preferred_output: list[AssistantMessage] = Field(min_length=1, max_length=1)
    non_preferred_output: list[AssistantMessage] = Field(min_length=1, max_length=1)

    @model_validator(mode="after")
    def _conversation(self) -> PreferenceExample:
        if isinstance(self.input.messages[-1], AssistantMessage):
            raise ValueError("`input.messages` must end with the turn the outputs answer, not an assistant message")
        for side in (self.preferred_output, self.non_preferred_output):
            if side[0].weight is not None:
                raise ValueError("`weight` belongs to supervised rows, not preference outputs")
            _check_conversation(self.input.messages, self.input.tools, (side[0],))
        if self.preferred_output == self.non_preferred_output:
            raise ValueError("`preferred_output` and `non_preferred_output` are identical")
        return self


def _checked(model: type[BaseModel], data: dict[str, Any], where: str) -> None:
    try:
        model.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        field = ".".join(str(p) for p in err["loc"]) or "row"
        raise ExportError(f"{where}: `{field}`: {err['msg']} (OpenAI's fine-tuning format)") from None


# --- the rows the exporter writes ---------------------------------------------------------------------------


class _Row(BaseModel):
    # Provenance for the exporter's caps and stats; never written (OpenAI refuses unknown keys).
    task: str | None = Field(None, exclude=True)
    problem_id: str | None = Field(None, exclude=True)
    context_hash: str = Field("", exclude=True)


class OpenAIChatRow(_Row):
    messages: list[dict[str, Any]]
    tools: list[dict[str, Any]] = Field(default_factory=list)

    @model_serializer(mode="wrap")
    def _wire(self, handler: Any) -> dict[str, Any]:
        data = handler(self)
        if not data.get("tools"):
            data.pop("tools", None)
        return data

    @staticmethod
    def sides(data: dict[str, Any]) -> tuple[list[dict[str, Any]], list[dict[str, Any]], None]:
        return data["messages"][:-1], data["messages"][-1:], None

    @staticmethod
    def check(data: dict[str, Any], where: str) -> None:
        _checked(ChatExample, data, where)


class OpenAIPreferenceRow(_Row):
    input: dict[str, Any]
    preferred_output: list[dict[str, Any]]
    non_preferred_output: list[dict[str, Any]]
    source: str = Field("", exclude=True)

    @staticmethod
    def sides(data: dict[str, Any]) -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[dict[str, Any]]]:
        return data["input"]["messages"], data["preferred_output"], data["non_preferred_output"]

    @staticmethod
    def check(data: dict[str, Any], where: str) -> None:
        _checked(PreferenceExample, data, where)


class _CallIds:
    """Recorded call ids renumbered by order (`call_1`, ...); a tool message gets its call's new id, or, with
    no id (or one no call made), the oldest call not yet answered."""

    def __init__(self) -> None:
        self.n = 0
        self.renamed: dict[str, str] = {}
        self.pending: list[str] = []

    def call(self, old: str | None) -> str:
        self.n += 1
        new = f"call_{self.n}"
        if old:
            self.renamed[old] = new
        self.pending.append(new)
        return new

    def answer(self, old: str | None) -> str:
        new = self.renamed.get(old or "")
        if new is None:
            new = self.pending[0] if self.pending else f"call_{self.n + 1}"
        if new in self.pending:
            self.pending.remove(new)
        return new


def _message(rec: dict[str, Any], ids: _CallIds) -> dict[str, Any]:
    """A stored message record as a Chat Completions message."""
    role = rec["role"]
    content = rec.get("content") or ""
    if role == "tool":
        return {"role": "tool", "content": content, "tool_call_id": ids.answer(rec.get("tool_call_id"))}
    if role != "assistant" or not rec.get("tool_calls"):
        return {"role": role, "content": content}
    msg: dict[str, Any] = {"role": "assistant"}
    if content:
        msg["content"] = content
    msg["tool_calls"] = [{"id": ids.call(c.get("id")), "type": "function",
                          "function": {"name": c["name"], "arguments": json.dumps(c.get("args", {}), ensure_ascii=False)}}
                         for c in rec["tool_calls"]]
    return msg


def chat_row(prompt: list[dict[str, Any]], reply: dict[str, Any], tools_json: str, *, every_turn: bool,
             task: str | None, problem_id: str | None, context_hash: str) -> OpenAIChatRow:
    """A supervised row: the messages a model call got, then its reply; `every_turn`: a whole good chain
    (every assistant turn weighted 1), else only the reply is trained on."""
    ids = _CallIds()
    messages = [_message(m, ids) for m in [*prompt, reply]]
    last = len(messages) - 1
    messages = [{**m, "weight": 1 if every_turn or i == last else 0} if m["role"] == "assistant" else m
                for i, m in enumerate(messages)]
    return OpenAIChatRow(messages=messages, tools=json.loads(tools_json), task=task, problem_id=problem_id,
                         context_hash=context_hash)


def preference_row(prompt: list[dict[str, Any]], chosen: dict[str, Any], rejected: dict[str, Any], tools_json: str, *,
                   source: str, task: str | None, problem_id: str | None, context_hash: str) -> OpenAIPreferenceRow:
    """A preference row: the messages a model call got, a good reply and a bad one to them."""
    ids = _CallIds()
    messages = [_message(m, ids) for m in prompt]
    inp: dict[str, Any] = {"messages": messages}
    tools = json.loads(tools_json)
    if tools:
        inp["tools"] = tools
    # The two replies are alternatives to one prompt: each numbers its calls from where the prompt left off.
    return OpenAIPreferenceRow(input=inp, preferred_output=[_message(chosen, copy.deepcopy(ids))],
                               non_preferred_output=[_message(rejected, copy.deepcopy(ids))], source=source,
                               task=task, problem_id=problem_id, context_hash=context_hash)
