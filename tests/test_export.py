"""The exporter's labelling rules, each pair source, guards, dedup and caps, on hand-built stores."""

import json

import pytest
from langchain_core.messages import AIMessage, HumanMessage
from langchain_core.outputs import ChatGeneration, ChatResult

from fcagent import ReferenceTeacher, build_agent_graph, get_task
from fcagent.agent.testing import ScriptedChatModel
from fcagent.data.export import export_preference_pairs, export_sft
from fcagent.data.rows import ExportError, load_pairs, validate_pair
from fcagent.tracing.recorder import TraceRecorder
from fcagent.tracing.store import TraceStore


class SampledModel(ScriptedChatModel):
    """Returns all of `samples` as the candidates of every call (the first one is executed)."""

    samples: list[str] = []

    def _generate(self, messages, stop=None, run_manager=None, **kwargs):
        self.seen_messages.append(list(messages))
        step = sum(isinstance(m, AIMessage) for m in messages)
        texts = self.samples if step == 0 else self.responses[min(step - 1, len(self.responses) - 1):][:1]
        return ChatResult(generations=[ChatGeneration(message=AIMessage(content=t)) for t in texts])


def math_problem(split="train"):
    task = get_task("math")
    return task, next(p for p in task.load(limit=50) if p.split == split)


def gold_texts(problem):
    return [json.dumps({"name": s[0].name, "arguments": s[0].args}) for s in problem.gold_chain]


def run(store, model, task, problem, role="teacher"):
    graph = build_agent_graph(model, task=task)
    return graph.invoke({"problem": problem}, {"callbacks": [TraceRecorder(store)], "metadata": {"fcagent_role": role}})


def test_step_pairs_from_sibling_samples_of_one_context(tmp_path):
    store = TraceStore(tmp_path / "t.db")
    task, problem = math_problem()
    gold = gold_texts(problem)
    bad_samples = ["I think it is 7", '{"name": "mod", "arguments": {"a": 1}}', '{"name": "add", "arguments": {"a": "x", "b": 1}}']
    model = SampledModel(native=False, responses=gold[1:], samples=[gold[0], *bad_samples])
    assert run(store, model, task, problem)["verdict"]["success"]
    result = export_preference_pairs(store, tmp_path / "out")
    rows = [json.loads(line) for line in result.path.read_text().splitlines()]
    assert len(rows) == 3 and {r["source"] for r in rows} == {"step"}
    assert {r["rejected_reason"].split(":")[0] for r in rows} == {"parse_error", "unknown_function", "invalid_arguments"}
    assert all(r["chosen"] == [{"role": "assistant", "content": gold[0]}] for r in rows)
    assert rows[0]["prompt"][0]["role"] == "system" and rows[0]["prompt"][-1] == {"role": "user", "content": problem.question}


def test_trajectory_pairs_anchor_at_the_divergence_and_never_train_on_observations(tmp_path):
    store = TraceStore(tmp_path / "t.db")
    task, problem = math_problem()
    gold = gold_texts(problem)
    first = problem.gold_chain[0][0]
    wrong_second = json.dumps({"name": "subtract", "arguments": {"a": 1000, "b": 1}})
    run(store, ScriptedChatModel(native=False, responses=gold), task, problem)
    failed = run(store, ScriptedChatModel(native=False, responses=[gold[0], wrong_second, 'final_answer(answer=-5)']), task, problem)
    assert failed["verdict"]["success"] is False
    rows = [json.loads(x) for x in export_preference_pairs(store, tmp_path / "o").path.read_text().splitlines()]
    (row,) = rows
    assert row["source"] == "trajectory" and row["rejected_reason"] == "diverges from a successful chain"
    assert row["chosen"][0]["content"] == gold[1] and row["rejected"][0]["content"] == wrong_second
    # the shared first call and its observation are in the prompt; nothing but assistant turns is trained on
    assert json.dumps(first.args) in row["prompt"][-2]["content"] and row["prompt"][-1]["content"].startswith("Observation:")
    assert all(m["role"] == "assistant" for m in row["chosen"] + row["rejected"])


def test_teacher_student_pairs_from_replayed_student_failures(tmp_path):
    from fcagent.pipeline.replay import replay

    store = TraceStore(tmp_path / "t.db")
    task, problem = math_problem()
    run(store, ReferenceTeacher(problems=[problem]), task, problem)
    gold = gold_texts(problem)
    student = SampledModel(native=False, responses=["x"], samples=[gold[0], "add(a=1)", "the answer is 3"])
    info = replay(store, student, student_name="scripted-student", samples=3)
    assert info["contexts"] == len(problem.gold_chain)
    rows = [json.loads(x) for x in export_preference_pairs(store, tmp_path / "o").path.read_text().splitlines()]
    assert rows and {r["source"] for r in rows} == {"teacher_student"}
    assert replay(store, student, student_name="scripted-student")["contexts"] == 0  # resumable: nothing twice


class RecordingSampler(SampledModel):
    """SampledModel that notes the history length and sampling kwargs of every call."""

    asked: list = []

    def _generate(self, messages, stop=None, run_manager=None, **kwargs):
        self.asked.append((sum(isinstance(m, AIMessage) for m in messages), kwargs.get("seed")))
        return super()._generate(messages, stop=stop, run_manager=run_manager, **kwargs)


def test_replay_of_final_steps_only_and_seeded(tmp_path):
    from fcagent.core.errors import UserError
    from fcagent.pipeline.replay import replay

    store = TraceStore(tmp_path / "t.db")
    task = get_task("math")
    problems = [p for p in task.load(limit=50) if p.split == "train" and len(p.gold_chain) > 1][:2]
    for problem in problems:
        run(store, ReferenceTeacher(problems=problems), task, problem)
    student = RecordingSampler(native=False, responses=["x"], samples=["the answer is 3"], asked=[])
    info = replay(store, student, student_name="s", samples=2, steps="final", seed=5, limit=1)
    assert info["contexts"] == 1
    info = replay(store, student, student_name="s", samples=2, steps="final", seed=5)  # resumed
    # one context per teacher episode: its last call, after the rest of the chain; the resumed
    # replay seeds its context as the unbroken one would have
    assert info["contexts"] == 1 and info["skipped_already_replayed"] == 1
    assert student.asked == [(len(problems[0].gold_chain) - 1, 5), (len(problems[1].gold_chain) - 1, 6)]
    every = RecordingSampler(native=False, responses=["x"], samples=["the answer is 3"], asked=[])
    assert replay(store, every, student_name="t", samples=2)["contexts"] == sum(len(p.gold_chain) for p in problems)
    assert {seed for _, seed in every.asked} == {None}
    with pytest.raises(UserError, match="`steps`"):
        replay(store, every, student_name="u", steps="last")


def test_seeded_replay_on_a_local_model_repeats_its_candidates(tmp_path, tiny_model_dir):
    import shutil

    from fcagent import load_chat_model
    from fcagent.pipeline.replay import replay

    task, problem = math_problem()
    store = TraceStore(tmp_path / "t.db")
    run(store, ReferenceTeacher(problems=[problem]), task, problem)
    store.close()
    student = load_chat_model(str(tiny_model_dir), max_new_tokens=8)

    def candidates(seed, name):
        copy = tmp_path / f"{name}.db"
        shutil.copy(tmp_path / "t.db", copy)
        with TraceStore(copy) as s:
            replay(s, student, student_name="tiny", samples=3, temperature=1.0, steps="final", seed=seed)
            replayed = [e for e in s.episodes() if e.metadata.get("fcagent_role") == "student-replay"]
            return [c.message.content for c in s.trace(replayed[0].id).completions[0].candidates]

    first, again, other = candidates(11, "a"), candidates(11, "b"), candidates(12, "c")
    assert first == again and len(set(first)) > 1  # sampled, and reproducible
    assert other != first


def test_eval_split_never_exported(tmp_path):
    store = TraceStore(tmp_path / "t.db")
    task = get_task("math")
    problems = task.load(limit=30)
    assert {p.split for p in problems} == {"train", "test"}
    teacher = ReferenceTeacher(problems=problems)
    for p in problems:
        run(store, teacher, task, p)
    result = export_sft(store, tmp_path / "o")
    exported = {json.loads(x)["problem_id"] for x in result.path.read_text().splitlines()}
    train_ids = {p.id for p in problems if p.split == "train"}
    assert exported == train_ids
    assert result.stats["dropped"]["test split (never exported)"] > 0


def test_dedup_and_caps(tmp_path):
    store = TraceStore(tmp_path / "t.db")
    task, problem = math_problem()
    gold = gold_texts(problem)
    bads = [f"nonsense {i}" for i in range(6)]
    model = SampledModel(native=False, responses=gold[1:], samples=[gold[0], *bads])
    run(store, model, task, problem)
    run(store, SampledModel(native=False, responses=gold[1:], samples=[gold[0], *bads]), task, problem)
    capped = export_preference_pairs(store, tmp_path / "a", max_pairs_per_context=2)
    assert capped.rows == 2 and capped.stats["dropped"]["over the per-context cap"] >= 1
    full = export_preference_pairs(store, tmp_path / "b", max_pairs_per_context=100)
    assert full.rows == 6  # the second, identical episode added no duplicate pair
    one_problem = export_preference_pairs(store, tmp_path / "c", max_pairs_per_context=100, max_pairs_per_problem=4)
    assert one_problem.rows == 4
    order_a = export_preference_pairs(store, tmp_path / "d", seed=1).path.read_text()
    order_b = export_preference_pairs(store, tmp_path / "e", seed=1).path.read_text()
    assert order_a == order_b  # deterministic shuffling


def test_unlabelled_store_gets_a_clear_message(tmp_path):
    store = TraceStore(tmp_path / "t.db")
    ScriptedChatModel(responses=["hi"]).invoke([HumanMessage("x")], {"callbacks": [TraceRecorder(store)]})
    with pytest.raises(ExportError, match="1 episodes and 1 of them have no label.*fcagent traces label"):
        export_preference_pairs(store, tmp_path / "o")
    assert not (tmp_path / "o" / "pairs.jsonl").exists()
    with pytest.raises(ExportError, match="no episodes"):
        export_preference_pairs(TraceStore(tmp_path / "empty.db"), tmp_path / "o")


def test_validate_pair_rules():
    good = {"prompt": [{"role": "user", "content": "q"}], "chosen": [{"role": "assistant", "content": "a"}],
            "rejected": [{"role": "assistant", "content": "b"}], "tools": "[]"}
    validate_pair(good)
    for broken, msg in [
        ({**good, "prompt": [{"role": "tool", "content": "r"}]}, "ends with a `tool` message"),
        ({**good, "chosen": [{"role": "tool", "content": "r"}]}, "only hold assistant"),
        ({**good, "rejected": good["chosen"]}, "identical"),
        ({**good, "chosen": []}, "`chosen` must be a non-empty list"),
        ({**good, "prompt": [{"role": "robot", "content": "q"}]}, "role"),
    ]:
        with pytest.raises(ExportError, match=msg):
            validate_pair(broken)


def test_pairs_folder_with_missing_columns_is_a_clear_error(tmp_path):
    (tmp_path / "pairs.jsonl").write_text(json.dumps({"prompt": [{"role": "user", "content": "q"}]}) + "\n")
    with pytest.raises(ExportError, match="row 1 has no column\\(s\\) chosen, rejected"):
        load_pairs(tmp_path)
    (tmp_path / "pairs.jsonl").write_text("{broken\n")
    with pytest.raises(ExportError, match="pairs.jsonl:1: invalid JSON"):
        load_pairs(tmp_path)
