"""The function-calling agent: a LangGraph state machine that calls the model, parses its call,
runs the function, feeds the result back, and stops at `final_answer` or the step limit.

    call_model -> parse -> run_tools -> call_model ... -> finish

Two protocols share every node. `native`: the model is bound to the tools and returns
`AIMessage.tool_calls`; results go back as `ToolMessage`s. `text` (the paper's protocol): the
function descriptions and worked examples are injected into the system prompt, the model writes
the call as text, fcagent parses it, and results go back as `Observation: ...` user turns, which
every chat API and chat template accepts.
"""

from __future__ import annotations

import contextvars
import json
import operator
import threading
from typing import Annotated, Any, Literal, TypedDict

from langchain_core.language_models import BaseChatModel
from langchain_core.messages import (
    AIMessage,
    AnyMessage,
    HumanMessage,
    SystemMessage,
    ToolMessage,
)
from langchain_core.runnables import RunnableConfig
from langchain_core.runnables.config import merge_configs
from langchain_core.tools import BaseTool, StructuredTool
from langgraph.graph import END, START, StateGraph
from langgraph.graph.message import add_messages
from pydantic import BaseModel, ValidationError

from fcagent.agent.prompting import (
    OBSERVATION_PREFIX,
    PROMPT_STYLES,
    render_system_prompt,
    tool_schemas,
)
from fcagent.core import keys
from fcagent.core.calls import Call, CallParseError, parse_calls, schema_error
from fcagent.core.errors import UserError
from fcagent.core.records import StepError
from fcagent.tasks.base import Problem, Task, WorkedExample

__all__ = ["AgentState", "build_agent_graph", "final_answer_tool", "resolve_protocol", "FINAL_ANSWER",
           "problem_input", "PROTOCOL_METADATA_KEY"]

Protocol = Literal["native", "text"]
FINAL_ANSWER = "final_answer"
PROTOCOL_METADATA_KEY = keys.PROTOCOL

# Messages *to the model* (it can act on them); module constants so tests and users can match them.
UNKNOWN_FUNCTION = "Error: `{name}` is not a function. Valid functions are: {valid}. Try again."
INVALID_ARGUMENTS = "Error: invalid arguments for `{name}`: {detail}. Try again."
PARSE_ERROR = ("Error: {detail}. Reply with one function call as JSON, e.g. "
               "{{\"name\": \"{example}\", \"arguments\": {{...}}}}.")
TOOL_ERROR = "Error: `{name}` failed: {detail}"
TOOL_TIMEOUT = "Error: `{name}` did not answer within {seconds:g} s."
TRUNCATED = "\n[... {dropped} more characters cut]"


class AgentState(TypedDict, total=False):
    messages: Annotated[list[AnyMessage], add_messages]
    problem: Problem | None
    steps: int  # model calls made
    calls: Annotated[list[dict[str, Any]], operator.add]  # every parsed call: step, name, args, error
    errors: Annotated[list[dict[str, Any]], operator.add]  # step-level errors: a StepError's fields + step
    pending: list[dict[str, Any]]  # this step's parsed calls (internal)
    final_answer: Any
    status: Literal["running", "answered", "no_call", "step_limit"]
    verdict: dict[str, Any] | None


def final_answer(answer: Any) -> Any:
    """Give the final answer to the problem and stop. `answer` is a number or a short text."""
    return answer


_FINAL_ANSWER_TOOL: BaseTool | None = None


def final_answer_tool() -> BaseTool:
    global _FINAL_ANSWER_TOOL
    if _FINAL_ANSWER_TOOL is None:  # building a tool builds a pydantic model: ~1 ms, so once
        _FINAL_ANSWER_TOOL = StructuredTool.from_function(final_answer, name=FINAL_ANSWER)
    return _FINAL_ANSWER_TOOL


def resolve_protocol(model: BaseChatModel, protocol: str) -> Protocol:
    if protocol in ("native", "text"):
        return protocol  # type: ignore[return-value]
    if protocol != "auto":
        raise UserError(f"`protocol` must be 'auto', 'native' or 'text', got {protocol!r}")
    preferred = getattr(model, "preferred_protocol", None)
    if preferred in ("native", "text"):
        return preferred
    try:
        model.bind_tools([final_answer_tool()])
    except NotImplementedError:
        return "text"
    return "native"


def problem_input(problem: Problem) -> dict[str, Any]:
    """The graph input for a task problem."""
    return {"problem": problem}


def _validate_args(tool: BaseTool, args: dict[str, Any]) -> str | None:
    """Why `args` do not fit the tool's schema, or None. Unknown arguments are refused."""
    schema = tool.args_schema
    if isinstance(schema, type) and issubclass(schema, BaseModel):
        unknown = set(args) - set(schema.model_fields)
        if unknown:
            return f"unknown argument(s) {', '.join(sorted(unknown))}; expected {', '.join(schema.model_fields)}"
        try:
            schema.model_validate(args)
        except ValidationError as exc:
            first = exc.errors()[0]
            loc = ".".join(str(p) for p in first["loc"]) or "arguments"
            return f"`{loc}`: {first['msg']}"
        return None
    if isinstance(schema, dict):
        return schema_error(schema, args)
    return None


def _invoke_with_timeout(tool: BaseTool, args: dict[str, Any], config: RunnableConfig,
                         timeout: float | None) -> Any:
    if not timeout:
        return tool.invoke(args, config)
    box: dict[str, Any] = {}
    ctx = contextvars.copy_context()

    def target() -> None:
        try:
            box["value"] = ctx.run(tool.invoke, args, config)
        except BaseException as exc:  # noqa: BLE001 - carried back to the caller's thread
            box["error"] = exc

    thread = threading.Thread(target=target, daemon=True, name=f"fcagent-tool-{tool.name}")
    thread.start()
    thread.join(timeout)
    if thread.is_alive():
        raise TimeoutError(timeout)
    if "error" in box:
        raise box["error"]
    return box["value"]


def _step_error(step: int, kind: str, detail: str, call: str | None) -> dict[str, Any]:
    """A step-level error as the state (and the recorder's labels) keep it: a StepError plus its step."""
    return {"step": step, **StepError(kind=kind, detail=detail, call=call).model_dump()}


def _json_object(text: Any) -> dict[str, Any] | None:
    if isinstance(text, dict):
        return text
    try:
        value = json.loads(text) if isinstance(text, str) else None
    except json.JSONDecodeError:
        return None
    return value if isinstance(value, dict) else None


def _truncate(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[:limit] + TRUNCATED.format(dropped=len(text) - limit)


def _stringify(value: Any) -> str:
    if isinstance(value, str):
        return value
    try:
        return json.dumps(value, ensure_ascii=False, default=str)
    except (TypeError, ValueError):
        return str(value)


def build_agent_graph(
    model: BaseChatModel,
    tools: list[BaseTool] | None = None,
    *,
    task: Task | None = None,
    protocol: str = "auto",
    examples: list[WorkedExample] | None = None,
    instructions: str | None = None,
    max_steps: int = 8,
    tool_timeout: float | None = 30.0,
    max_observation_chars: int = 2000,
    checkpointer: Any = None,
    name: str = "fcagent",
):
    """Build the step-by-step function-calling agent as a compiled LangGraph graph.

    Input is `{"messages": [...]}` like any LangGraph agent, or `{"problem": Problem}` for a task
    problem (its tools come from `task.tools_for(problem)` and the task's verdict lands in the
    state). `examples=None` uses the task's worked examples in the text protocol; `[]` uses none.
    """
    if not isinstance(model, BaseChatModel):
        raise UserError(f"`model` must be a LangChain chat model (BaseChatModel), got {type(model).__name__}; "
                        "use fcagent.load_chat_model(spec) to make one")
    if tools is None and task is None:
        raise UserError("pass `tools=[...]` or `task=` (whose problems bring their own tools)")
    if max_steps < 1:
        raise UserError(f"`max_steps` must be at least 1, got {max_steps}")
    fixed_tools = list(tools or [])
    proto = resolve_protocol(model, protocol)
    worked = task.examples() if examples is None and task else (examples or [])
    instructions = instructions if instructions is not None else (task.instructions if task else "")
    executes = task.execute if task else True
    # A trained student is served with the prompt style it was trained with (its run folder says which).
    style = getattr(model, "prompt_style", None)
    style = style if style in PROMPT_STYLES else "examples"

    cache: dict[str, dict[str, BaseTool]] = {}  # problem id -> tools; tools cost ~1 ms each to build

    def tools_for(state: AgentState) -> dict[str, BaseTool]:
        problem = state.get("problem")
        key = problem.id if problem is not None else ""
        if key not in cache:
            found = list(fixed_tools)
            if task is not None:
                found += task.tools_for(problem)
            if executes:
                found.append(final_answer_tool())
            if len(cache) > 256:
                cache.clear()
            cache[key] = {t.name: t for t in found}
        return cache[key]

    def start(state: AgentState) -> dict[str, Any]:
        update: dict[str, Any] = {"steps": 0, "status": "running", "pending": []}
        problem = state.get("problem")
        if isinstance(problem, dict):
            problem = Problem.model_validate(problem)
            update["problem"] = problem
        if problem is not None and not state.get("messages"):
            update["messages"] = [HumanMessage(problem.question)]
        elif not state.get("messages"):
            raise UserError("the graph input needs `messages` or `problem`")
        return update

    def call_model(state: AgentState, config: RunnableConfig) -> dict[str, Any]:
        available = tools_for(state)
        problem = state.get("problem")
        system = problem.system if problem else None
        if proto == "text":
            prompt = render_system_prompt(tool_schemas(list(available.values())), instructions=instructions,
                                          examples=worked if style == "examples" else None, system=system, style=style)
            runnable: Any = model
        else:
            prompt = "\n\n".join(p for p in (system, instructions) if p)
            runnable = model.bind_tools(list(available.values()))
        history = [m for m in state["messages"] if not isinstance(m, SystemMessage)]
        leading = [m for m in state["messages"][:1] if isinstance(m, SystemMessage)]
        if prompt:
            leading = [SystemMessage("\n\n".join([*(m.content for m in leading), prompt]))]
        # Step numbers are 1-based and match the `step` of the calls and errors parsed from this reply.
        meta: dict[str, Any] = {keys.PROTOCOL: proto, keys.STEP: state.get("steps", 0) + 1}
        if proto == "text":  # the schemas live only in the prompt text; the recorder keeps them too, and the
            # prompt's parts, so an export can render the same context in the student's style
            meta[keys.TOOLS] = tool_schemas(list(available.values()))
            meta[keys.PROMPT] = {"leading": [m.content for m in state["messages"][:1] if isinstance(m, SystemMessage)],
                                 "system": system, "instructions": instructions, "style": style}
        if problem is not None:
            meta |= {keys.PROBLEM_ID: problem.id, keys.TASK: problem.task}
        response = runnable.invoke([*leading, *history], merge_configs(config, {"metadata": meta}))
        if not isinstance(response, AIMessage):
            response = AIMessage(content=getattr(response, "content", str(response)))
        return {"messages": [response], "steps": state.get("steps", 0) + 1}

    def parse(state: AgentState) -> dict[str, Any]:
        message = state["messages"][-1]
        step = state.get("steps", 0)
        available = tools_for(state)
        pending: list[dict[str, Any]] = []
        if proto == "native":
            calls = [Call(name=tc["name"], args=tc.get("args") or {}, id=tc.get("id") or Call(name="_").id)
                     for tc in message.tool_calls]
            for bad in getattr(message, "invalid_tool_calls", []) or []:
                args = _json_object(bad.get("args"))
                if bad.get("name") and args is not None:  # readable, but refused by the model's own check:
                    calls.append(Call(name=bad["name"], args=args, id=bad.get("id") or Call(name="_").id))
                    continue  # judged here like any other call
                pending.append({"call": Call(name=bad.get("name") or "?", args={}, id=bad.get("id") or "bad"),
                                "kind": "parse_error", "error": f"unreadable call: {bad.get('error')}"})
        else:
            text = message.content if isinstance(message.content, str) else _stringify(message.content)
            try:
                calls = parse_calls(text)
            except CallParseError as exc:
                calls = []
                if executes:
                    pending.append({"call": None, "kind": "parse_error", "error": str(exc)})
        for call in calls:
            tool = available.get(call.name)
            if tool is None:
                pending.append({"call": call, "kind": "unknown_function",
                                "error": UNKNOWN_FUNCTION.format(name=call.name, valid=", ".join(available))})
                continue
            why = _validate_args(tool, call.args)
            pending.append({"call": call, "kind": "invalid_arguments" if why else None,
                            "error": INVALID_ARGUMENTS.format(name=call.name, detail=why) if why else None})
        records = [{"step": step, "name": p["call"].name, "args": p["call"].args, "id": p["call"].id,
                    "error": p["kind"]} for p in pending if p["call"] is not None]
        errors = [_step_error(step, p["kind"], p["error"], p["call"].name if p["call"] else None)
                  for p in pending if p["kind"]]
        update: dict[str, Any] = {"pending": pending, "calls": records, "errors": errors}
        if not pending:
            # No call at all: the model answered in words (native) or, for a task whose functions
            # are only checked (BFCL), made no call; both end the episode.
            update["final_answer"] = message.content
            update["status"] = "answered" if proto == "native" and executes else "no_call"
        elif not executes:
            update["final_answer"] = [{"name": p["call"].name, "arguments": p["call"].args}
                                      for p in pending if p["call"] is not None]
            update["status"] = "answered"
        return update

    def run_tools(state: AgentState, config: RunnableConfig) -> dict[str, Any]:
        available = tools_for(state)
        step = state.get("steps", 0)
        outputs: list[tuple[Call | None, str]] = []
        errors: list[dict[str, Any]] = []
        update: dict[str, Any] = {}
        for item in state.get("pending", []):
            call: Call | None = item["call"]
            if item["kind"]:
                detail = item["error"]
                if item["kind"] == "parse_error":
                    detail = PARSE_ERROR.format(detail=detail, example=next(iter(available), "name"))
                outputs.append((call, detail))
                continue
            assert call is not None
            if call.name == FINAL_ANSWER:
                update["final_answer"] = call.args.get("answer")
                update["status"] = "answered"
                outputs.append((call, _stringify(call.args.get("answer"))))
                continue
            try:
                result = _invoke_with_timeout(available[call.name], call.args, config, tool_timeout)
                outputs.append((call, _truncate(_stringify(result), max_observation_chars)))
            except TimeoutError:
                outputs.append((call, TOOL_TIMEOUT.format(name=call.name, seconds=tool_timeout)))
                errors.append(_step_error(step, "timeout", f"no answer in {tool_timeout} s", call.name))
            except Exception as exc:  # noqa: BLE001 - a failing tool is an observation, not a crash
                detail = f"{type(exc).__name__}: {exc}"
                outputs.append((call, TOOL_ERROR.format(name=call.name, detail=_truncate(detail, 500))))
                errors.append(_step_error(step, "tool_error", detail, call.name))
        if proto == "native":
            messages: list[AnyMessage] = [ToolMessage(content=out, tool_call_id=c.id if c else "none",
                                                      name=c.name if c else None) for c, out in outputs]
        else:
            if len(outputs) == 1:
                body = outputs[0][1]
            else:
                body = "\n".join(f"{c.name if c else 'error'}: {out}" for c, out in outputs)
            messages = [HumanMessage(OBSERVATION_PREFIX + body)]
        if "status" not in update and step >= max_steps:
            update["status"] = "step_limit"
        return {**update, "messages": messages, "errors": errors, "pending": []}

    def finish(state: AgentState) -> dict[str, Any]:
        problem = state.get("problem")
        if problem is None or task is None:
            return {}
        calls = [Call(name=c["name"], args=c["args"], id=c["id"]) for c in state.get("calls", [])
                 if c["name"] != FINAL_ANSWER]
        verdict = task.verify(problem, final_answer=state.get("final_answer"), calls=calls)
        if state.get("status") == "step_limit" and verdict.success:
            verdict = verdict.model_copy(update={"success": False, "reason": "step limit reached"})
        return {"verdict": verdict.model_dump()}

    def after_parse(state: AgentState) -> str:
        return "finish" if state.get("status") in ("answered", "no_call") else "run_tools"

    def after_tools(state: AgentState) -> str:
        return "finish" if state.get("status") in ("answered", "step_limit") else "call_model"

    builder = StateGraph(AgentState)
    builder.add_node("start", start)
    builder.add_node("call_model", call_model)
    builder.add_node("parse", parse)
    builder.add_node("run_tools", run_tools)
    builder.add_node("finish", finish)
    builder.add_edge(START, "start")
    builder.add_edge("start", "call_model")
    builder.add_edge("call_model", "parse")
    builder.add_conditional_edges("parse", after_parse, ["finish", "run_tools"])
    builder.add_conditional_edges("run_tools", after_tools, ["finish", "call_model"])
    builder.add_edge("finish", END)
    graph = builder.compile(checkpointer=checkpointer, name=name)
    graph.fcagent_protocol = proto  # type: ignore[attr-defined]
    return graph
