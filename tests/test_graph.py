import time

import pytest
from langchain_core.messages import AIMessage, HumanMessage, ToolMessage
from langchain_core.tools import tool
from langgraph.checkpoint.sqlite import SqliteSaver

from fcagent import UserError, build_agent_graph, get_task
from fcagent.graph import AgentState
from fcagent.testing import ScriptedChatModel


@tool
def add(a: int, b: int) -> int:
    """Add two integers."""
    return a + b


@tool
def explode(x: str) -> str:
    """Always fails."""
    raise RuntimeError("kaboom")


@tool
def slow(x: str) -> str:
    """Hangs."""
    time.sleep(5)
    return x


@tool
def huge(x: str) -> str:
    """Returns a lot."""
    return "y" * 100_000


def native_call(name, args, id="c1"):
    return AIMessage(content="", tool_calls=[{"name": name, "args": args, "id": id}])


def run(model, tools, **kw):
    graph = build_agent_graph(model, tools, **kw)
    return graph.invoke({"messages": [HumanMessage("what is 2+3?")]})


def test_native_protocol_runs_tool_then_final_answer():
    model = ScriptedChatModel(responses=[native_call("add", {"a": 2, "b": 3}), native_call("final_answer", {"answer": 5}, "c2")])
    out = run(model, [add])
    assert out["final_answer"] == 5 and out["status"] == "answered" and out["steps"] == 2
    assert isinstance(out["messages"][2], ToolMessage) and out["messages"][2].content == "5"
    assert {t["function"]["name"] for t in model.seen_tools[0]} == {"add", "final_answer"}
    assert out["errors"] == []


def test_text_protocol_injects_functions_and_examples_and_parses_text():
    model = ScriptedChatModel(native=False, responses=['add(a=2, b=3)', '{"name": "final_answer", "arguments": {"answer": 5}}'])
    task = get_task("math")
    graph = build_agent_graph(model, task=task)
    assert graph.fcagent_protocol == "text"
    out = graph.invoke({"messages": [HumanMessage("what is 2+3?")]})
    system = model.seen_messages[0][0].content
    assert '"name": "multiply"' in system and "Example 1:" in system and task.instructions in system
    assert out["messages"][2].content == "Observation: 5" and out["final_answer"] == 5


def test_native_without_calls_is_a_final_answer_in_words():
    out = run(ScriptedChatModel(responses=["It is 5."]), [add])
    assert out["final_answer"] == "It is 5." and out["status"] == "answered"


@pytest.mark.parametrize("reply,kind", [
    ("I think the answer is five", "parse_error"),
    ('{"name": "add", "arguments": {"a": 2', "parse_error"),
    ('{"name": "mul", "arguments": {"a": 2, "b": 3}}', "unknown_function"),
    ('{"name": "add", "arguments": {"a": "two", "b": 3}}', "invalid_arguments"),
    ('{"name": "add", "arguments": {"a": 2, "b": 3, "c": 4}}', "invalid_arguments"),
    ('{"name": "explode", "arguments": {"x": "a"}}', "tool_error"),
])
def test_bad_model_output_becomes_an_observation_never_a_crash(reply, kind):
    model = ScriptedChatModel(native=False, responses=[reply, '{"name": "final_answer", "arguments": {"answer": 5}}'])
    out = run(model, [add, explode])
    assert [e["kind"] for e in out["errors"]] == [kind]
    observation = out["messages"][2].content
    assert observation.startswith("Observation: Error")
    assert out["final_answer"] == 5  # the run went on and finished
    if kind == "unknown_function":
        assert "Valid functions are: add, explode, final_answer" in observation


def test_native_unknown_function_and_bad_args_answer_every_tool_call_id():
    msg = AIMessage(content="", tool_calls=[{"name": "nope", "args": {}, "id": "a"}, {"name": "add", "args": {"a": 1}, "id": "b"}])
    out = run(ScriptedChatModel(responses=[msg, native_call("final_answer", {"answer": 1}, "c")]), [add])
    tool_msgs = [m for m in out["messages"] if isinstance(m, ToolMessage)][:2]
    assert [m.tool_call_id for m in tool_msgs] == ["a", "b"]
    assert {e["kind"] for e in out["errors"]} == {"unknown_function", "invalid_arguments"}


def test_tool_timeout_and_huge_output():
    model = ScriptedChatModel(native=False, responses=['slow(x="a")', 'huge(x="b")', 'final_answer(answer=1)'])
    started = time.perf_counter()
    out = run(model, [slow, huge], tool_timeout=0.3, max_observation_chars=500)
    assert time.perf_counter() - started < 4
    assert out["errors"][0]["kind"] == "timeout" and "did not answer within 0.3 s" in out["messages"][2].content
    assert len(out["messages"][4].content) < 600 and "more characters cut" in out["messages"][4].content
    assert out["final_answer"] == 1


def test_step_limit_stops_the_chain():
    model = ScriptedChatModel(native=False, responses=['add(a=1, b=1)'])
    out = run(model, [add], max_steps=3)
    assert out["status"] == "step_limit" and out["steps"] == 3 and out.get("final_answer") is None


def test_step_limit_is_a_failed_verdict_for_a_task_problem():
    task = get_task("math")
    problem = task.load(limit=1)[0]
    model = ScriptedChatModel(native=False, responses=['add(a=1, b=1)'])
    out = build_agent_graph(model, task=task, max_steps=2).invoke({"problem": problem})
    assert out["verdict"]["success"] is False


def test_same_graph_runs_with_problem_input_and_checkpointer(tmp_path):
    task = get_task("math")
    problem = task.load(limit=1)[0]
    replies = [f'{{"name": "{s[0].name}", "arguments": {__import__("json").dumps(s[0].args)}}}' for s in problem.gold_chain]
    model = ScriptedChatModel(native=False, responses=replies)
    with SqliteSaver.from_conn_string(str(tmp_path / "ck.db")) as saver:
        graph = build_agent_graph(model, task=task, checkpointer=saver)
        cfg = {"configurable": {"thread_id": "t1"}}
        out = graph.invoke({"problem": problem.model_dump()}, cfg)
        assert out["verdict"] == {"success": True, "reason": "correct answer"}
        assert graph.get_state(cfg).values["final_answer"] == problem.answer


def test_builder_errors_name_the_argument():
    with pytest.raises(UserError, match="`model` must be a LangChain chat model"):
        build_agent_graph("gpt", [add])
    with pytest.raises(UserError, match="`tools=\\[...\\]` or `task=`"):
        build_agent_graph(ScriptedChatModel(responses=["x"]))
    with pytest.raises(UserError, match="`protocol`"):
        build_agent_graph(ScriptedChatModel(responses=["x"]), [add], protocol="xml")


def test_state_is_a_typed_dict_with_messages_reducer():
    assert "messages" in AgentState.__annotations__ and "final_answer" in AgentState.__annotations__


def test_graphs_named_in_langgraph_json_load():
    import importlib.util
    import json
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    spec = json.loads((root / "langgraph.json").read_text())
    assert spec["graphs"]
    for name, target in spec["graphs"].items():
        path, attr = target.split(":")
        mod_spec = importlib.util.spec_from_file_location(f"graphs_{name}", root / path)
        module = importlib.util.module_from_spec(mod_spec)
        mod_spec.loader.exec_module(module)
        graph = getattr(module, attr)
        nodes = graph.get_graph().nodes
        assert hasattr(graph, "invoke") and ("call_model" in nodes or "model" in nodes)
