"""`fcagent eval --store`: models scored on a user's own recorded traffic (a `create_agent` agent with the
user's tools), by the rules of `fcagent.pipeline.agreement`."""

import json

import pytest
from langchain.agents import create_agent
from langchain_core.messages import HumanMessage
from test_own_agent import TOOLS, WarehouseModel, call, requests, run_all
from typer.testing import CliRunner

from fcagent import Label, TraceRecorder, TraceStore
from fcagent.cli.app import app
from fcagent.pipeline.traffic import evaluate_traffic, heldout_steps
from fcagent.routing.agreement import StringMatch, calls_agree, load_judge, same_answer

SCHEMA = [{"type": "function", "function": {"name": "book", "parameters": {"type": "object", "properties": {
    "city": {"type": "string"}, "nights": {"type": "integer"}, "price": {"type": "number"},
    "breakfast": {"type": "boolean", "default": False}, "tags": {"type": "array", "items": {"type": "string"}}},
    "required": ["city", "nights"]}}},
          {"type": "function", "function": {"name": "cancel", "parameters": {"type": "object", "properties": {
              "id": {"type": "string"}}, "required": ["id"]}}}]


def test_calls_agree_by_typed_matching_generalised_from_bfcl():
    rec = [{"name": "book", "args": {"city": "New York", "nights": 2, "price": 100.0}}]
    ok = lambda args, name="book": calls_agree([{"name": name, "args": args}], rec, SCHEMA)[0]  # noqa: E731
    assert ok({"city": "new york", "nights": 2, "price": 100})  # case, spacing; an int for a number
    assert ok({"city": "New-York.", "nights": 2, "price": 100.0, "breakfast": False})  # the default written out
    assert not ok({"city": "New York", "nights": 2.0, "price": 100.0})  # a float where an integer goes
    assert not ok({"city": "Boston", "nights": 2, "price": 100.0})
    assert not ok({"city": "New York", "nights": 2, "price": 100.0, "breakfast": True})
    assert not ok({"city": "New York", "price": 100.0})  # a required argument missing
    assert not ok({"city": "New York", "nights": 2, "price": 100.0, "pets": 1})  # an argument the schema lacks
    assert not ok({"city": "New York", "nights": 2, "price": 100.0}, name="cancel")
    both = [{"name": "cancel", "args": {"id": "A"}}, {"name": "cancel", "args": {"id": "B"}}]
    assert calls_agree(list(reversed(both)), both, SCHEMA)[0]  # parallel calls: any order
    assert not calls_agree(both[:1], both, SCHEMA)[0]
    assert not calls_agree([{"name": "book", "args": {"city": "NY", "nights": 2, "tags": ["a", "b"]}}],
                           [{"name": "book", "args": {"city": "NY", "nights": 2, "tags": ["b", "a"]}}], SCHEMA)[0]
    strict = StringMatch(case=True, punctuation=True)
    assert not calls_agree([{"name": "book", "args": {"city": "new york", "nights": 2}}],
                           [{"name": "book", "args": {"city": "New York", "nights": 2}}], SCHEMA, strict)[0]


def test_the_default_judge_compares_the_facts_of_an_answer():
    assert same_answer("We have 30 units of SKU-3.", "we have 30 units of sku-3")
    assert same_answer("We have 30 units of SKU-3.", "There are 30 units of SKU-3 in stock.")
    assert not same_answer("We have 30 units of SKU-3.", "We have 35 units of SKU-3.")
    assert not same_answer("On Monday the warehouse is open 8-16.", "On Sunday it is closed.")
    assert not same_answer("Sure, happy to help.", "Of course, glad to help!")  # no facts: only exact text agrees
    assert load_judge(None) is same_answer
    assert load_judge("python:test_traffic:_yes")("a", "b") is True


def _yes(reference: str, candidate: str) -> bool:
    return True


@pytest.fixture(scope="module")
def recorded(tmp_path_factory):
    """The warehouse agent's 30 requests recorded and labelled by the users (8 wrong answers flagged)."""
    path = tmp_path_factory.mktemp("traffic") / "traces.db"
    store = TraceStore(path)
    reqs = requests()
    recorder = TraceRecorder(store)
    ids = run_all(reqs, lambda m: create_agent(m, TOOLS), lambda: {"callbacks": [recorder]})
    store.label_many([Label(target_id=i, success=ok, source="feedback") for i, (_, _, ok) in zip(ids, reqs)])
    return path


def _half_right() -> WarehouseModel:
    """A 'student' that calls the right tool for stock questions and answers the opening hours wrongly."""
    scripts = {}
    for q, replies, _ in requests():
        if q.startswith("Are you open"):
            scripts[q] = [call("opening_hours", day="Monday"), "Always open."]
        else:
            scripts.setdefault(q, replies)
    return WarehouseModel(scripts=scripts)


def test_recorded_replies_agree_with_themselves_and_a_student_is_scored_step_by_step(recorded, tmp_path):
    store = TraceStore(recorded)
    steps = heldout_steps(store, test_fraction=0.5)
    assert steps and {s.index for s in steps} == {0, 1}
    report = evaluate_traffic(store, {"teacher": "recorded", "student": "half"}, out_dir=tmp_path / "eval",
                              test_fraction=0.5, loaded={"student": _half_right()})
    teacher, student = report["models"]["teacher"], report["models"]["student"]
    assert teacher["step_agreement"]["rate"] == 1.0 and teacher["episode_agreement"]["rate"] == 1.0
    assert teacher["escalation_rate"] == 0.0 and teacher["invalid_call_rate"] == 0.0
    good = [s for s in steps if s.good]
    asked = lambda s: next(m.content for m in s.messages if m.type == "human")  # noqa: E731
    hours = [s for s in good if asked(s).startswith("Are you open")]
    # wrong on every opening-hours step but the call for Monday, which names the day asked
    wrong = [s for s in hours if s.index == 1 or "Monday" not in asked(s)]
    assert student["step_agreement"]["agree"] == len(good) - len(wrong)
    assert 0 < student["step_agreement"]["rate"] < 1 and student["step_agreement"]["ci95"][0] <= \
        student["step_agreement"]["rate"] <= student["step_agreement"]["ci95"][1]
    if hours:
        assert student["per_tool"]["(answer in words)"]["rate"] < 1.0
    assert set(report["mcnemar"]) == {"teacher vs student"}
    if report["bad_episodes"]:  # the recorded wrong answers are what a user rejected; the recording repeats them
        assert teacher["repeats_rejected"]["rate"] == 1.0
    text = (tmp_path / "eval" / "report.md").read_text()
    assert "| teacher |" in text and "McNemar" in text and (tmp_path / "eval" / "agreement.png").stat().st_size > 0
    # held-out means held out: no step of these episodes is in the exported training rows
    from fcagent import export_sft

    rows = export_sft(store, tmp_path / "sft", test_fraction=0.5).path.read_text()
    assert not any(s.completion_id in rows for s in steps)
    asked = {json.loads(line)["messages"][1]["content"] for line in rows.splitlines()}
    assert not asked & {s.messages[0].content for s in steps if s.messages[0].type == "human"}


def test_the_cli_evaluates_recorded_traffic(recorded, tmp_path):
    result = CliRunner().invoke(app, ["eval", "--store", str(recorded), "-m", "teacher=recorded", "--test-fraction",
                                      "0.5", "--out", str(tmp_path / "ev")])
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "ev" / "results.json").read_text())["models"]["teacher"]["step_agreement"]["rate"] == 1.0
    result = CliRunner().invoke(app, ["eval", "-m", "x=recorded"])
    assert result.exit_code == 2 and "give --task" in result.output


@pytest.mark.slow
def test_distill_from_labelled_traffic_gates_promotes_and_trains_only_on_news(recorded, tmp_path, tiny_model_dir):
    """split → export → train → evaluate on held-out traffic → gate → promote; a failed gate exits 3 and leaves
    production as it was; a run with no new labels trains nothing; the next round starts from production."""
    import sqlite3

    store_path = tmp_path / "traces.db"
    with sqlite3.connect(recorded) as src, sqlite3.connect(store_path) as dst:  # a copy, its WAL included
        src.backup(dst)
    out, prod = tmp_path / "distill", tmp_path / "runs" / "prod"
    base = ["distill", "--store", str(store_path), "--student", str(tiny_model_dir), "--out", str(out),
            "--test-fraction", "0.5", "--sft-epochs", "1", "--promote", str(prod)]
    runner = CliRunner()
    result = runner.invoke(app, [*base, "--gate", "step_agreement>=0.0"])
    assert result.exit_code == 0, result.output
    assert prod.is_symlink() and prod.resolve() == (out / "round-1" / "student").resolve()
    report = json.loads((out / "round-1" / "eval" / "results.json").read_text())
    assert set(report["models"]) == {"base", "new", "recorded"}
    assert report["models"]["recorded"]["step_agreement"]["rate"] == 1.0
    text = (out / "round-1" / "eval" / "report.md").read_text()
    assert text.index("Verdict: promoted") < text.index("| setting | value |") < text.index("| model |")
    assert json.loads((out / "round-1" / "verdict.json").read_text())["promoted"] is True
    # nothing new labelled: nothing trained
    result = runner.invoke(app, [*base, "--gate", "step_agreement>=0.0"])
    assert result.exit_code == 0 and "nothing trained" in result.output and not (out / "round-2").exists()
    # new feedback: the next round trains from the promoted student; a gate it cannot meet keeps production
    store = TraceStore(store_path)
    store.label(store.latest_episode_id(), True, "more feedback", "feedback")
    result = runner.invoke(app, [*base, "--gate", "step_agreement>=0.99,invalid_call_rate<=0.0",
                                 "--baseline-model", str(prod)])
    assert result.exit_code == 3, result.output
    assert "falls short of >= 0.99" in result.output and "not promoted" in result.output
    assert prod.resolve() == (out / "round-1" / "student").resolve()
    manifest = json.loads((out / "round-2" / "student" / "fcagent_run.json").read_text())
    assert manifest["base_model"] == str((out / "round-1" / "student").resolve())  # warm start from production
    assert len((tmp_path / "runs" / "prod.promotions.jsonl").read_text().splitlines()) == 1
    result = runner.invoke(app, ["distill", "--store", str(store_path), "--gate", "accuracy>=1"])
    assert result.exit_code == 2 and "accuracy is not a figure" in result.output


class _Blocking(WarehouseModel):
    """A student that waits for a signal before it answers (a slow one)."""

    gate: object = None

    def _generate(self, messages, stop=None, run_manager=None, **kwargs):
        self.gate.wait(30)
        return super()._generate(messages, stop=stop, run_manager=run_manager, **kwargs)


def test_shadow_mode_measures_the_student_beside_the_teacher_off_the_request_path(tmp_path):
    import threading

    from fcagent import StudentMiddleware

    reqs = requests()[:11] + requests()[19:24]  # stock questions and refused reservations: 16 requests
    store = TraceStore(tmp_path / "t.db")
    release = threading.Event()
    scripts: dict = {}
    for q, r, _ in requests():
        scripts.setdefault(q, r)  # the right answers: the repeats with wrong ones come later
    student = _Blocking(scripts=scripts, gate=release)
    middleware = StudentMiddleware(student, store=store, mode="shadow", shadow_queue=8)
    answers = []
    for q, replies, _ in reqs:
        teacher = WarehouseModel(scripts={q: replies})
        out = create_agent(teacher, TOOLS, middleware=[middleware]).invoke({"messages": [HumanMessage(q)]})
        answers.append(out["messages"][-1].content)
    # every user got the teacher's answer while the student had not answered once: it is off the path
    assert answers == [r[-1] for _, r, _ in reqs] and middleware.shadow.done == 0
    assert middleware.shadow.dropped > 0  # a full queue drops a request: never a backlog, never a wait
    release.set()
    middleware.shadow.join()
    shadowed = middleware.shadow.submitted
    assert middleware.shadow.done == shadowed and middleware.shadow.agreed == shadowed  # this student copies
    episodes = [t for t in store.traces() if t.episode.name == "student-shadow"]
    assert len(episodes) == shadowed
    assert all(len(t.completions) == 2 and t.episode.outputs["shadow"]["agrees"] for t in episodes)
    result = CliRunner().invoke(app, ["eval", "--store", str(tmp_path / "t.db"), "--shadow", "--out",
                                      str(tmp_path / "shadow")])
    assert result.exit_code == 0 and f"{shadowed} shadowed requests: agreement 100.0%" in result.output
    # shadow episodes never become training data or teacher contexts
    assert not any(t.episode.metadata.get("fcagent_role") != "student-shadow" for t in episodes)


def test_serve_in_shadow_mode_answers_with_the_teacher_and_records_both(tmp_path, tiny_model_dir):
    from fastapi.testclient import TestClient

    from fcagent import load_chat_model
    from fcagent.agent.testing import ScriptedChatModel
    from fcagent.serving.app import create_app

    teacher = ScriptedChatModel(model_name="big-teacher", responses=["It is 8-16."] * 3)
    store = TraceStore(tmp_path / "t.db")
    app = create_app(load_chat_model(str(tiny_model_dir), max_new_tokens=4), teacher=teacher, store=store, shadow=True)
    with TestClient(app) as client:
        reply = client.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "When open?"}]})
        assert reply.status_code == 200 and reply.json()["choices"][0]["message"]["content"] == "It is 8-16."
        assert reply.json()["model"] == "big-teacher"
    app.state.fcagent.shadow.join()
    names = sorted(t.episode.name for t in store.traces())
    assert names == ["fcagent-serve", "student-shadow"]
    with pytest.raises(Exception, match="needs a teacher"):
        create_app(load_chat_model(str(tiny_model_dir), max_new_tokens=4), shadow=True)
