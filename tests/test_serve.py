"""`fcagent serve` driven the way applications drive OpenAI: the official client, ChatOpenAI inside a
user's create_agent agent, escalation to a teacher landing in the store, feedback, bad requests."""

from __future__ import annotations

import json
import time

import httpx
import pytest
from langchain.agents import create_agent
from langchain_core.messages import AIMessage, HumanMessage
from langchain_core.tools import tool

from fcagent import TraceStore, load_chat_model
from fcagent.agent.testing import ScriptedChatModel
from fcagent.data.export import export_preference_pairs
from fcagent.serving.app import ServeSettings, background_server, create_app

pytestmark = pytest.mark.slow  # starts servers

openai = pytest.importorskip("openai")

STOCK_TOOL = {"type": "function", "function": {"name": "get_stock", "description": "Units in stock of a product, by SKU.",
                                               "parameters": {"type": "object", "properties": {"sku": {"type": "string"}},
                                                              "required": ["sku"]}}}


@pytest.fixture(scope="module")
def constrained(smol_dir):
    return load_chat_model("bundled:smollm2-135m?constrain=llguidance", max_new_tokens=48, response_prefix='{"name": "')


def test_the_official_client_plain_tools_streaming_and_n(constrained, smol_dir):
    plain = load_chat_model("bundled:smollm2-135m", max_new_tokens=24)
    with background_server(create_app(plain, settings=ServeSettings(model_name="student"))) as url:
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused")
        assert [m.id for m in client.models.list().data] == ["student"]
        reply = client.chat.completions.create(model="student", messages=[{"role": "user", "content": "Say hello."}])
        assert reply.choices[0].message.content and reply.choices[0].finish_reason in ("stop", "length")
        assert reply.usage.prompt_tokens > 0 and reply.usage.completion_tokens > 0
        two = client.chat.completions.create(model="student", n=2, temperature=0.9,
                                             messages=[{"role": "user", "content": "Name a colour."}])
        assert [c.index for c in two.choices] == [0, 1]
        chunks = list(client.chat.completions.create(model="student", stream=True, stream_options={"include_usage": True},
                                                     messages=[{"role": "user", "content": "Say hello."}]))
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        assert text == reply.choices[0].message.content  # streamed = returned (greedy)
        assert sum(1 for c in chunks if c.choices and c.choices[0].delta.content) > 2 and chunks[-1].usage.total_tokens
    with background_server(create_app(constrained)) as url:
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused")
        ask = [{"role": "user", "content": "How many units of SKU-7 do we have?"}]
        reply = client.chat.completions.create(model="fcagent-student", messages=ask, tools=[STOCK_TOOL])
        (call,) = reply.choices[0].message.tool_calls
        assert call.function.name == "get_stock" and "sku" in json.loads(call.function.arguments)
        assert reply.choices[0].finish_reason == "tool_calls"
        chunks = list(client.chat.completions.create(model="fcagent-student", messages=ask, tools=[STOCK_TOOL], stream=True))
        deltas = [tc for c in chunks if c.choices for tc in (c.choices[0].delta.tool_calls or [])]
        assert deltas and deltas[0].function.name == "get_stock"
        assert json.loads("".join(d.function.arguments or "" for d in deltas)) == json.loads(call.function.arguments)
        # a tool result goes back as a `tool` message
        follow = [*ask, {"role": "assistant", "content": None, "tool_calls": [call.model_dump()]},
                  {"role": "tool", "tool_call_id": call.id, "content": "42"}]
        assert client.chat.completions.create(model="fcagent-student", messages=follow, tools=[STOCK_TOOL]).choices


def test_chat_openai_in_a_users_agent_completes_a_tool_call_through_the_server(constrained):
    from langchain_openai import ChatOpenAI

    calls = []

    @tool(return_direct=True)
    def get_stock(sku: str) -> int:
        """Units in stock of a product, by SKU."""
        calls.append(sku)
        return 42

    with background_server(create_app(constrained)) as url:
        model = ChatOpenAI(base_url=f"{url}/v1", api_key="unused", model="fcagent-student")
        out = create_agent(model, [get_stock]).invoke({"messages": [HumanMessage("How many units of SKU-7 do we have?")]})
    assert calls and out["messages"][-1].content == "42"


def test_escalation_and_feedback_land_in_the_store_and_export_as_a_pair(tmp_path, tiny_model_dir):
    student = load_chat_model(str(tiny_model_dir), max_new_tokens=12, response_prefix='{"name": "')  # random weights
    teacher = ScriptedChatModel(model_name="big-teacher", responses=[
        AIMessage(content="", tool_calls=[{"name": "get_stock", "args": {"sku": "SKU-7"}, "id": None}])])
    store = TraceStore(tmp_path / "t.db")
    with background_server(create_app(student, teacher=teacher, store=store)) as url:
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused")
        raw = client.chat.completions.with_raw_response.create(
            model="fcagent-student", tools=[STOCK_TOOL], messages=[{"role": "user", "content": "Stock of SKU-7?"}])
        reply = raw.parse()
        assert reply.model == "big-teacher" and raw.headers["x-fcagent-model"] == "big-teacher"
        assert reply.choices[0].message.tool_calls[0].function.name == "get_stock"
        ok = httpx.post(f"{url}/v1/feedback", json={"id": reply.id, "label": "good", "reason": "right SKU"})
        assert ok.status_code == 200 and ok.json()["label"] == "good"
        assert httpx.post(f"{url}/v1/feedback", json={"id": "chatcmpl-nope", "label": "good"}).status_code == 404
    episodes = {t.episode.name: t for t in store.traces()}
    assert set(episodes) == {"fcagent-serve", "student-escalation"}
    request = episodes["fcagent-serve"]  # the request: the reply the client got, and the client's feedback
    assert request.episode.id == reply.id.removeprefix("chatcmpl-") and request.episode_label().reason == "right SKU"
    assert [c.model for c in request.completions] == ["big-teacher"]
    escalation = episodes["student-escalation"]  # the refused step, stored as StudentMiddleware stores one
    assert [c.model for c in escalation.completions] == ["big-teacher", str(tiny_model_dir)]
    assert [(lb.success, lb.source) for lb in escalation.labels] == [(True, "escalation"), (False, "escalation")]
    pairs = export_preference_pairs(store, tmp_path / "pairs")
    (row,) = [json.loads(x) for x in pairs.path.read_text().splitlines()]
    assert '"get_stock"' in row["chosen"][0]["content"] and row["rejected_kind"] in ("parse_error", "unknown_function",
                                                                                      "invalid_arguments")
    assert row["source"] == "teacher_student"  # the student's own failure, as in StudentMiddleware's pairs
    # `--level trajectory` drops step pairs; an escalation is not one
    only_trajectory = export_preference_pairs(store, tmp_path / "trajectory", level="trajectory")
    assert [json.loads(x)["source"] for x in only_trajectory.path.read_text().splitlines()] == ["teacher_student"]


def test_bad_requests_get_openai_style_4xx(tiny_model_dir):
    student = load_chat_model(str(tiny_model_dir), max_new_tokens=4)
    app = create_app(student, settings=ServeSettings(api_key="s3cret", max_body_bytes=5_000, max_tokens_limit=64))
    ok_headers = {"Authorization": "Bearer s3cret"}
    with background_server(app) as url:
        post = lambda body, **kw: httpx.post(f"{url}/v1/chat/completions", **({"json": body} if body is not None else {}),  # noqa: E731
                                             headers=kw.get("headers", ok_headers), content=kw.get("content"))
        user = [{"role": "user", "content": "hi"}]
        cases = [
            (post({"messages": user}, headers={}), 401, None),
            (post({"messages": user}, headers={"Authorization": "Bearer wrong"}), 401, None),
            (post(None, content=b"{not json"), 400, None),
            (post({"messages": user, "temperature": "hot"}), 400, "temperature"),
            (post({"messages": [{"role": "wizard", "content": "hi"}]}), 400, "messages.0.role"),
            (post({"messages": []}), 400, "messages"),
            (post({"messages": user, "max_tokens": 100000}), 400, "max_tokens"),
            (post({"messages": [{"role": "tool", "content": "x"}]}), 400, "messages.0.tool_call_id"),
            (post({"messages": [{"role": "user", "content": "x" * 10_000}]}), 413, None),
            (post({"messages": user, "n": 99}), 400, "n"),
        ]
        for response, status, param in cases:
            assert response.status_code == status, (response.status_code, response.text)
            body = response.json()["error"]
            assert body["message"] and "Traceback" not in response.text
            if param:
                assert body["param"] == param, body
        assert post({"messages": user}).status_code == 200


def test_a_client_that_disconnects_mid_stream_frees_its_rows(tiny_model_dir):
    student = load_chat_model(str(tiny_model_dir), max_new_tokens=4000, stop_at_call_end=False, stop_sequences=[])
    with background_server(create_app(student, settings=ServeSettings(max_tokens_limit=4000))) as url:
        with httpx.stream("POST", f"{url}/v1/chat/completions",
                          json={"messages": [{"role": "user", "content": "go on forever"}], "stream": True,
                                "max_tokens": 4000, "temperature": 1.0}) as response:
            for i, _ in enumerate(response.iter_lines()):
                if i > 4:
                    break  # the client goes away
        started = time.perf_counter()
        quick = httpx.post(f"{url}/v1/chat/completions", timeout=60,
                           json={"messages": [{"role": "user", "content": "hi"}], "max_tokens": 3})
        assert quick.status_code == 200
        # the abandoned request's 4,000 tokens were not generated first (~10 s on this model)
        assert time.perf_counter() - started < 5


def test_a_server_follows_a_promotion_without_failing_a_request(tmp_path, tiny_model_dir):
    """`fcagent serve --student runs/prod`: re-pointing runs/prod (a promotion) swaps the new student in while
    eight clients keep asking; every request is answered, and the later ones by the new student."""
    import os
    import shutil
    import threading

    from fcagent.pipeline.promotion import promote

    old, new = tmp_path / "old", tmp_path / "new"
    shutil.copytree(tiny_model_dir, old)
    shutil.copytree(tiny_model_dir, new)
    prod = tmp_path / "runs" / "prod"
    promote(old, prod)
    app = create_app(load_chat_model(str(prod), max_new_tokens=4), follow=str(prod))
    app.state.fcagent.reloader.check_every_s = 0.0
    answered, failed, runs = [], [], set()
    stop = threading.Event()

    def client(url):
        c = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)
        while not stop.is_set():
            try:
                raw = c.chat.completions.with_raw_response.create(model="fcagent-student",
                                                                  messages=[{"role": "user", "content": "hi"}])
                raw.parse()
                answered.append(1)
                runs.add(raw.headers["x-fcagent-run"])
            except Exception as exc:  # noqa: BLE001 - counted: the test fails on any
                failed.append(exc)

    with background_server(app) as url:
        threads = [threading.Thread(target=client, args=(url,)) for _ in range(8)]
        for t in threads:
            t.start()
        while len(answered) < 16:
            time.sleep(0.05)
        promote(new, prod)
        deadline = time.monotonic() + 60
        while os.path.realpath(new) not in runs and time.monotonic() < deadline:
            time.sleep(0.05)
        before = len(answered)
        while len(answered) < before + 16:
            time.sleep(0.05)
        stop.set()
        for t in threads:
            t.join(30)
    assert failed == [] and len(answered) >= 32
    assert runs == {os.path.realpath(old), os.path.realpath(new)}
    assert app.state.fcagent.reloader.reloads == 1
