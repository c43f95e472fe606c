"""`fcagent serve` keeps OpenAI's Chat Completions contract: what it cannot honour is a 400 naming the
field, every number is range-checked, errors come in OpenAI's shape, and no single request can take the
server down. (In-process through FastAPI's TestClient; the official client's tests start a server.)"""

import json

import pytest
from fastapi.testclient import TestClient

from fcagent.models.loading import load_chat_model
from fcagent.serving.app import ServeSettings, create_app
from fcagent.tracing.store import TraceStore

USER = [{"role": "user", "content": "hi"}]
TOOL = {"type": "function", "function": {"name": "get_stock", "description": "Units in stock.", "parameters": {
    "type": "object", "properties": {"sku": {"type": "string"}}, "required": ["sku"]}}}


@pytest.fixture(scope="module")
def client(tiny_model_dir, tmp_path_factory):
    store = TraceStore(tmp_path_factory.mktemp("serve") / "t.db")
    app = create_app(load_chat_model(str(tiny_model_dir), max_new_tokens=8), store=store,
                     settings=ServeSettings(max_prompt_tokens=2000, max_tokens_limit=64))
    with TestClient(app) as c:
        yield c


def _post(client, body=None, **kw):
    return client.post("/v1/chat/completions", json=body, **kw)


@pytest.mark.parametrize(("body", "param"), [
    ({"messages": USER, "frobnicate": 1}, "frobnicate"),
    ({"messages": USER, "stream_options": {"include_usage": True}}, "stream_options"),
    ({"messages": USER, "tool_choice": "required"}, "tool_choice"),
    ({"messages": USER, "tools": [TOOL], "tool_choice": "sometimes"}, "tool_choice"),
    ({"messages": USER, "tools": [TOOL], "tool_choice": {"type": "function", "function": {"name": "nope"}}},
     "tool_choice"),
    ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "http://x/a.png"}}]}]},
     "messages.0.content.0.type"),
    ({"messages": [{"role": "user", "content": "hi", "audio": {"id": "a"}}]}, "messages.0.audio"),
    ({"messages": USER, "audio": {"voice": "alloy"}}, "audio"),
    ({"messages": USER, "max_completion_tokens": 65}, "max_completion_tokens"),
    ({"messages": USER, "max_tokens": 65}, "max_tokens"),
    ({"messages": USER, "seed": 2**70}, "seed"),
    ({"messages": USER, "stream": "yes"}, "stream"),
    ({"messages": USER, "temperature": 2.5}, "temperature"),
    ({"messages": USER, "top_logprobs": 3}, "top_logprobs"),
    ({"messages": USER, "logprobs": True, "top_logprobs": 21}, "top_logprobs"),
    ({"messages": USER, "presence_penalty": 0.5}, "presence_penalty"),
    ({"messages": USER, "logit_bias": {"42": 10}}, "logit_bias"),
    ({"messages": USER, "n": 9}, "n"),
    ({"messages": USER, "response_format": {"type": "json_schema"}}, "response_format"),
    ({"messages": USER, "functions": [{"name": "f"}]}, "functions"),
])
def test_what_the_server_cannot_honour_is_a_400_naming_the_field(client, body, param):
    response = _post(client, body)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"] == param and error["type"] == "invalid_request_error" and error["message"]


def test_errors_come_in_openais_shape_for_every_status(client):
    for response, status in ((client.get("/v1/nothing"), 404), (client.get("/v1/chat/completions"), 405),
                             (client.post("/v1/chat/completions", content=b"{nope"), 400),
                             (_post(client, {"model": "gpt-4o", "messages": USER}), 404)):
        assert response.status_code == status
        error = response.json()["error"]
        assert set(error) == {"message", "type", "param", "code"} and error["message"], response.text
    assert _post(client, {"model": "gpt-4o", "messages": USER}).json()["error"]["code"] == "model_not_found"


def test_no_single_request_can_take_the_server_down(client):
    many_tools = [{"type": "function", "function": {"name": f"f{i}", "parameters": {"type": "object"}}}
                  for i in range(1000)]
    deep = '{"type": "object", "properties": {"x": ' * 5000 + '{"type": "object"}' + "}}" * 5000
    cases = [  # (the body as JSON text: the nested ones are deeper than Python's json can even write)
        (json.dumps({"messages": USER, "tools": many_tools}), "tools"),
        ('{"messages": [{"role": "user", "content": "hi"}], "tools": [{"type": "function", "function": '
         '{"name": "f", "parameters": ' + deep + "}}]}", None),
        ('{"messages": [{"role": "user", "content": ' + "[" * 20_000 + "]" * 20_000 + "}]}", None),
        (json.dumps({"messages": [{"role": "user", "content": "word " * 5000}]}), "messages"),
    ]
    for body, param in cases:
        response = client.post("/v1/chat/completions", content=body.encode(),
                               headers={"content-type": "application/json"})
        assert response.status_code == 400, response.text[:300]
        assert param is None or response.json()["error"]["param"] == param
    assert _post(client, {"messages": USER}).status_code == 200  # and it still answers


def test_the_response_names_the_served_model_and_feedback_takes_whole_ids_only(client):
    reply = _post(client, {"model": "fcagent-student", "messages": USER}).json()
    assert reply["model"] == "fcagent-student"
    assert [m["id"] for m in client.get("/v1/models").json()["data"]] == ["fcagent-student"]
    short = reply["id"][: len("chatcmpl-") + 6]
    assert client.post("/v1/feedback", json={"id": short, "label": "bad"}).status_code == 404
    whole = client.post("/v1/feedback", json={"id": reply["id"], "label": "good"})
    assert whole.status_code == 200 and whole.json()["episode"] == reply["id"].removeprefix("chatcmpl-")


def test_a_blank_api_key_is_refused():
    from pydantic import ValidationError

    for key in (" ", "", "\t", " key "):
        with pytest.raises(ValidationError, match="API key"):
            ServeSettings(api_key=key)


def test_tool_choice_response_format_and_logprobs_are_honoured(client):
    forced = _post(client, {"messages": USER, "tools": [TOOL], "tool_choice": "required", "max_tokens": 40}).json()
    choice = forced["choices"][0]
    assert choice["finish_reason"] == "tool_calls" and choice["message"]["tool_calls"][0]["function"]["name"] == "get_stock"
    named = _post(client, {"messages": USER, "tools": [TOOL], "max_tokens": 40,
                           "tool_choice": {"type": "function", "function": {"name": "get_stock"}}}).json()
    assert json.loads(named["choices"][0]["message"]["tool_calls"][0]["function"]["arguments"]).keys() == {"sku"}
    schema = {"type": "object", "properties": {"ok": {"type": "boolean"}}, "required": ["ok"],
              "additionalProperties": False}
    shaped = _post(client, {"messages": USER, "max_tokens": 40, "response_format": {
        "type": "json_schema", "json_schema": {"name": "answer", "schema": schema}}}).json()
    assert isinstance(json.loads(shaped["choices"][0]["message"]["content"])["ok"], bool)
    scored = _post(client, {"messages": USER, "logprobs": True, "top_logprobs": 2}).json()
    content = scored["choices"][0]["logprobs"]["content"]
    assert content and all(len(t["top_logprobs"]) == 2 and t["logprob"] <= 0 for t in content)
    assert _post(client, {"messages": USER}).json()["choices"][0]["logprobs"] is None
