import time

import pytest
from langchain_core.messages import AIMessage, HumanMessage, ToolMessage
from langchain_core.tools import tool
from langgraph.checkpoint.sqlite import SqliteSaver

from fcagent import UserError, build_agent_graph, get_task
from fcagent.agent.graph import AgentState
from fcagent.agent.testing import ScriptedChatModel


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


def test_state_accumulates_every_step_s_calls_and_errors_and_keeps_the_messages():
    """The state's reducers: `messages` appends (add_messages), `calls` and `errors` accumulate over steps."""
    model = ScriptedChatModel(responses=[native_call("nope", {}, id="a"), native_call("add", {"a": 2, "b": 3}, id="b"),
                                         native_call("final_answer", {"answer": 5}, id="c")])
    out = run(model, [add])
    assert [c["name"] for c in out["calls"]] == ["nope", "add", "final_answer"]
    assert [c["step"] for c in out["calls"]] == [1, 2, 3]
    assert [(e["step"], e["kind"]) for e in out["errors"]] == [(1, "unknown_function")]
    assert [type(m).__name__ for m in out["messages"]] == ["HumanMessage", "AIMessage", "ToolMessage", "AIMessage",
                                                           "ToolMessage", "AIMessage", "ToolMessage"]
    assert set(AgentState.__annotations__) >= set(out) - {"pending"}


def _studio_module(root, name="graphs_agent"):
    import importlib.util

    mod_spec = importlib.util.spec_from_file_location(name, root / "graphs" / "agent.py")
    module = importlib.util.module_from_spec(mod_spec)
    mod_spec.loader.exec_module(module)
    return module


def test_importing_the_studio_graphs_creates_no_file(tmp_path, monkeypatch):
    """LangGraph's server imports graphs/agent.py at start: nothing may be written then (a store opened at
    import once left a lock file in the repository)."""
    from pathlib import Path

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("FCAGENT_STORE", raising=False)
    module = _studio_module(Path(__file__).resolve().parents[1])
    assert list(tmp_path.iterdir()) == []
    assert all(callable(getattr(module, name)) for name in ("math_agent", "logic_agent", "own_agent"))


@pytest.mark.slow
def test_graphs_named_in_langgraph_json_build(tmp_path, monkeypatch):
    import asyncio
    import json
    from pathlib import Path

    monkeypatch.setenv("FCAGENT_STORE", str(tmp_path / "studio.db"))
    root = Path(__file__).resolve().parents[1]
    spec = json.loads((root / "langgraph.json").read_text())
    module = _studio_module(root)
    assert set(spec["graphs"]) == {"math_agent", "logic_agent", "own_agent"}
    for name, target in spec["graphs"].items():
        path, attr = target.split(":")
        assert path == "./graphs/agent.py"
        graph = asyncio.run(getattr(module, attr)({}))
        nodes = graph.get_graph().nodes
        assert hasattr(graph, "invoke") and ("call_model" in nodes or "model" in nodes)
        assert asyncio.run(getattr(module, attr)({})) is graph  # built once, reused by every run
