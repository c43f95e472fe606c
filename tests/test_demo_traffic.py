"""Demo traffic of an agent fcagent did not write (NESTFUL's APIs behind `create_agent`): what is recorded is
what the agent did, the labels are the users', and the store feeds the exporter like anyone's."""
import json
import re
import subprocess
import sys

import pytest

from fcagent.core.records import Label
from fcagent.data.split import traffic_split
from fcagent.pipeline.demo_traffic import nestful_requests, record_demo_traffic, simulated_output
from fcagent.tracing.store import TraceStore


def test_requests_cover_the_three_collections_and_mark_about_the_asked_share_wrong(data_dir):
    requests = nestful_requests(data_dir, mistake_rate=0.2, seed=0)
    assert len(requests) >= 280
    assert {r.id.split("-")[0] for r in requests[:30]} == {"glaive", "sgd", "rapidapi"}  # shuffled, so a limit mixes
    wrong = sum(r.mistake is not None for r in requests) / len(requests)
    assert 0.13 < wrong < 0.27
    assert all(r.mistake is None for r in nestful_requests(data_dir, mistake_rate=0.0))


def test_every_field_a_chain_reads_is_in_the_tool_output_it_reads(data_dir):
    for req in nestful_requests(data_dir):
        outputs = {t["function"]["name"]: set(t["output_parameters"]) for t in req.tools}
        first = {}
        for call in req.calls:
            first.setdefault(call.get("label"), call["name"])
        for call in req.calls:
            for number, fieldname in re.findall(r"\$var(\d+)\.([A-Za-z0-9_\-\.]+)\$", json.dumps(call.get("arguments"))):
                assert fieldname in outputs[first[f"var{number}"]], (req.id, number, fieldname)


def test_simulated_outputs_are_a_function_of_the_call():
    tool = {"function": {"name": "get_distance"}, "output_parameters": ["distance", "route_id"]}
    once = simulated_output(tool, {"a": "Paris", "b": "Rome"})
    assert once == simulated_output(tool, {"b": "Rome", "a": "Paris"})
    assert once != simulated_output(tool, {"a": "Paris", "b": "Oslo"})
    assert isinstance(once["distance"], int) and once["route_id"].startswith("route_id-")


def test_recorded_runs_hold_the_chain_the_tool_results_and_the_users_labels(tmp_path, data_dir):
    store = TraceStore(tmp_path / "t.db")
    counts = record_demo_traffic(store, data_dir=data_dir, limit=40, mistake_rate=0.5, seed=3)
    requests = nestful_requests(data_dir, limit=40, mistake_rate=0.5, seed=3)
    assert counts["episodes"] == 40 and counts["labelled_bad"] == sum(r.mistake is not None for r in requests)
    traces = {t.episode.id: t for t in store.traces()}
    by_question = {}
    for t in traces.values():
        by_question[t.completions[0].messages[-1].content] = t
    for req in requests:
        trace = by_question[req.question]
        assert len(trace.completions) == len(req.calls) + 1  # one model call per API call, then the answer
        assert [r.name for r in trace.tool_runs][1:] == [c["name"] for c in req.calls][1:]
        assert all(r.error is None for r in trace.tool_runs)
        (label,) = trace.labels
        assert label.success is (req.mistake is None) and label.source == "feedback"
        if req.mistake == "wrong_function":
            assert trace.tool_runs[0].name != req.calls[0]["name"]
        elif req.mistake is None:
            assert trace.tool_runs[0].name == req.calls[0]["name"]
    # later calls read earlier results: an argument holds a value a tool returned
    chained = [r for r in requests if any("$var" in json.dumps(c.get("arguments")) for c in r.calls)]
    assert chained
    trace = by_question[chained[0].question]
    returned = " ".join(r.output for r in trace.tool_runs)
    later_args = [json.dumps(r.args) for r in trace.tool_runs[1:]]
    assert any(any(str(v) in returned for v in json.loads(a).values()) for a in later_args)


def test_the_store_exports_train_rows_and_holds_requests_out(tmp_path, data_dir):
    from fcagent.data.export import export_sft

    store = TraceStore(tmp_path / "t.db")
    record_demo_traffic(store, data_dir=data_dir, limit=60)
    result = export_sft(store, tmp_path / "data", test_fraction=0.2)
    assert result.rows > 0 and result.stats["dropped"]["test split (never exported)"] > 0
    rows = [json.loads(line) for line in (tmp_path / "data" / "sft.jsonl").read_text().splitlines()]
    assert all(r["messages"][-1]["role"] == "assistant" and r["tools"] for r in rows)
    held_out = {t.completions[0].messages[-1].content for t in store.traces()
                if traffic_split(t.episode.request_key, 0.2) == "test"}
    assert held_out and not held_out & {m["content"] for r in rows for m in r["messages"] if m["role"] == "user"}


@pytest.mark.parametrize("args", [["--limit", "12"]])
def test_cli_records_into_a_new_store_and_says_what_it_labelled(tmp_path, data_dir, args):
    proc = subprocess.run([sys.executable, "-m", "fcagent", "traces", "demo", "--store", str(tmp_path / "d.db"),
                           "--data-dir", str(data_dir), *args], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "recorded 12 episodes" in proc.stdout
    assert TraceStore(tmp_path / "d.db", read_only=True).count() == 12


def test_labels_are_episode_labels_a_later_feedback_can_overrule(tmp_path, data_dir):
    store = TraceStore(tmp_path / "t.db")
    record_demo_traffic(store, data_dir=data_dir, limit=5, mistake_rate=0.0)
    first = next(store.traces())
    store.label_many([Label(target_id=first.episode.id, success=False, source="feedback", reason="changed mind")])
    assert [lb.success for lb in store.trace(first.episode.id).labels] == [True, False]


def test_the_recorded_replies_score_one_on_the_held_out_demo_traffic(tmp_path, data_dir):
    """NESTFUL's gold calls do not always fit their own schemas (`"$var1.cost$ + $var2.tip$"` for a number):
    the very call recorded still agrees with itself."""
    from fcagent.pipeline.traffic import evaluate_traffic

    store = TraceStore(tmp_path / "t.db")
    record_demo_traffic(store, data_dir=data_dir, limit=120)
    report = evaluate_traffic(store, {"teacher": "recorded"}, out_dir=tmp_path / "eval")
    teacher = report["models"]["teacher"]
    assert teacher["step_agreement"]["n"] > 20 and teacher["step_agreement"]["rate"] == 1.0
    assert teacher["invalid_call_rate"] > 0  # some of those calls do break their schemas
