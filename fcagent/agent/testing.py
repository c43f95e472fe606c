"""A scripted chat model for users' tests (like langgraph's FakeToolCallingModel, llm's MockModel)."""

from __future__ import annotations

import uuid
from typing import Any

from langchain_core.callbacks import CallbackManagerForLLMRun
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage
from langchain_core.outputs import ChatGeneration, ChatResult
from pydantic import Field, PrivateAttr

from fcagent.agent.prompting import tool_schemas

__all__ = ["ScriptedChatModel"]


class ScriptedChatModel(BaseChatModel):
    """Replies with `responses` in order (strings become text replies), then repeats the last.

    `responses` may instead map a question to its own replies, one per step of that conversation
    (the assistant turns since the question's last user message count the step): a stand-in for a
    large model in an agent's tests, the same request always answered the same way. A call scripted
    without an id gets a fresh one on every reply, as a real model's would.

    Supports `bind_tools` (tools are recorded in `seen_tools`), so it drives the native protocol;
    with `native=False` it refuses `bind_tools` like a model without tool calling.
    """

    responses: list[Any] | dict[str, list[Any]]  # AIMessage or str; Any keeps pydantic from coercing strings
    native: bool = True
    model_name: str = "scripted"
    seen_messages: list[list[BaseMessage]] = Field(default_factory=list)
    seen_tools: list[list[dict[str, Any]]] = Field(default_factory=list)
    _i: int = PrivateAttr(default=0)

    @property
    def _llm_type(self) -> str:
        return "fcagent-scripted"

    @property
    def _identifying_params(self) -> dict[str, Any]:
        return {"model_name": self.model_name}

    def bind_tools(self, tools: list[Any], **kwargs: Any):
        if not self.native:
            raise NotImplementedError("this scripted model has no native tool calling")
        return self.bind(tools=tool_schemas(tools), **kwargs)

    def _generate(self, messages: list[BaseMessage], stop: list[str] | None = None,
                  run_manager: CallbackManagerForLLMRun | None = None, **kwargs: Any) -> ChatResult:
        self.seen_messages.append(list(messages))
        self.seen_tools.append(kwargs.get("tools") or [])
        if isinstance(self.responses, dict):
            question = next((m.content for m in reversed(messages) if isinstance(m, HumanMessage)), "")
            if question not in self.responses:
                raise KeyError(f"ScriptedChatModel has no script for {question!r}")
            step = 0
            for m in reversed(messages):
                if isinstance(m, HumanMessage):
                    break
                step += isinstance(m, AIMessage)
            script = self.responses[question]
            reply = script[min(step, len(script) - 1)]
        else:
            reply = self.responses[min(self._i, len(self.responses) - 1)]
            self._i += 1
        message = AIMessage(content=reply) if isinstance(reply, str) else reply.model_copy(deep=True)
        if message.tool_calls:  # a call scripted without an id gets a fresh one, as a real model's would
            message.tool_calls = [{**c, "id": c.get("id") or f"call_{uuid.uuid4().hex[:8]}"} for c in message.tool_calls]
        return ChatResult(generations=[ChatGeneration(message=message)])
