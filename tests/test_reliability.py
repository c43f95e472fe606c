"""Reliability: concurrent writers, kills mid-export, property tests of the BFCL checker."""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fcagent import Call, ReferenceTeacher, build_agent_graph, get_task
from fcagent.tasks import check_bfcl
from fcagent.tracing.recorder import TraceRecorder
from fcagent.tracing.store import TraceStore

WORKER = textwrap.dedent("""
    import sys
    from fcagent import ReferenceTeacher, build_agent_graph, get_task
    from fcagent.tracing.recorder import TraceRecorder
    task = get_task("math")
    problems = task.load(limit=40)[int(sys.argv[2])::8]
    graph = build_agent_graph(ReferenceTeacher(problems=problems), task=task)
    recorder = TraceRecorder(sys.argv[1])
    for p in problems:
        graph.invoke({"problem": p}, {"callbacks": [recorder], "metadata": {"worker": sys.argv[2]}})
""")


def test_eight_threads_share_one_recorder_and_store(tmp_path):
    store = TraceStore(tmp_path / "t.db")
    task = get_task("math")
    problems = task.load(limit=40)
    graph = build_agent_graph(ReferenceTeacher(problems=problems), task=task)
    recorder = TraceRecorder(store)
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda p: graph.invoke({"problem": p}, {"callbacks": [recorder]}), problems))
    ids = [e.problem_id for e in store.episodes()]
    assert sorted(ids) == sorted(p.id for p in problems)  # every episode exactly once
    for trace in store.traces():  # and no record landed in another run's episode
        problem = next(p for p in problems if p.id == trace.episode.problem_id)
        assert len(trace.completions) == len(problem.gold_chain)
        assert all(problem.question in c.messages[1].content for c in trace.completions)


@pytest.mark.slow
def test_eight_processes_write_one_store(tmp_path):
    db = tmp_path / "p.db"
    TraceStore(db).close()
    procs = [subprocess.Popen([sys.executable, "-c", WORKER, str(db), str(i)]) for i in range(8)]
    assert [p.wait(timeout=180) for p in procs] == [0] * 8
    store = TraceStore(db)
    ids = [e.problem_id for e in store.episodes()]
    assert len(ids) == len(set(ids)) == 40
    assert {e.metadata["worker"] for e in store.episodes()} == {str(i) for i in range(8)}


@pytest.mark.slow
def test_sigkill_mid_export_leaves_no_half_written_file(tmp_path):
    db = tmp_path / "t.db"
    store = TraceStore(db)
    task = get_task("math")
    problems = task.load(limit=300)
    graph = build_agent_graph(ReferenceTeacher(problems=problems), task=task)
    recorder = TraceRecorder(store)
    for p in problems:
        graph.invoke({"problem": p}, {"callbacks": [recorder]})
    out = tmp_path / "export.jsonl"
    code = f"from fcagent.tracing.store import TraceStore\nTraceStore({str(db)!r}).export_jsonl({str(out)!r})"
    proc = subprocess.Popen([sys.executable, "-c", code])
    deadline = time.time() + 60
    while time.time() < deadline and not any(p.endswith(".tmp") for p in os.listdir(tmp_path)):
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)  # mid-export: the temp file exists, the rename has not happened
    proc.wait()
    assert not out.exists()  # never a half-written export under the real name
    assert TraceStore(db).count() == 300  # the store itself is intact
    stale = [p for p in os.listdir(tmp_path) if p.endswith(".tmp")]
    assert stale  # what the killed export left
    TraceStore(db).export_jsonl(out)
    lines = out.read_text().splitlines()
    assert len(lines) == 300 and all(json.loads(line)["episode"]["id"] for line in lines)
    assert not [p for p in os.listdir(tmp_path) if p.endswith(".tmp")]  # the next export removed it


# --- property tests of the BFCL checker -------------------------------------------------------

DOC = {"name": "f", "parameters": {"type": "dict", "required": ["n"], "properties": {
    "n": {"type": "integer"}, "s": {"type": "string"}, "x": {"type": "float"}}}}
ints = st.integers(-1000, 1000)
words = st.text(alphabet="abcdefghij ", min_size=1, max_size=8).filter(lambda w: w.strip())


@settings(max_examples=200, deadline=None)
@given(n=ints, s=words, x=st.floats(-100, 100, allow_nan=False))
def test_property_the_gold_call_always_passes(n, s, x):
    truth = [{"f": {"n": [n], "s": [s], "x": [x]}}]
    assert check_bfcl("simple_python", [DOC], truth, [Call(name="f", args={"n": n, "s": s, "x": x})]).success
    # ...in any case and spacing of the string, and with an int where a float is expected
    if float(x).is_integer():
        truth = [{"f": {"n": [n], "s": [s], "x": [float(x)]}}]
        assert check_bfcl("simple_python", [DOC], truth, [Call(name="f", args={"n": n, "s": s.upper(), "x": int(x)})]).success


@settings(max_examples=200, deadline=None)
@given(n=ints, other=ints, s=words)
def test_property_a_changed_integer_always_fails(n, other, s):
    truth = [{"f": {"n": [n], "s": [s, ""]}}]
    verdict = check_bfcl("simple_python", [DOC], truth, [Call(name="f", args={"n": other})])
    assert verdict.success == (n == other)


@settings(max_examples=100, deadline=None)
@given(values=st.lists(ints, min_size=1, max_size=5, unique=True), seed=st.randoms())
def test_property_parallel_matching_ignores_order(values, seed):
    docs = [{"name": "f", "parameters": {"type": "dict", "required": ["n"], "properties": {"n": {"type": "integer"}}}}]
    truth = [{"f": {"n": [v]}} for v in values]
    calls = [Call(name="f", args={"n": v}) for v in values]
    seed.shuffle(calls)
    assert check_bfcl("parallel", docs, truth, calls).success
    assert not check_bfcl("parallel", docs, truth, calls[:-1]).success or len(values) == 0
