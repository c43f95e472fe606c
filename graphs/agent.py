"""Graphs served by `langgraph dev` / LangGraph Studio (named in langgraph.json).

* `math_agent`, `logic_agent`: fcagent's step-by-step function-calling graph on the calculator and the
  logic task. A typed question (`{"messages": [{"role": "user", "content": "..."}]}`) is answered by the
  model `$FCAGENT_MODEL` names (default: the bundled student, `bundled:smollm2-135m`; any spec: a run
  folder, `provider:model`). A task problem (`{"problem": {...}}`) the task knows is replayed by the
  reference teacher (its gold chain); any other problem goes to the model.
* `own_agent`: the user's-own-agent story, a `create_agent` warehouse assistant with three tools whose
  model calls go to the student first (`StudentMiddleware`) and to the teacher when the student's reply
  fails validation, every call recorded by `TraceMiddleware` into `$FCAGENT_STORE`
  (default `fcagent-studio.db`). The teacher is `$FCAGENT_TEACHER` (e.g. `openai:gpt-4.1`); offline,
  the same weights decoded under the call grammar (`?constrain=llguidance`), so every escalated step
  at least makes a valid call — escalations show up in Studio as the teacher's turns.
"""

from __future__ import annotations

import os
from functools import cache
from typing import Any

from langchain.agents import create_agent
from langchain_core.callbacks import CallbackManagerForLLMRun
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import BaseMessage
from langchain_core.outputs import ChatResult
from langchain_core.tools import ToolException, tool
from pydantic import ConfigDict

from fcagent import ReferenceTeacher, StudentMiddleware, TraceMiddleware, build_agent_graph, get_task, keys, load_chat_model


@cache
def _student() -> BaseChatModel:
    return load_chat_model(os.environ.get("FCAGENT_MODEL", "bundled:smollm2-135m"), max_new_tokens=96)


class ProblemOrQuestion(BaseChatModel):
    """The reference teacher for the task problems it knows (it replays their gold chains), the model
    for everything else: so the served graph answers a typed question, and replays a task problem."""

    model_config = ConfigDict(arbitrary_types_allowed=True)
    model: Any
    teacher: Any
    preferred_protocol: str = "text"

    @property
    def prompt_style(self) -> str:  # the graph renders the prompt the model was trained with
        return getattr(self.model, "prompt_style", "examples")

    @property
    def _llm_type(self) -> str:
        return "fcagent-problem-or-question"

    @property
    def _identifying_params(self) -> dict[str, Any]:
        return {"model_name": getattr(self.model, "model_name", None)}

    def bind_tools(self, tools: list[Any], **kwargs: Any):
        return self.model.bind_tools(tools, **kwargs)

    def _generate(self, messages: list[BaseMessage], stop: list[str] | None = None,
                  run_manager: CallbackManagerForLLMRun | None = None, **kwargs: Any) -> ChatResult:
        problem_id = (run_manager.metadata if run_manager else {}).get(keys.PROBLEM_ID)
        target = self.teacher if problem_id and self.teacher.knows(problem_id) else self.model
        # The chosen model's own `_generate` under this run: one model run, its tokens streamed as this run's.
        return target._generate(messages, stop=stop, run_manager=run_manager, **kwargs)


def _task_graph(spec: str):
    task = get_task(spec)
    model = ProblemOrQuestion(model=_student(), teacher=ReferenceTeacher(problems=task.load(limit=2000)))
    return build_agent_graph(model, task=task)


# --- the user's own agent ------------------------------------------------------------------------

STOCK = {"SKU-1": 10, "SKU-2": 20, "SKU-3": 30, "SKU-4": 40}


@tool
def check_stock(sku: str) -> int:
    """Units of a product in the warehouse, by its SKU code (e.g. SKU-3)."""
    if sku not in STOCK:
        raise ToolException(f"unknown SKU {sku}")
    return STOCK[sku]


@tool
def reserve(sku: str, quantity: int) -> str:
    """Reserve units of a product for an order."""
    if quantity > STOCK.get(sku, 0):
        raise ToolException(f"only {STOCK.get(sku, 0)} units of {sku} left")
    return f"reserved {quantity} x {sku}"


@tool
def opening_hours(day: str) -> str:
    """The warehouse's opening hours on a day of the week."""
    return "closed" if day.lower() in ("saturday", "sunday") else "8-16"


check_stock.handle_tool_error = reserve.handle_tool_error = True


def _own_agent():
    teacher = load_chat_model(os.environ.get("FCAGENT_TEACHER", "bundled:smollm2-135m?constrain=llguidance"),
                              **({} if os.environ.get("FCAGENT_TEACHER") else {"max_new_tokens": 64}))
    store = os.environ.get("FCAGENT_STORE", "fcagent-studio.db")
    return create_agent(teacher, [check_stock, reserve, opening_hours],
                        system_prompt="You are a warehouse assistant. Use the tools to answer.",
                        middleware=[TraceMiddleware(store), StudentMiddleware(_student(), teacher=teacher, store=store)])


math_agent = _task_graph("math")
logic_agent = _task_graph("logic")
own_agent = _own_agent()
