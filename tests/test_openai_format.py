"""`fcagent export --format openai`: OpenAI's fine-tuning rows (chat rows with tools, preference rows), checked
against the documented shapes (fcagent's pydantic models of them, and the OpenAI SDK's own message and tool types)."""

from __future__ import annotations

import json

import pytest
from langchain.agents import create_agent
from langchain_core.messages import HumanMessage
from langchain_core.tools import tool
from pydantic import TypeAdapter
from typer.testing import CliRunner
from weather_tools import call, convert, get_weather

from fcagent.agent.testing import ScriptedChatModel
from fcagent.cli.app import app
from fcagent.data.export import export_preference_pairs, export_sft
from fcagent.data.openai_format import ChatExample, PreferenceExample
from fcagent.data.rows import ExportError
from fcagent.tracing.recorder import TraceRecorder
from fcagent.tracing.store import TraceStore


def weather_store(path, tools=(get_weather, convert)) -> TraceStore:
    """Paris asked twice: answered right (labelled good) and with London's weather (labelled bad)."""
    store = TraceStore(path)
    good = ScriptedChatModel(responses=[call("get_weather", {"city": "Paris"}, "run-a-1"),
                                        call("convert", {"celsius": 20}, "run-a-2"), "Sunny and 68F in Paris."])
    bad = ScriptedChatModel(responses=[call("get_weather", {"city": "London"}, "run-b-1"), "Sunny in London."])
    for model, verdict in ((good, True), (bad, False)):
        recorder = TraceRecorder(store)
        create_agent(model, list(tools), system_prompt="You answer weather questions.").invoke(
            {"messages": [HumanMessage("Weather in Paris in F?")]}, {"callbacks": [recorder]})
        recorder.flush()
        store.label(recorder.last_episode_id, verdict, "users' feedback", "feedback")
    return store


def rows(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def sdk_valid(message: dict) -> None:
    """The message as the OpenAI SDK types a Chat Completions message (its iterables consumed, so checked)."""
    from openai.types.chat import ChatCompletionMessageParam

    checked = dict(TypeAdapter(ChatCompletionMessageParam).validate_python(message))
    list(checked.get("tool_calls") or [])


def test_chat_rows_carry_native_calls_tool_messages_tools_and_weights(tmp_path):
    pytest.importorskip("openai")
    from openai.types.chat import ChatCompletionToolParam

    store = weather_store(tmp_path / "t.db")
    result = export_sft(store, tmp_path / "out", format="openai", test_fraction=0.0)
    assert result.path.name == "sft.openai.jsonl" and (tmp_path / "out" / "stats.sft.openai.json").exists()
    (row,) = rows(result.path)
    ChatExample.model_validate(row)
    assert set(row) == {"messages", "tools"}  # nothing OpenAI does not know
    for message in row["messages"]:
        sdk_valid(message)
    for t in row["tools"]:
        TypeAdapter(ChatCompletionToolParam).validate_python(t)
    assert {t["function"]["name"] for t in row["tools"]} == {"get_weather", "convert"}
    roles = [m["role"] for m in row["messages"]]
    assert roles == ["system", "user", "assistant", "tool", "assistant", "tool", "assistant"]
    first_call = row["messages"][2]
    assert first_call["tool_calls"] == [{"id": "call_1", "type": "function",
                                         "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}]
    assert "content" not in first_call  # a reply that only calls
    assert row["messages"][3] == {"role": "tool", "content": "sunny in Paris", "tool_call_id": "call_1"}
    assert row["messages"][5]["tool_call_id"] == "call_2"  # recorded ids renumbered, each answer with its call
    assert [m["weight"] for m in row["messages"] if m["role"] == "assistant"] == [1, 1, 1]  # a whole good chain

    steps = export_sft(store, tmp_path / "steps", format="openai", sft_rows="step", test_fraction=0.0)
    by_length = sorted(rows(steps.path), key=lambda r: len(r["messages"]))
    assert [[m["weight"] for m in r["messages"] if m["role"] == "assistant"] for r in by_length] == [[1], [0, 1], [0, 0, 1]]


def test_preference_rows_have_input_preferred_and_non_preferred_output(tmp_path):
    pytest.importorskip("openai")
    store = weather_store(tmp_path / "t.db")
    result = export_preference_pairs(store, tmp_path / "out", format="openai", test_fraction=0.0)
    assert result.path.name == "pairs.openai.jsonl"
    (row,) = rows(result.path)
    PreferenceExample.model_validate(row)
    assert set(row) == {"input", "preferred_output", "non_preferred_output"}
    assert set(row["input"]) == {"messages", "tools"}
    assert row["input"]["messages"] == [{"role": "system", "content": "You answer weather questions."},
                                        {"role": "user", "content": "Weather in Paris in F?"}]
    for message in [*row["input"]["messages"], *row["preferred_output"], *row["non_preferred_output"]]:
        sdk_valid(message)
    (chosen,), (rejected,) = row["preferred_output"], row["non_preferred_output"]
    assert chosen["tool_calls"][0]["function"] == {"name": "get_weather", "arguments": '{"city": "Paris"}'}
    assert rejected["tool_calls"][0]["function"] == {"name": "get_weather", "arguments": '{"city": "London"}'}
    assert chosen["tool_calls"][0]["id"] == rejected["tool_calls"][0]["id"] == "call_1"  # alternatives, numbered alike
    assert result.stats["by_source"] == {"trajectory": 1}


def test_the_documented_shapes_refuse_what_openai_refuses():
    base = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}
    ChatExample.model_validate(base)
    bad = {
        "an unknown key": {**base, "task": "math"},
        "no assistant turn": {"messages": [{"role": "user", "content": "hi"}]},
        "arguments not a JSON string": {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "tool_calls": [
            {"id": "c", "type": "function", "function": {"name": "f", "arguments": {"a": 1}}}]}]},
        "a tool answer to no call": {"messages": [{"role": "user", "content": "hi"}, {"role": "tool", "content": "x",
                                                                                      "tool_call_id": "c9"},
                                                  {"role": "assistant", "content": "ok"}]},
        "a weight of 2": {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "x", "weight": 2}]},
        "a function name with a dot": {**base, "tools": [{"type": "function", "function": {"name": "math.sqrt"}}]},
    }
    for why, row in bad.items():
        with pytest.raises(ValueError):
            ChatExample.model_validate(row)
            pytest.fail(why)
    pair = {"input": {"messages": [{"role": "user", "content": "hi"}]},
            "preferred_output": [{"role": "assistant", "content": "hello"}],
            "non_preferred_output": [{"role": "assistant", "content": "go away"}]}
    PreferenceExample.model_validate(pair)
    for why, row in {"two outputs": {**pair, "preferred_output": pair["preferred_output"] * 2},
                     "the same output twice": {**pair, "non_preferred_output": pair["preferred_output"]},
                     "a prompt ending with the assistant": {**pair, "input": {"messages": [
                         {"role": "user", "content": "hi"}, {"role": "assistant", "content": "x"}]}}}.items():
        with pytest.raises(ValueError):
            PreferenceExample.model_validate(row)
            pytest.fail(why)


def test_a_row_openai_would_refuse_stops_the_export_naming_the_field(tmp_path):
    @tool("weather.today")
    def dotted(city: str) -> str:
        """Weather for a city."""
        return "sunny"

    store = TraceStore(tmp_path / "t.db")
    model = ScriptedChatModel(responses=[call("weather.today", {"city": "Rome"}, "x1"), "Sunny."])
    create_agent(model, [dotted]).invoke({"messages": [HumanMessage("Rome?")]}, {"callbacks": [TraceRecorder(store)]})
    with pytest.raises(ExportError, match=r"function\.name`: String should match pattern.*OpenAI"):
        export_sft(store, tmp_path / "out", format="openai", unlabelled="good", test_fraction=0.0)
    with pytest.raises(ExportError, match="prompt_style"):
        export_sft(store, tmp_path / "out", format="openai", prompt_style="compact", unlabelled="good")


def test_export_command_writes_openai_rows_beside_trl_ones(tmp_path):
    weather_store(tmp_path / "t.db")
    runner = CliRunner()
    for fmt in ("openai", "trl"):
        result = runner.invoke(app, ["export", "--kind", "sft", "--format", fmt, "--store", str(tmp_path / "t.db"),
                                     "--out", str(tmp_path / "out")], env={"COLUMNS": "200"})
        assert result.exit_code == 0, result.output
    names = {p.name for p in (tmp_path / "out").iterdir()}
    assert {"sft.openai.jsonl", "stats.sft.openai.json", "sft.jsonl", "stats.sft.json", "dataset-sft"} <= names
    assert "messages" in rows(tmp_path / "out" / "sft.jsonl")[0] and "tools" in rows(tmp_path / "out" / "sft.jsonl")[0]
