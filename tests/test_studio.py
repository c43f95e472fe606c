"""The graphs in langgraph.json, served by `langgraph dev` on a free loopback port and driven the way
LangGraph Studio drives them (the LangGraph SDK, streaming in Studio's modes): a typed question streams
to a final answer on each graph, offline."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # starts `langgraph dev`

ROOT = Path(__file__).resolve().parents[1]
sdk = pytest.importorskip("langgraph_sdk")
pytest.importorskip("langgraph_api")


@pytest.fixture(scope="module")
def dev_server(tmp_path_factory, smol_dir):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    work = tmp_path_factory.mktemp("studio")
    env = {**os.environ, "LANGGRAPH_CLI_NO_ANALYTICS": "1", "LANGSMITH_TRACING": "false", "LANGCHAIN_TRACING_V2": "false",
           "FCAGENT_STORE": str(work / "studio.db"), "PYTHONUNBUFFERED": "1"}
    env.pop("FCAGENT_MODEL", None)
    log = (work / "dev.log").open("w")
    langgraph = Path(sys.executable).parent / "langgraph"
    proc = subprocess.Popen([str(langgraph), "dev", "--host", "127.0.0.1", "--port", str(port), "--no-browser",
                             "--no-reload", "--config", str(ROOT / "langgraph.json")], cwd=ROOT, env=env,
                            stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    client = sdk.get_sync_client(url=url)
    deadline = time.time() + 240
    while True:
        try:
            if client.assistants.search(limit=10):
                break
        except Exception:  # noqa: BLE001 - not up yet
            pass
        if proc.poll() is not None or time.time() > deadline:
            proc.kill()
            raise RuntimeError("langgraph dev did not start:\n" + (work / "dev.log").read_text()[-3000:])
        time.sleep(1)
    yield client, work
    proc.terminate()
    try:
        proc.wait(20)
    except subprocess.TimeoutExpired:
        proc.kill()


def _stream(client, graph: str, payload: dict) -> tuple[list, dict]:
    thread = client.threads.create()
    tokens, final = [], {}
    for part in client.runs.stream(thread["thread_id"], graph, input=payload,
                                   stream_mode=["messages-tuple", "values", "updates"]):
        if part.event == "messages":
            message, _meta = part.data
            if message.get("type", "").startswith("AIMessage") or message.get("type") == "ai":
                tokens.append(message)
        elif part.event == "values":
            final = part.data
        elif part.event == "error":
            raise AssertionError(f"{graph}: {part.data}")
    return tokens, final


@pytest.mark.parametrize("graph", ["math_agent", "logic_agent"])
def test_task_graphs_answer_a_typed_question(dev_server, graph):
    client, _ = dev_server
    tokens, final = _stream(client, graph, {"messages": [{"role": "user", "content": "What is 12 times 7, plus 5?"}]})
    assert tokens  # the model's output streamed as it was produced
    # a person who types a question gets an answer (right or wrong: the 135M model is untrained)
    assert final["status"] == "answered" and final["final_answer"] not in (None, ""), final.get("errors")
    assert any(m["type"] == "ai" and "final_answer" in m["content"] for m in final["messages"])


def test_a_task_problem_is_replayed_by_the_reference_teacher(dev_server):
    from fcagent import get_task

    client, _ = dev_server
    problem = get_task("math").load(limit=1)[0]
    _, final = _stream(client, "math_agent", {"problem": problem.model_dump(mode="json")})
    assert final["verdict"]["success"] is True and final["status"] == "answered"


def test_the_own_agent_graph_escalates_and_records(dev_server):
    from fcagent import TraceStore

    client, work = dev_server
    tokens, final = _stream(client, "own_agent", {"messages": [{"role": "user", "content": "How many units of SKU-3?"}]})
    assert final["messages"][-1]["type"] == "ai" and tokens
    assert final.get("fcagent_episode_id")
    store = TraceStore(work / "studio.db")
    # The server process writes its episodes on its own writer thread: another process sees them once
    # committed (a read waits only for queues of its own process), so poll briefly.
    deadline = time.monotonic() + 10
    while final["fcagent_episode_id"] not in (episodes := {e.id: e for e in store.episodes()}) \
            and time.monotonic() < deadline:
        time.sleep(0.05)
    assert final["fcagent_episode_id"] in episodes, (final["fcagent_episode_id"], [(e.id, e.name) for e in episodes.values()])
    # every step the student failed went to the teacher, and each is stored as a pair for the next round
    answered_by = [m.get("response_metadata", {}).get("model_name") for m in final["messages"] if m["type"] == "ai"]
    escalations = [store.trace(e.id) for e in episodes.values() if e.name == "student-escalation"]
    assert "WarehouseTeacher" in answered_by, answered_by
    assert len(escalations) == answered_by.count("WarehouseTeacher")
    for pair in escalations:
        assert [(c.model, lb.success) for c, lb in zip(pair.completions, pair.labels)] == \
            [("WarehouseTeacher", True), (pair.completions[1].model, False)]
