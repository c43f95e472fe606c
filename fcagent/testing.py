"""A scripted chat model for users' tests (like langgraph's FakeToolCallingModel, llm's MockModel)."""

from __future__ import annotations

from typing import Any

from langchain_core.callbacks import CallbackManagerForLLMRun
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, BaseMessage
from langchain_core.outputs import ChatGeneration, ChatResult
from pydantic import Field, PrivateAttr

from fcagent.prompting import tool_schemas

__all__ = ["ScriptedChatModel"]


class ScriptedChatModel(BaseChatModel):
    """Replies with `responses` in order (strings become text replies), then repeats the last.

    Supports `bind_tools` (tools are recorded in `seen_tools`), so it drives the native protocol;
    with `native=False` it refuses `bind_tools` like a model without tool calling.
    """

    responses: list[Any]  # AIMessage or str; Any keeps pydantic from coercing strings into messages
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
        reply = self.responses[min(self._i, len(self.responses) - 1)]
        self._i += 1
        message = AIMessage(content=reply) if isinstance(reply, str) else reply.model_copy(deep=True)
        return ChatResult(generations=[ChatGeneration(message=message)])
