import json
import sqlite3

import pytest
from langchain.agents import create_agent
from langchain_core.messages import AIMessage, HumanMessage
from langchain_core.tools import tool
from weather_tools import convert, get_weather

from fcagent import ReferenceTeacher, build_agent_graph, get_task
from fcagent.agent.testing import ScriptedChatModel
from fcagent.tracing.middleware import TraceMiddleware
from fcagent.tracing.recorder import TraceRecorder
from fcagent.tracing.store import StoreError, TraceStore


def scripted_agent_model():
    return ScriptedChatModel(model_name="scripted-gpt", responses=[
        AIMessage(content="", tool_calls=[{"name": "get_weather", "args": {"city": "Paris"}, "id": "t1"}]),
        AIMessage(content="", tool_calls=[{"name": "convert", "args": {"celsius": 20}, "id": "t2"}]),
        AIMessage(content="Sunny and 68F in Paris."),
    ])


def assert_agent_episode(store: TraceStore, model: ScriptedChatModel):
    (ep,) = list(store.episodes())
    trace = store.trace(ep.id)
    assert len(trace.completions) == 3
    for completion, seen in zip(trace.completions, model.seen_messages):
        recorded = [(m.role, m.content) for m in completion.messages]
        expected = [({"human": "user", "ai": "assistant", "system": "system"}.get(m.type, m.type), m.content) for m in seen]
        assert recorded == expected  # exactly what the model saw
        assert {t["function"]["name"] for t in completion.tools} == {"get_weather", "convert"}
    assert trace.completions[0].candidates[0].message.tool_calls[0]["args"] == {"city": "Paris"}
    assert trace.completions[0].candidates[0].calls == [{"name": "get_weather", "args": {"city": "Paris"}}]
    assert trace.completions[2].candidates[0].message.content == "Sunny and 68F in Paris."
    assert [(t.name, t.args, t.output) for t in trace.tool_runs] == [
        ("get_weather", {"city": "Paris"}, "sunny in Paris"), ("convert", {"celsius": 20}, "68.0")]


def test_recorder_captures_create_agent_run(tmp_path):
    store = TraceStore(tmp_path / "t.db")
    model = scripted_agent_model()
    agent = create_agent(model, [get_weather, convert])
    agent.invoke({"messages": [HumanMessage("Weather in Paris in F?")]}, {"callbacks": [TraceRecorder(store, team="x")]})
    assert_agent_episode(store, model)
    assert next(store.episodes()).metadata["team"] == "x"


def test_middleware_captures_create_agent_run(tmp_path):
    store = TraceStore(tmp_path / "t.db")
    model = scripted_agent_model()
    agent = create_agent(model, [get_weather, convert], middleware=[TraceMiddleware(store)])
    agent.invoke({"messages": [HumanMessage("Weather in Paris in F?")]})
    assert_agent_episode(store, model)


def test_plain_bound_model_call_is_an_episode_and_keys_are_not_recorded(tmp_path):
    store = TraceStore(tmp_path / "t.db")
    model = ScriptedChatModel(responses=["hi"]).bind_tools([get_weather]).bind(api_key="sk-secret-123456789", temperature=0.3)
    model.invoke([HumanMessage("hello")], {"callbacks": [TraceRecorder(store)]})
    (trace,) = list(store.traces())
    (c,) = trace.completions
    assert c.params.get("temperature") == 0.3 and "api_key" not in c.params
    assert "sk-secret" not in json.dumps(trace.model_dump())


def test_graph_labels_its_own_episodes(tmp_path):
    store = TraceStore(tmp_path / "t.db")
    task = get_task("math")
    problem = task.load(limit=1)[0]
    bad = ScriptedChatModel(native=False, responses=["no idea", 'add(a=1, b="x")', "final_answer(answer=-1)"])
    build_agent_graph(bad, task=task).invoke({"problem": problem}, {"callbacks": [TraceRecorder(store)]})
    build_agent_graph(ReferenceTeacher(problems=[problem]), task=task).invoke(
        {"problem": problem}, {"callbacks": [TraceRecorder(store)]})
    bad_trace, good_trace = list(store.traces())
    assert bad_trace.episode_label().success is False and "wrong answer" in bad_trace.episode_label().reason
    assert good_trace.episode_label().success is True
    step_labels = {lb.target_id: lb for lb in bad_trace.labels if lb.source == "graph"}
    kinds = [step_labels[c.id].reason.split(":")[0] for c in bad_trace.completions]
    assert kinds == ["parse_error", "invalid_arguments", "valid call"]
    assert bad_trace.episode.problem_id == problem.id and bad_trace.episode.split == problem.split
    assert bad_trace.completions[1].protocol == "text" and bad_trace.completions[1].tools  # schemas kept


def test_tool_error_recorded(tmp_path):
    @tool
    def boom(x: int) -> int:
        """Fails."""
        raise ValueError("no")

    store = TraceStore(tmp_path / "t.db")
    model = ScriptedChatModel(native=False, responses=["boom(x=1)", "final_answer(answer=2)"])
    build_agent_graph(model, [boom]).invoke({"messages": [HumanMessage("go")]}, {"callbacks": [TraceRecorder(store)]})
    (trace,) = list(store.traces())
    assert trace.tool_runs[0].error.startswith("ValueError")
    assert any(not lb.success and lb.reason.startswith("tool_error") for lb in trace.labels)


def test_jsonl_round_trip_is_idempotent_and_corrupt_lines_are_named(tmp_path):
    store = TraceStore(tmp_path / "a.db")
    task = get_task("math")
    problems = task.load(limit=3)
    graph = build_agent_graph(ReferenceTeacher(problems=problems), task=task)
    for p in problems:
        graph.invoke({"problem": p}, {"callbacks": [TraceRecorder(store)]})
    store.export_jsonl(tmp_path / "x.jsonl")
    other = TraceStore(tmp_path / "b.db")
    assert other.import_jsonl(tmp_path / "x.jsonl") == (3, 0)
    assert other.import_jsonl(tmp_path / "x.jsonl") == (0, 3)
    assert other.stats()["labels"] == store.stats()["labels"]
    lines = (tmp_path / "x.jsonl").read_text().splitlines()
    broken = json.loads(lines[1])
    del broken["episode"]["started_at"]
    (tmp_path / "bad.jsonl").write_text("\n".join([lines[0], json.dumps(broken), lines[2]]) + "\n")
    fresh = TraceStore(tmp_path / "c.db")
    with pytest.raises(StoreError, match=r"bad.jsonl:2: `episode.started_at`"):
        fresh.import_jsonl(tmp_path / "bad.jsonl")
    assert fresh.count() == 0  # nothing half-imported


def test_store_from_a_newer_schema_is_refused_untouched(tmp_path):
    import sqlite3

    from fcagent.tracing.store import SCHEMA_VERSION

    path = tmp_path / "t.db"
    TraceStore(path).close()
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("INSERT INTO _migrations VALUES ('999_future', 0)")
    assert conn.execute("PRAGMA journal_mode=DELETE").fetchone()[0] == "delete"  # as a newer fcagent might leave it
    conn.close()
    before = path.read_bytes()
    with pytest.raises(StoreError, match=f"schema version {SCHEMA_VERSION + 1} .*999_future.*reads version {SCHEMA_VERSION}"):
        TraceStore(path)
    assert path.read_bytes() == before and not (tmp_path / "t.db-wal").exists()


def test_label_api_and_stats(tmp_path):
    store = TraceStore(tmp_path / "t.db")
    ScriptedChatModel(responses=["hi"]).invoke([HumanMessage("x")], {"callbacks": [TraceRecorder(store)]})
    ep = next(store.episodes())
    store.label(ep.id, False, "user thumbs down", "feedback")
    assert store.trace(ep.id).episode_label().reason == "user thumbs down"
    assert store.stats()["labels_by_source"] == {"feedback:bad": 1}
    from fcagent.core.errors import UserError

    with pytest.raises(UserError, match="no episode or completion with id"):
        store.label("nope", True)


# --- the store's writer thread ----------------------------------------------------------------


def test_the_run_does_not_wait_for_the_write_and_any_store_on_the_file_reads_it(tmp_path, monkeypatch):
    import threading
    import time

    original, writers = TraceStore._insert, []

    def slow_insert(self, rows, replace):
        writers.append(threading.current_thread().name)
        time.sleep(0.5)  # a slow disk
        return original(self, rows, replace)

    monkeypatch.setattr(TraceStore, "_insert", slow_insert)
    recorder = TraceRecorder(tmp_path / "t.db")
    model = scripted_agent_model()
    started = time.perf_counter()
    create_agent(model, [get_weather, convert]).invoke({"messages": [HumanMessage("Paris?")]},
                                                       {"callbacks": [recorder]})
    assert time.perf_counter() - started < 0.5  # the agent's answer did not wait for the disk
    assert recorder.episodes_written == 0  # still queued
    # Another store object on the same file, read at once, sees the episode (read-your-writes).
    assert_agent_episode(TraceStore(tmp_path / "t.db"), model)
    assert recorder.episodes_written == 1 and writers == ["fcagent-writer:t.db"]


def test_a_failed_write_in_a_batch_names_its_episode_and_the_others_are_stored(tmp_path, monkeypatch):
    store = TraceStore(tmp_path / "t.db")
    original = TraceStore._insert

    def full_disk_for_b(self, rows, replace):
        if rows.episode["id"] == "b":
            raise OSError("database or disk is full")
        return original(self, rows, replace)

    monkeypatch.setattr(TraceStore, "_insert", full_disk_for_b)
    outcomes: dict[str, object] = {}

    def trace(episode_id):
        return {"episode": {"id": episode_id, "started_at": 1.0}, "completions": [], "tool_runs": [], "labels": []}

    def broken_build():
        raise ValueError("a record that cannot be built")

    with store._lock:  # the writer waits for the lock: the four are queued, and written together
        for episode_id in "abc":
            store.write_episode_soon(episode_id, lambda i=episode_id: trace(i),
                                     done=lambda stored, error, i=episode_id: outcomes.__setitem__(i, error or stored))
        store.write_episode_soon("d", broken_build, done=lambda stored, error: outcomes.__setitem__("d", error))
    store.flush()
    assert outcomes["a"] is True and outcomes["c"] is True
    assert "episode b was not stored: OSError: database or disk is full" in str(outcomes["b"])
    assert "episode d was not stored: ValueError" in str(outcomes["d"])
    assert sorted(e.id for e in store.episodes()) == ["a", "c"]


@pytest.mark.slow
def test_queued_episodes_are_written_when_the_program_exits_without_closing(tmp_path):
    import subprocess
    import sys
    import textwrap

    script = textwrap.dedent(f"""
        import time
        from fcagent.tracing.store import TraceStore
        store = TraceStore({str(tmp_path / "t.db")!r})
        original = TraceStore._insert
        def slow(self, rows, replace):
            time.sleep(0.3)
            return original(self, rows, replace)
        TraceStore._insert = slow
        for i in range(3):
            store.write_episode_soon(str(i), lambda i=i: {{"episode": {{"id": str(i), "started_at": 1.0}}}},
                                     done=lambda stored, error: None)
    """)
    subprocess.run([sys.executable, "-c", script], check=True, timeout=120)
    assert TraceStore(tmp_path / "t.db").count() == 3


def test_an_idle_writer_ends_and_the_next_episode_starts_another(tmp_path, monkeypatch):
    from fcagent.tracing.store import writer as store_module

    monkeypatch.setattr(store_module.EpisodeWriter, "IDLE_S", 0.05)
    store = TraceStore(tmp_path / "t.db")
    for episode_id in ("x", "y"):
        store.write_episode_soon(episode_id, lambda i=episode_id: {"episode": {"id": i, "started_at": 1.0}},
                                 done=lambda stored, error: None)
        store.flush()
        writer = store._writer
        if writer is not None:
            writer.thread.join(timeout=5)
        assert store._writer is None  # nothing queued: the thread ended, the store can be freed
    assert store.count() == 2


def test_episodes_close_together_share_a_commit_and_a_read_does_not_wait_out_the_linger(tmp_path, monkeypatch):
    import time

    from fcagent.tracing.store import writer as store_module

    monkeypatch.setattr(store_module.EpisodeWriter, "LINGER_S", 30.0)  # longer than any test: only a read ends it
    batches: list[int] = []
    original = TraceStore.write_episodes

    def counting(self, traces, **kw):
        batches.append(len(traces))
        return original(self, traces, **kw)

    monkeypatch.setattr(TraceStore, "write_episodes", counting)
    recorder = TraceRecorder(tmp_path / "t.db")

    def run_agent() -> None:
        create_agent(scripted_agent_model(), [get_weather, convert]).invoke({"messages": [HumanMessage("Paris?")]},
                                                                           {"callbacks": [recorder]})

    run_agent()
    deadline = time.monotonic() + 10
    while not batches and time.monotonic() < deadline:
        time.sleep(0.01)
    assert batches == [1]  # the first episode after a quiet spell is written at once
    run_agent()
    run_agent()  # these two come while episodes keep coming: the writer waits for more
    time.sleep(0.2)
    assert batches == [1]
    started = time.perf_counter()
    assert TraceStore(tmp_path / "t.db").count() == 3  # a read through another store object ends the wait
    assert time.perf_counter() - started < 5
    assert batches == [1, 2]  # the two in one transaction
    recorder.flush()
    assert recorder.episodes_written == 3


def test_a_long_episode_encodes_each_message_once(tmp_path, monkeypatch):
    from fcagent.tracing import episodes as recorder_module

    made = []
    original = recorder_module.message_record
    monkeypatch.setattr(recorder_module, "message_record", lambda m: made.append(m) or original(m))
    steps = 12
    model = ScriptedChatModel(responses=[
        *[AIMessage(content="", tool_calls=[{"name": "get_weather", "args": {"city": f"c{i}"}, "id": f"w{i}"}])
          for i in range(steps)], AIMessage(content="done")])
    store = TraceStore(tmp_path / "t.db")
    create_agent(model, [get_weather]).invoke({"messages": [HumanMessage("weather everywhere?")]},
                                              {"callbacks": [TraceRecorder(store, background=False)]})
    trace = next(store.traces())
    assert len(trace.completions) == steps + 1
    for i, comp in enumerate(trace.completions):  # every call's input is all that came before it, in order
        assert [m.role for m in comp.messages] == ["user", *["assistant", "tool"] * i]
        assert [c["args"]["city"] for m in comp.messages for c in (m.tool_calls or [])] == [f"c{j}" for j in range(i)]
    # 1 question + 12 calls + 12 results as inputs, 13 replies: not the 1 + 3 + 5 + … of a record per input
    assert len(made) == 1 + 2 * steps + (steps + 1)
    with sqlite3.connect(tmp_path / "t.db") as conn:
        assert conn.execute("SELECT COUNT(*) FROM message_blobs").fetchone()[0] == 1 + 2 * steps


def test_raise_mode_writes_in_the_run(tmp_path):
    with pytest.raises(Exception, match="cannot be combined with `background=True`"):
        TraceRecorder(tmp_path / "t.db", on_write_error="raise", background=True)
    recorder = TraceRecorder(tmp_path / "t.db", on_write_error="raise")
    create_agent(scripted_agent_model(), [get_weather, convert]).invoke({"messages": [HumanMessage("Paris?")]},
                                                                        {"callbacks": [recorder]})
    assert recorder.episodes_written == 1 and recorder.store._writer is None  # no flush needed, no thread


def test_a_bad_write_mode_is_refused_before_the_store_is_created(tmp_path):
    for kwargs in ({"on_write_error": "ignore"}, {"on_write_error": "raise", "background": True}):
        with pytest.raises(Exception, match="on_write_error"):
            TraceRecorder(tmp_path / "t.db", **kwargs)
        with pytest.raises(Exception, match="on_write_error"):
            TraceMiddleware(tmp_path / "t.db", **kwargs)
    assert not (tmp_path / "t.db").exists()


def test_context_hashes_and_stored_values_keep_their_encoding():
    """Stored context hashes join rows across stores written by any version: the canonical encoding
    (json.dumps's defaults, sorted keys, non-ASCII kept) and so the hash of a fixed context must never
    change; stored values stay compact JSON with non-ASCII text kept."""
    from fcagent.core.files import dumps as _dumps
    from fcagent.core.records import context_hash

    messages = [{"role": "system", "content": "You call functions."}, {"role": "user", "content": "Grüße: 2+3?"},
                {"role": "assistant", "content": "", "tool_calls": [{"name": "add", "args": {"b": 3, "a": 2}, "id": "call_x"}]},
                {"role": "tool", "content": "5"}]
    tools = [{"type": "function", "function": {"name": "add", "parameters": {
        "type": "object", "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}}}}}]
    assert context_hash(messages, tools) == "046f7a165da734bf9c9b56ee4e62286a"
    other_ids = [*messages[:2], {**messages[2], "tool_calls": [{**messages[2]["tool_calls"][0], "id": "call_y"}]}, messages[3]]
    assert context_hash(other_ids, tools) == "046f7a165da734bf9c9b56ee4e62286a"  # call ids are random per run
    assert _dumps({"q": "Grüße", "n": [1, 2.5, None], "k": float("nan")}) == '{"q":"Grüße","n":[1,2.5,null],"k":NaN}'
