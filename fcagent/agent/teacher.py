"""`ReferenceTeacher`: a chat model that replays a problem's gold call chain step by step.

Offline there is no large model; the reference teacher stands in for one. It goes through the same
graph as any model (both protocols), so its demonstrations are traced, labelled and exported exactly
like a large model's output. It reads the gold answer, so it is an upper bound, never an evaluee.
"""

from __future__ import annotations

from typing import Any

from langchain_core.callbacks import CallbackManagerForLLMRun
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage
from langchain_core.outputs import ChatGeneration, ChatResult
from pydantic import ConfigDict, Field, PrivateAttr

from fcagent.agent.prompting import tool_schemas
from fcagent.core import keys
from fcagent.core.calls import format_calls
from fcagent.core.errors import UserError
from fcagent.tasks.base import Problem

__all__ = ["ReferenceTeacher", "NO_CALL_REPLY"]

NO_CALL_REPLY = "None of the available functions can answer this request."


class ReferenceTeacher(BaseChatModel):
    """Replays gold chains: `ReferenceTeacher(problems=task.load(split="train"))`."""

    model_config = ConfigDict(arbitrary_types_allowed=True)
    problems: list[Problem] = Field(default_factory=list)
    preferred_protocol: str = "text"
    model_name: str = "reference-teacher"
    n: int = Field(1, ge=1, description="Copies of each reply (the gold step is the same every time).")
    _by_id: dict[str, Problem] = PrivateAttr(default_factory=dict)
    _by_question: dict[str, Problem | None] = PrivateAttr(default_factory=dict)

    def model_post_init(self, __context: Any) -> None:
        self.add_problems(self.problems)

    @property
    def _llm_type(self) -> str:
        return "fcagent-reference-teacher"

    @property
    def _identifying_params(self) -> dict[str, Any]:
        return {"model_name": self.model_name}

    def bind_tools(self, tools: list[Any], **kwargs: Any):
        return self.bind(tools=tool_schemas(tools), **kwargs)

    def add_problems(self, problems: list[Problem]) -> None:
        for p in problems:
            if p.gold_chain is None:
                continue
            self._by_id[p.id] = p
            # Several problems can share a question text (same statement, other knowledge base):
            # such a text identifies none of them.
            self._by_question[p.question] = None if p.question in self._by_question else p

    def knows(self, problem_id: str) -> bool:
        """Whether this teacher has a gold chain for `problem_id`."""
        return problem_id in self._by_id

    def _find(self, messages: list[BaseMessage], metadata: dict[str, Any]) -> Problem:
        # fcagent's graph names the problem in the run metadata; other agents are matched by question.
        by_id = self._by_id.get(metadata.get(keys.PROBLEM_ID, ""))
        if by_id is not None:
            return by_id
        for m in messages:
            if isinstance(m, HumanMessage) and isinstance(m.content, str) and self._by_question.get(m.content):
                return self._by_question[m.content]  # type: ignore[return-value]
        raise UserError("ReferenceTeacher got a question it has no gold chain for; pass the problems with "
                        "`ReferenceTeacher(problems=...)` (problems without a gold chain are skipped)")

    def _generate(self, messages: list[BaseMessage], stop: list[str] | None = None,
                  run_manager: CallbackManagerForLLMRun | None = None, **kwargs: Any) -> ChatResult:
        problem = self._find(messages, run_manager.metadata if run_manager else {})
        step = sum(isinstance(m, AIMessage) for m in messages)
        chain = problem.gold_chain or []
        calls = chain[step] if step < len(chain) else chain[-1]
        if not calls:
            message = AIMessage(content=NO_CALL_REPLY)
        elif kwargs.get("tools"):
            message = AIMessage(content="", tool_calls=[{"name": c.name, "args": c.args, "id": c.id} for c in calls])
        else:
            message = AIMessage(content=format_calls(calls))
        n = int(kwargs.get("n") or self.n)
        return ChatResult(generations=[ChatGeneration(message=message) for _ in range(n)])
