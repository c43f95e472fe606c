"""`drop_ungrounded`: optional string arguments the conversation never states are removed from a local
model's calls (the function's default applies), in both protocols, streamed or not, in fcagent's graph
and in a user's `create_agent` agent."""

import json

import pytest
from langchain_core.callbacks import BaseCallbackHandler
from langchain_core.messages import AIMessage, HumanMessage, SystemMessage, ToolMessage
from langchain_core.tools import tool

from fcagent import build_agent_graph, load_chat_model
from fcagent.agent.prompting import tool_schemas
from fcagent.core import keys
from fcagent.core.calls import Call, drop_ungrounded_arguments
from fcagent.models.local.chat_model import LocalChatModel, drop_ungrounded_from_reply
from fcagent.models.local.generation import Decoded

WEATHER = [{"type": "function", "function": {"name": "get_weather", "parameters": {
    "type": "object", "properties": {"city": {"type": "string"}, "unit": {"type": "string"},
                                     "days": {"type": "integer"}}, "required": ["city"]}}}]

received: list[dict] = []


@tool
def get_weather(city: str, unit: str = "celsius", days: int = 1) -> str:
    """The weather forecast for a city."""
    received.append({"city": city, "unit": unit, "days": days})
    return f"Sunny in {city}, 21 degrees {unit}."


def test_only_optional_strings_the_conversation_never_states_are_dropped():
    call = Call(name="get_weather", args={"city": "Atlantis", "unit": "kelvin", "days": 3})
    (kept,) = drop_ungrounded_arguments([call], WEATHER, "Weather in Paris?")
    assert kept.args == {"city": "Atlantis", "days": 3}  # required and non-string arguments stay
    assert kept.id == call.id
    said = "What is the weather in  paris in\nKELVIN?"
    (same,) = drop_ungrounded_arguments([Call(name="get_weather", args={"city": "Paris", "unit": "Kelvin"})],
                                        WEATHER, said)
    assert same.args == {"city": "Paris", "unit": "Kelvin"}  # case and spacing aside
    other = Call(name="not_offered", args={"x": "invented"})
    assert drop_ungrounded_arguments([other], WEATHER, "")[0] is other  # not our function: untouched
    (multi,) = drop_ungrounded_arguments([Call(name="get_weather", args={"city": "Paris", "unit": "deg c"})],
                                         WEATHER, "paris, in deg\tC")
    assert multi.args["unit"] == "deg c"


BOOKING = [{"type": "function", "function": {"name": "book", "parameters": {
    "type": "object", "properties": {"hotel": {"type": "string"}, "date": {"type": "string"}}, "required": ["hotel"]}}}]


@pytest.mark.parametrize(("said", "kept"), [
    ("Book the Ritz for April 25th 2023", True),
    ("Book the Ritz on the 25th of April", True),          # no year said: the model's year is not contradicted
    ("Book the Ritz on 25 Apr., 2023", True),
    ("Book the Ritz on 4/25/2023", True),
    ("Book the Ritz on 2023-4-25", True),
    ("Book the Ritz for April 26th 2023", False),          # another day
    ("Book the Ritz for April 25th 2024", False),          # another year
    ("Book the Ritz in April 2023", False),                # no day said: the 25th is invented
])
def test_a_date_the_conversation_states_in_any_common_form_is_kept(said, kept):
    (call,) = drop_ungrounded_arguments([Call(name="book", args={"hotel": "Ritz", "date": "2023-04-25"})], BOOKING, said)
    assert ("date" in call.args) is kept
    (us,) = drop_ungrounded_arguments([Call(name="book", args={"hotel": "Ritz", "date": "04/25/2023"})], BOOKING, said)
    assert ("date" in us.args) is kept


def test_what_counts_as_stated_is_user_and_tool_messages_not_the_system_prompt_nor_the_model():
    reply = json.dumps({"name": "get_weather", "arguments": {"city": "Paris", "unit": "kelvin"}})
    system = SystemMessage("get_weather(city, unit): unit is one of celsius, kelvin")
    earlier = AIMessage("I will use kelvin")
    dropped = drop_ungrounded_from_reply(reply, WEATHER, [system, HumanMessage("Paris?"), earlier])
    assert json.loads(dropped) == {"name": "get_weather", "arguments": {"city": "Paris"}}
    tool_said = ToolMessage("the station reports in kelvin", tool_call_id="c1")
    assert drop_ungrounded_from_reply(reply, WEATHER, [HumanMessage("Paris?"), tool_said]) == reply
    for not_a_call in ("It is sunny.", '{"name": "get_weather", "arguments": {"city": '):
        assert drop_ungrounded_from_reply(not_a_call, WEATHER, [HumanMessage("x")]) == not_a_call


def test_a_bad_option_value_is_a_one_line_error(tiny_model_dir):
    from fcagent.core.errors import UserError

    with pytest.raises(UserError, match="`drop_ungrounded`: Input should be a valid boolean"):
        load_chat_model(f"{tiny_model_dir}?drop_ungrounded=sometimes")


@pytest.fixture
def scripted(monkeypatch, tiny_model_dir):
    """The tiny local model whose decoder returns set texts in turn: the real reply path (prompt,
    grounding, parsing, streaming) around a decode whose output the test chooses."""
    replies: list[str] = []

    def decode(self, request):
        text = replies.pop(0)
        if request.sink:
            for piece in (text[:10], text[10:]):
                request.sink(0, piece)
        return Decoded(texts=[text], prompt_tokens=5, completion_tokens=[7], truncated=[False])

    monkeypatch.setattr(LocalChatModel, "decode", decode)
    model = load_chat_model(f"{tiny_model_dir}?drop_ungrounded=true")
    return model, replies


INVENTED = json.dumps({"name": "get_weather", "arguments": {"city": "Paris", "unit": "kelvin"}})


class Chunks(BaseCallbackHandler):
    def __init__(self):
        self.chunks = []

    def on_llm_new_token(self, token, *, chunk=None, **kw):
        self.chunks.append(chunk.message)


@pytest.mark.parametrize("native", [True, False])
def test_streamed_and_invoked_replies_are_the_same_grounded_reply(scripted, native):
    model, replies = scripted
    question = [HumanMessage("What is the weather in Paris?")]
    bound = model.bind_tools([get_weather]) if native else model
    config = {} if native else {"metadata": {keys.TOOLS: tool_schemas([get_weather])}}
    replies += [INVENTED, INVENTED]
    invoked = bound.invoke(question, config)
    handler = Chunks()
    streamed = bound.invoke(question, {**config, "callbacks": [handler]})
    if native:
        assert invoked.tool_calls[0]["args"] == {"city": "Paris"}
    else:
        assert json.loads(invoked.content) == {"name": "get_weather", "arguments": {"city": "Paris"}}
    total = handler.chunks[0]
    for c in handler.chunks[1:]:
        total = total + c
    assert total.content == invoked.content == streamed.content
    assert [c["args"] for c in streamed.tool_calls] == [c["args"] for c in invoked.tool_calls]


@pytest.mark.parametrize("protocol", ["text", "native"])
def test_fcagents_graph_runs_the_users_tool_with_its_default(scripted, protocol):
    model, replies = scripted
    answer = "It is sunny in Paris."
    # The text protocol ends at a `final_answer` call (its one argument is required: never dropped).
    replies += [INVENTED, answer if protocol == "native" else
                json.dumps({"name": "final_answer", "arguments": {"answer": answer}})]
    received.clear()
    graph = build_agent_graph(model, [get_weather], protocol=protocol, max_steps=3)
    out = graph.invoke({"messages": [HumanMessage("What is the weather in Paris?")]})
    assert received == [{"city": "Paris", "unit": "celsius", "days": 1}]
    assert out["status"] == "answered" and out["final_answer"] == answer


def test_a_users_create_agent_agent_calls_its_tool_without_the_invented_argument(scripted):
    from langchain.agents import create_agent

    model, replies = scripted
    replies += [INVENTED, "It is sunny in Paris."]
    received.clear()
    agent = create_agent(model, tools=[get_weather])
    out = agent.invoke({"messages": [HumanMessage("What is the weather in Paris?")]})
    assert received == [{"city": "Paris", "unit": "celsius", "days": 1}]
    assert out["messages"][-1].content == "It is sunny in Paris."
    replies += [json.dumps({"name": "get_weather", "arguments": {"city": "Paris", "unit": "kelvin"}}), "ok"]
    received.clear()
    agent.invoke({"messages": [HumanMessage("Weather in Paris, in kelvin please")]})
    assert received == [{"city": "Paris", "unit": "kelvin", "days": 1}]  # stated: kept


@pytest.mark.slow
def test_the_real_bundled_model_loses_an_invented_argument():
    """SmolLM2-135M made to start a call with an invented `unit` (a forced reply prefix); it closes the
    call itself. With `drop_ungrounded` the call reaches the caller without it; without, it stays."""
    prefix = '{"name": "get_weather", "arguments": {"city": "Paris", "unit": "kelvin"'
    question = [HumanMessage("What is the weather in Paris?")]
    calls = {}
    for option in ("false", "true"):
        model = load_chat_model(f"bundled:smollm2-135m?drop_ungrounded={option}", response_prefix=prefix,
                                max_new_tokens=12)
        reply = model.bind_tools([get_weather]).invoke(question)
        assert reply.tool_calls, reply
        calls[option] = reply.tool_calls[0]["args"]
    assert calls["false"]["unit"] == "kelvin" and calls["false"]["city"] == "Paris"
    assert "unit" not in calls["true"] and calls["true"]["city"] == "Paris"
