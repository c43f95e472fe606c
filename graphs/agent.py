"""Graphs served by `langgraph dev` / LangGraph Studio (named in langgraph.json).

* `math_agent`, `logic_agent`: fcagent's step-by-step function-calling graph on the calculator and the
  logic task. A typed question (`{"messages": [{"role": "user", "content": "..."}]}`) is answered by the
  model `$FCAGENT_MODEL` names (default: the bundled student, `bundled:smollm2-135m`; any spec: a run
  folder, `provider:model`), decoded under the call grammar so that the chain always reaches an answer. A task problem (`{"problem": {...}}`) the task knows is replayed by the
  reference teacher (its gold chain); any other problem goes to the model.
* `own_agent`: the user's-own-agent story, a `create_agent` warehouse assistant with three tools whose
  model calls go to the student first (`StudentMiddleware`) and to the teacher when the student's reply
  fails validation, every call recorded by `TraceMiddleware` into `$FCAGENT_STORE`
  (default `fcagent-studio.db`). The teacher is `$FCAGENT_TEACHER` (e.g. `openai:gpt-4.1`); offline,
  `WarehouseTeacher`, a rule-based stand-in for a large model that knows this demo's three tools —
  escalations show up in Studio as its turns.

Each name is a graph factory (LangGraph's server calls it with the run's config): importing this file
loads no model and opens no store; the first run builds the graph, and later runs reuse it.
"""

import asyncio
import os
import re
import uuid
from functools import cache
from typing import Any

from langchain.agents import create_agent
from langchain_core.callbacks import CallbackManagerForLLMRun
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, ToolMessage
from langchain_core.outputs import ChatGeneration, ChatResult
from langchain_core.runnables import RunnableConfig
from langchain_core.tools import ToolException, tool
from pydantic import ConfigDict

from fcagent import (
    ReferenceTeacher,
    StudentMiddleware,
    TraceMiddleware,
    build_agent_graph,
    get_task,
    load_chat_model,
)
from fcagent.agent.prompting import tool_schemas
from fcagent.core import keys


@cache
def _student(grammar: bool = False) -> BaseChatModel:
    """The model `$FCAGENT_MODEL` names. `grammar`: decoded under the call grammar unless the spec says
    otherwise (`?constrain=...`): fcagent's graph takes one call per reply, and an untrained small model
    asked a question in words answers in words, so without the grammar a typed question ends at the step
    limit with no answer; with it every reply is a call, and the chain ends at `final_answer`."""
    spec = os.environ.get("FCAGENT_MODEL", "bundled:smollm2-135m")
    return load_chat_model(spec, max_new_tokens=96, **({"constrain": "llguidance"} if grammar else {}))


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


@cache
def _task_graph(spec: str):
    task = get_task(spec)
    model = ProblemOrQuestion(model=_student(grammar=True), teacher=ReferenceTeacher(problems=task.load(limit=2000)))
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


class WarehouseTeacher(BaseChatModel):
    """Offline there is no large model: this stand-in calls the demo's tools the way one would (a SKU →
    `check_stock`, or `reserve` when asked to reserve a number of units; a weekday → `opening_hours`) and
    answers from a tool's result."""

    @property
    def _llm_type(self) -> str:
        return "fcagent-warehouse-teacher"

    @property
    def _identifying_params(self) -> dict[str, Any]:
        return {"model_name": "warehouse-teacher"}

    def bind_tools(self, tools: list[Any], **kwargs: Any):
        return self.bind(tools=tool_schemas(tools), **kwargs)

    def _generate(self, messages: list[BaseMessage], stop: list[str] | None = None,
                  run_manager: CallbackManagerForLLMRun | None = None, **kwargs: Any) -> ChatResult:
        last = messages[-1]
        if isinstance(last, ToolMessage):
            reply = AIMessage(content=f"{last.name or 'The tool'} says: {last.content}")
        else:
            question = next((m.content for m in reversed(messages) if isinstance(m, HumanMessage)), "")
            sku = re.search(r"SKU-\d+", str(question), re.I)
            amount = re.search(r"reserve\D*(\d+)", str(question), re.I)
            day = re.search(r"(mon|tues|wednes|thurs|fri|satur|sun)day", str(question), re.I)
            if sku and amount:
                call = {"name": "reserve", "args": {"sku": sku.group(0).upper(), "quantity": int(amount.group(1))}}
            elif sku:
                call = {"name": "check_stock", "args": {"sku": sku.group(0).upper()}}
            elif day:
                call = {"name": "opening_hours", "args": {"day": day.group(0).capitalize()}}
            else:
                call = None
            reply = AIMessage(content="", tool_calls=[{**call, "id": f"call_{uuid.uuid4().hex[:8]}"}]) if call else \
                AIMessage(content="I can check stock, reserve units and give the opening hours.")
        return ChatResult(generations=[ChatGeneration(message=reply)])


@cache
def _own_agent():
    spec = os.environ.get("FCAGENT_TEACHER")
    teacher = load_chat_model(spec) if spec else WarehouseTeacher()
    store = os.environ.get("FCAGENT_STORE", "fcagent-studio.db")
    return create_agent(teacher, [check_stock, reserve, opening_hours],
                        system_prompt="You are a warehouse assistant. Use the tools to answer.",
                        middleware=[TraceMiddleware(store), StudentMiddleware(_student(), teacher=teacher, store=store)])


# Async factories: building a graph loads a model and opens a store, blocking work that LangGraph's
# server runs off its event loop this way (a sync factory would block it, and `langgraph dev` refuses).
async def math_agent(config: RunnableConfig):
    """fcagent's graph on the calculator task."""
    return await asyncio.to_thread(_task_graph, "math")


async def logic_agent(config: RunnableConfig):
    """fcagent's graph on the logic task."""
    return await asyncio.to_thread(_task_graph, "logic")


async def own_agent(config: RunnableConfig):
    """The warehouse assistant: a user's own `create_agent` agent with the student in front of its teacher."""
    return await asyncio.to_thread(_own_agent)
