"""Whether a student's reply can stand or must go to the teacher: one check for every route.

`StudentMiddleware` (a `create_agent` agent) and `fcagent serve` ask the same `StudentCheck`, so a
reply that escalates in one escalates in the other.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any, Literal

from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, HumanMessage, SystemMessage, ToolMessage

from fcagent.core.calls import CallParseError, calls_error, parse_calls
from fcagent.core.errors import UserError
from fcagent.core.records import StepError

__all__ = ["StudentCheck", "Validator", "student_failure", "grounded_answer", "repeated_call"]


def grounded_answer(messages: list[Any], reply: AIMessage, tools: list[dict[str, Any]]) -> StepError | None:
    """The default check of a student's answer in words: where tools are offered, it must come after a
    tool result of this turn (an answer given without looking anything up is the small model's
    typical hallucination); without tools any answer goes."""
    if not tools:
        return None
    for m in reversed(messages):
        if isinstance(m, ToolMessage):
            return None
        if isinstance(m, HumanMessage):
            break
    return StepError(kind="no_call", detail="answered in words without calling a tool this turn")


def student_failure(message: Any, tools: list[dict[str, Any]], *, require_call: bool = False) -> StepError | None:
    """Why a student's reply is not a usable call (so it goes to the teacher), or None. A reply in
    words is judged by `StudentMiddleware.validate`, not here (unless `require_call`)."""
    if not isinstance(message, AIMessage):
        return StepError(kind="no_call", detail="not an assistant message")
    if message.invalid_tool_calls:
        bad = message.invalid_tool_calls[0]
        return StepError(kind="parse_error", detail=str(bad.get("error") or "unreadable call"), call=bad.get("name"))
    if not message.tool_calls:
        text = message.content if isinstance(message.content, str) else ""
        try:
            parse_calls(text)
            return StepError(kind="parse_error", detail="a call written as text, not parsed into tool_calls")
        except CallParseError:
            return StepError(kind="no_call", detail="the reply has no function call") if require_call else None
    return calls_error([{"name": c["name"], "args": c.get("args") or {}} for c in message.tool_calls], tools)


def repeated_call(messages: list[Any], reply: AIMessage) -> StepError | None:
    """A call the agent already made with the same arguments since the user's last message: a small
    model going round in circles (its context grows until the step limit or the model's length)."""
    earlier = set()
    for m in reversed(messages):
        if isinstance(m, HumanMessage):
            break
        if isinstance(m, AIMessage):
            earlier |= {(c["name"], json.dumps(c.get("args") or {}, sort_keys=True)) for c in m.tool_calls}
    for c in reply.tool_calls:
        if (c["name"], json.dumps(c.get("args") or {}, sort_keys=True)) in earlier:
            return StepError(kind="repeated_call", detail=f"{c['name']} was already called with these arguments",
                             call=c["name"])
    return None


_JUDGE_PROMPT = ("You check an assistant's final answer. Reply with only YES if the answer follows from the "
                 "conversation (the user's request and the tool results), or NO: <why> if it does not.")

Validator = Literal["grounded", "any"] | Callable[..., Any] | BaseChatModel


class StudentCheck:
    """Whether a student's reply can stand, or must go to the teacher: one decision for
    `StudentMiddleware` and `fcagent serve`.

    A call fails when it cannot be read, names an unknown function, has schema-invalid arguments or
    repeats a call already made in this turn (`repeated_call`: a small model's loop). An answer in
    words is checked by `validate`:

    * `"grounded"` (default): accepted where a tool result of this turn came before it, or no tools
      are offered (`grounded_answer`); a small model that answers without looking anything up is
      escalated;
    * `"any"`: every answer in words is accepted;
    * a function `(messages, reply) -> bool | str | None` (False or a string: the reason it fails);
    * a chat model: a judge asked whether the answer follows from the conversation (YES / NO: why).
    """

    def __init__(self, validate: Validator = "grounded", *, require_call: bool = False):
        if not (validate in ("grounded", "any") or callable(validate) or isinstance(validate, BaseChatModel)):
            raise UserError("`validate` must be 'grounded', 'any', a function (messages, reply) -> bool | str | None, "
                            f"or a chat model, got {validate!r}")
        self.validate = validate
        self.require_call = require_call
        self.judges = isinstance(validate, BaseChatModel)  # a model call: async callers run it off the loop

    def failure(self, messages: list[Any], reply: AIMessage | None, tools: list[dict[str, Any]], *,
                require_call: bool | None = None) -> StepError | None:
        """Why `reply` (to `messages`, with `tools` offered) fails, or None when it can stand.
        `require_call` overrides the check's own for one call (a request's `tool_choice="required"`)."""
        if reply is None:
            return StepError(kind="no_call", detail="the student returned no message")
        needs_call = self.require_call if require_call is None else require_call
        why = student_failure(reply, tools, require_call=needs_call)
        if why is None and reply.tool_calls:
            return repeated_call(messages, reply)
        if why is None:
            return self._judge_text(messages, reply, tools)
        return why

    def _judge_text(self, messages: list[Any], reply: AIMessage, tools: list[dict[str, Any]]) -> StepError | None:
        if self.validate == "any":
            return None
        if self.validate == "grounded":
            return grounded_answer(messages, reply, tools)
        if isinstance(self.validate, BaseChatModel):
            transcript = "\n".join(f"{m.type}: {m.content}" for m in messages if isinstance(m.content, str))
            verdict = self.validate.invoke([SystemMessage(_JUDGE_PROMPT),
                                            HumanMessage(f"{transcript}\n\nFinal answer: {reply.content}")])
            text = str(verdict.content).strip()
            return None if text.upper().startswith("YES") else StepError(kind="no_call", detail=f"judge: {text[:300]}")
        outcome = self.validate(messages, reply)  # type: ignore[operator]
        if outcome is None or outcome is True:
            return None
        return StepError(kind="no_call", detail=outcome if isinstance(outcome, str) else "rejected by `validate`")
