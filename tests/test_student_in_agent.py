"""The bundled student as the model of a user's `create_agent` agent: what `invoke` returns is what
a streamed graph (`stream_mode="messages"`, as Studio and chat UIs use) hands the agent and the UI."""

from __future__ import annotations

import pytest
from langchain.agents import create_agent
from langchain_core.messages import AIMessage, AIMessageChunk, HumanMessage
from langchain_core.tools import tool

from fcagent import load_chat_model


@tool(return_direct=True)
def get_stock(sku: str) -> int:
    """Units in stock of a product, by its SKU code."""
    return 42


QUESTION = {"messages": [HumanMessage("How many units of SKU-7 are in stock?")]}


def _calls(message: AIMessage) -> list[tuple[str, dict]]:
    return [(c["name"], c["args"]) for c in message.tool_calls]


def _invoke_and_stream(agent):
    invoked = agent.invoke(QUESTION)
    chunks, final = [], None
    for mode, data in agent.stream(QUESTION, stream_mode=["messages", "values"]):
        if mode == "messages" and isinstance(data[0], AIMessageChunk):
            chunks.append(data[0])
        elif mode == "values":
            final = data
    return invoked, chunks, final


@pytest.fixture(scope="module")
def student(smol_dir):
    return load_chat_model("bundled:smollm2-135m", max_new_tokens=48, response_prefix='{"name": "')


@pytest.mark.slow
def test_streamed_agent_gets_the_invoked_tool_calls(student):
    agent = create_agent(student.model_copy(update={"constrain": "llguidance"}), [get_stock])
    invoked, chunks, final = _invoke_and_stream(agent)
    reply = invoked["messages"][1]
    assert reply.tool_calls and reply.tool_calls[0]["name"] == "get_stock"
    streamed_reply = final["messages"][1]
    assert _calls(streamed_reply) == _calls(reply) and streamed_reply.content == reply.content
    total = chunks[0]
    for c in chunks[1:]:
        total = total + c
    assert _calls(total) == _calls(reply)  # what a UI adds up from the chunks
    assert final["messages"][-1].content == "42" == invoked["messages"][-1].content  # the tool ran both times


@pytest.mark.slow
def test_an_invalid_call_reaches_the_agent_as_invalid_tool_calls(student):
    # The untrained model copies the function's schema instead of calling it: not a call.
    invoked, _, final = _invoke_and_stream(create_agent(student, [get_stock]))
    for state in (invoked, final):
        reply = state["messages"][-1]
        assert isinstance(reply, AIMessage) and reply.tool_calls == []
        (bad,) = reply.invalid_tool_calls
        assert bad["error"].startswith("parse_error") and bad["args"] == reply.content
    assert final["messages"][-1].invalid_tool_calls[0]["args"] == invoked["messages"][-1].invalid_tool_calls[0]["args"]


@pytest.mark.slow
def test_text_answers_stream_token_by_token_and_add_up(student):
    free = student.model_copy(update={"response_prefix": ""})
    agent = create_agent(free, [])
    invoked, chunks, final = _invoke_and_stream(agent)
    assert len(chunks) > 3  # tokens, not one block
    assert "".join(c.content for c in chunks) == invoked["messages"][-1].content == final["messages"][-1].content
