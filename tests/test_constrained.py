"""Grammar-constrained decoding: a random tiny model (which never writes a call on its own) is made to
write one schema-valid call, with each backend, alone and batched with other prompts."""

import json
from concurrent.futures import ThreadPoolExecutor

import pytest
from langchain_core.messages import HumanMessage

from fcagent import load_chat_model
from fcagent.agent.prompting import assistant_text
from fcagent.core.calls import calls_error, parse_calls
from fcagent.core.errors import UserError
from fcagent.models.local.constrained import BACKENDS, Constrainer, call_schema

pytest.importorskip("llguidance")  # the default backend (`fcagent[constrained]`, in `all`)


def _installed(backend: str):
    """xgrammar is in `fcagent[bench]` only (it pulls ~1 GB of triton): its cases run where it is installed."""
    import importlib.util

    missing = importlib.util.find_spec(backend) is None
    return pytest.param(backend, marks=pytest.mark.skipif(missing, reason=f"{backend} not installed"))


ALL_BACKENDS = [_installed(b) for b in BACKENDS]

AREA = {"type": "function", "function": {"name": "circle_area", "description": "Area of a circle.", "parameters": {
    "type": "object", "properties": {"radius": {"type": "number"}, "unit": {"type": "string", "enum": ["cm", "m"]}},
    "required": ["radius"]}}}
# Only enums and booleans: a finite language, so every constrained reply ends well inside the token limit.
LIGHT = {"type": "function", "function": {"name": "set_light", "description": "Switch a light.", "parameters": {
    "type": "object", "properties": {"room": {"type": "string", "enum": ["kitchen", "hall"]}, "on": {"type": "boolean"}},
    "required": ["room", "on"]}}}
FAN = {"type": "function", "function": {"name": "set_fan", "description": "Set the fan.", "parameters": {
    "type": "object", "properties": {"speed": {"type": "integer", "enum": [1, 2, 3]}}, "required": ["speed"]}}}
FLIGHT = {"type": "function", "function": {"name": "book_flight", "description": "Book a flight.", "parameters": {
    "type": "object", "properties": {"origin": {"type": "string"}, "seats": {"type": "integer"}},
    "required": ["origin", "seats"]}}}


def _assert_valid_call(text: str, tools: list[dict]) -> None:
    calls = parse_calls(text)
    assert len(calls) == 1
    assert calls_error([{"name": calls[0].name, "args": calls[0].args}], tools) is None


@pytest.mark.slow
@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_call_grammar_accepts_exactly_the_calls_the_tools_define(smol_dir, backend):
    from transformers import AutoTokenizer

    grammar = Constrainer(AutoTokenizer.from_pretrained(smol_dir), backend)
    tools = [AREA, FLIGHT]
    for right in ({"name": "circle_area", "arguments": {"radius": 2}},
                  {"name": "circle_area", "arguments": {"radius": 2.5, "unit": "m"}},
                  {"name": "book_flight", "arguments": {"origin": "Oslo", "seats": 2}}):
        assert grammar.accepts(tools, json.dumps(right)), right
    for wrong in ({"name": "circle_area", "arguments": {"radius": "2"}},        # a string for a number
                  {"name": "circle_area", "arguments": {}},                      # required argument missing
                  {"name": "circle_area", "arguments": {"radius": 2, "r": 1}},   # an argument it does not take
                  {"name": "circle_area", "arguments": {"radius": 2, "unit": "km"}},  # not in the enum
                  {"name": "book_flight", "arguments": {"origin": "Oslo", "seats": 1.5}},  # not an integer
                  {"name": "fly", "arguments": {}}):                             # unknown function
        assert not grammar.accepts(tools, json.dumps(wrong)), wrong
    assert not grammar.accepts(tools, '{"name":"circle_area","arguments":{"radius":2}}')  # not the trained layout
    with pytest.raises(UserError):
        call_schema([])


@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_a_many_calls_grammar_also_takes_a_list_of_calls(smol_dir, backend):
    """BFCL's parallel categories answer with several calls in one reply: `format_calls` writes a list."""
    from transformers import AutoTokenizer

    from fcagent.core.calls import Call, format_calls

    grammar = Constrainer(AutoTokenizer.from_pretrained(smol_dir), backend)
    tools = [AREA, FLIGHT]
    two = format_calls([Call(name="circle_area", args={"radius": 2}), Call(name="book_flight",
                                                                          args={"origin": "Oslo", "seats": 2})])
    one = format_calls([Call(name="circle_area", args={"radius": 2})])
    assert two.startswith("[") and grammar.accepts(tools, two, many=True) and grammar.accepts(tools, one, many=True)
    assert not grammar.accepts(tools, two)  # one call a reply, by default
    assert not grammar.accepts(tools, "[]", many=True)  # a list holds at least one call
    bad = format_calls([Call(name="circle_area", args={"radius": 2}), Call(name="circle_area", args={"radius": "2"})])
    assert not grammar.accepts(tools, bad, many=True)  # every call in the list is checked


@pytest.mark.slow
def test_a_many_calls_model_decodes_schema_valid_calls(tiny_model_dir, smol_dir):
    from transformers import AutoTokenizer

    model = load_chat_model(f"{tiny_model_dir}?constrain=llguidance&constrain_calls=many", max_new_tokens=96)
    assert model.constrain_calls == "many"
    grammar = Constrainer(AutoTokenizer.from_pretrained(smol_dir), "llguidance")
    unconstrained = load_chat_model(str(tiny_model_dir), max_new_tokens=96)
    question = [HumanMessage("kitchen light on, fan to two")]
    assert not grammar.accepts([LIGHT, FAN], assistant_text(unconstrained.bind_tools([LIGHT, FAN]).invoke(question)),
                               complete=False, many=True)  # on its own the random model writes no call
    for g in model.generate([question], tools=[LIGHT, FAN], n=4, temperature=1.0).generations[0]:
        text, stopped = assistant_text(g.message), g.message.response_metadata["finish_reason"] != "length"
        assert grammar.accepts([LIGHT, FAN], text, complete=stopped, many=True), text  # a list may run to the limit
        if stopped:
            calls = parse_calls(text)
            assert calls and all(calls_error([{"name": c.name, "args": c.args}], [LIGHT, FAN]) is None for c in calls)
    with pytest.raises(UserError, match="constrain_calls"):
        load_chat_model(f"{tiny_model_dir}?constrain=llguidance&constrain_calls=several")


@pytest.mark.slow
@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_constrained_replies_are_schema_valid_calls(tiny_model_dir, backend):
    model = load_chat_model(str(tiny_model_dir), max_new_tokens=64, constrain=backend, response_prefix='{"name": "')
    unconstrained = load_chat_model(str(tiny_model_dir), max_new_tokens=64, response_prefix='{"name": "')
    question = [HumanMessage("Turn on the kitchen light")]
    # The random model on its own does not produce a valid call...
    assert not unconstrained.bind_tools([LIGHT, FAN]).invoke(question).tool_calls
    # ...constrained, its greedy and sampled replies all are.
    greedy = model.bind_tools([LIGHT, FAN]).invoke(question)
    _assert_valid_call(assistant_text(greedy), [LIGHT, FAN])
    assert greedy.tool_calls[0]["name"] in ("set_light", "set_fan") and not greedy.invalid_tool_calls
    sampled = model.generate([question], tools=[LIGHT, FAN], n=3, temperature=1.0).generations[0]
    for g in sampled:
        _assert_valid_call(assistant_text(g.message), [LIGHT, FAN])


def test_streamed_replies_are_constrained_too(tiny_model_dir):
    model = load_chat_model(str(tiny_model_dir), max_new_tokens=64, constrain="llguidance", response_prefix='{"name": "')
    (message,) = list(model.bind_tools([LIGHT]).stream([HumanMessage("hall light")]))
    _assert_valid_call(assistant_text(message), [LIGHT])


@pytest.mark.slow
def test_replies_cut_at_the_token_limit_are_still_the_start_of_a_valid_call(tiny_model_dir, smol_dir):
    """Free strings and numbers let a random model run on; whatever it wrote stays inside the grammar."""
    from transformers import AutoTokenizer

    model = load_chat_model(str(tiny_model_dir), max_new_tokens=24, constrain="llguidance",
                            response_prefix='{"name": "')
    grammar = Constrainer(AutoTokenizer.from_pretrained(smol_dir), "llguidance")
    for g in model.generate([[HumanMessage("fly")]], tools=[AREA, FLIGHT], n=3, temperature=1.0).generations[0]:
        complete = g.message.response_metadata["finish_reason"] != "length"
        text = assistant_text(g.message)
        assert grammar.accepts([AREA, FLIGHT], text, complete=complete), text


def test_batched_rows_each_follow_their_own_tools(tiny_model_dir):
    model = load_chat_model(str(tiny_model_dir), max_new_tokens=64, constrain="llguidance",
                            response_prefix='{"name": "')
    model._batcher._overlap = True  # a batch leader waits for the other threads' calls
    jobs = [([LIGHT], "kitchen light on"), ([FAN], "fan to two"), ([LIGHT], "hall light off"), ([FAN], "fan max")]
    with ThreadPoolExecutor(max_workers=4) as pool:
        replies = list(pool.map(lambda job: model.bind_tools(job[0]).invoke([HumanMessage(job[1])]), jobs))
    for (tools, _), reply in zip(jobs, replies):
        _assert_valid_call(assistant_text(reply), tools)
        assert reply.tool_calls[0]["name"] == tools[0]["function"]["name"]


@pytest.mark.slow
def test_text_protocol_graph_constrains_with_the_tools_in_the_prompt(tiny_model_dir, smol_dir):
    """The paper's text protocol binds no tools: the grammar comes from the schemas in the run's metadata."""
    from transformers import AutoTokenizer

    from fcagent import build_agent_graph, get_task
    from fcagent.agent.prompting import tool_schemas

    task = get_task("math")
    model = load_chat_model(f"{tiny_model_dir}?constrain=llguidance&max_new_tokens=32", response_prefix='{"name": "')
    assert model.constrain == "llguidance" and model.model_name.endswith("?constrain=llguidance&max_new_tokens=32")
    graph = build_agent_graph(model, task=task, protocol="text", max_steps=2)
    problem = task.load(split="test", limit=1)[0]
    state = graph.invoke({"problem": problem, "messages": [HumanMessage(problem.question)]})
    replies = [m for m in state["messages"] if m.type == "ai"]
    grammar = Constrainer(AutoTokenizer.from_pretrained(smol_dir), "llguidance")
    tools = tool_schemas(task.tools_for(problem))
    assert replies
    for reply in replies:
        assert grammar.accepts(tools, reply.content, complete=reply.response_metadata["finish_reason"] == "stop")


def test_bad_constrain_settings_are_clear_errors(tiny_model_dir):
    with pytest.raises(UserError, match="constrain"):
        load_chat_model(f"{tiny_model_dir}?constrain=outlines")
    with pytest.raises(UserError, match="unknown setting"):
        load_chat_model(f"{tiny_model_dir}?contrain=llguidance")
    with pytest.raises(UserError, match="not key=value"):
        load_chat_model(f"{tiny_model_dir}?constrain")
