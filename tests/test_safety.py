"""Nothing lost: failed writes surface, inputs are never overwritten, concurrent runs do not duplicate,
stores stay small, and bad input gets one line, never a traceback."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from langchain_core.messages import AIMessage, HumanMessage
from typer.testing import CliRunner

from fcagent import TraceRecorder, TraceStore
from fcagent.agent.testing import ScriptedChatModel
from fcagent.cli.app import app
from fcagent.core.errors import RunFailure
from fcagent.pipeline.harvest import harvest

runner = CliRunner()


def _harvested(tmp_path, n=6) -> Path:
    db = tmp_path / "t.db"
    harvest(task="math", limit=n, store=db)
    return db


# --- data loss -----------------------------------------------------------------------------------


def test_a_harvest_leaves_its_episodes_in_the_store_file_itself(tmp_path):
    """harvest closes the store it opened: nothing left only in the WAL, so copying the file copies them."""
    import shutil

    db = _harvested(tmp_path, 3)
    copy = tmp_path / "copy" / "t.db"
    copy.parent.mkdir()
    shutil.copy(db, copy)  # the file alone, as a user copying `traces.db` would
    assert TraceStore(copy).count() == 3


def test_traces_export_never_writes_over_the_store_or_an_existing_file(tmp_path):
    db = _harvested(tmp_path, 2)
    for target in (db, Path(f"{db}-wal")):
        result = runner.invoke(app, ["traces", "export", str(target), "--store", str(db)])
        assert result.exit_code == 2 and "input store" in result.output
    other = tmp_path / "other.db"
    TraceStore(other).close()
    result = runner.invoke(app, ["traces", "export", str(other), "--store", str(db), "--force"])
    assert result.exit_code == 2 and "SQLite database" in result.output
    existing = tmp_path / "old.jsonl"
    existing.write_text("keep me\n")
    result = runner.invoke(app, ["traces", "export", str(existing), "--store", str(db)])
    assert result.exit_code == 2 and "--force" in result.output and existing.read_text() == "keep me\n"
    assert runner.invoke(app, ["traces", "export", str(existing), "--store", str(db), "--force"]).exit_code == 0
    assert len(existing.read_text().splitlines()) == 2 and TraceStore(db).count() == 2


def test_a_full_disk_during_harvest_is_reported_naming_the_episodes(tmp_path):
    db = tmp_path / "t.db"
    store = TraceStore(db)
    harvest(task="math", limit=2, store=store)
    pages = store._db.conn.execute("PRAGMA page_count").fetchone()[0]
    store._db.conn.execute(f"PRAGMA max_page_count={pages + 2}")  # SQLite's "database or disk is full"
    with pytest.raises(RunFailure, match=r"of 30 episodes were NOT stored .*episode [0-9a-f-]{36} was not stored: .*full") as info:
        harvest(task="math", limit=32, store=store, resume=True)
    summary = info.value.evidence
    stored = TraceStore(db).count()
    assert stored == 2 + summary["stored"] and summary["stored"] < 30  # every episode stored whole, or reported


@pytest.mark.slow
def test_a_store_locked_past_the_timeout_is_reported_not_lost(tmp_path):
    db = tmp_path / "t.db"
    TraceStore(db).close()
    blocker = sqlite3.connect(db, isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")  # another process holds the write lock
    try:
        with pytest.raises(RunFailure, match="3 of 3 episodes were NOT stored.*(locked|busy)"):
            harvest(task="math", limit=3, store=TraceStore(db, timeout=0.2))
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()


def test_cli_harvest_exits_nonzero_when_episodes_were_not_stored(tmp_path, monkeypatch):
    original = TraceStore._insert
    seen: list[str] = []

    def flaky(self, rows, replace):  # the second episode never fits (retried alone, it fails again)
        episode_id = rows.episode["id"]
        if episode_id not in seen:
            seen.append(episode_id)
        if seen.index(episode_id) == 1:
            raise sqlite3.OperationalError("database or disk is full")
        return original(self, rows, replace)

    monkeypatch.setattr(TraceStore, "_insert", flaky)
    result = runner.invoke(app, ["harvest", "--task", "math", "--limit", "3", "--store", str(tmp_path / "t.db")],
                           env={"COLUMNS": "300"})
    assert result.exit_code == 1 and "1 of 3 episodes were NOT stored" in result.output
    assert "database or disk is full" in result.output and "Traceback" not in result.output


def test_arguments_nested_too_deep_are_stored_cut_with_a_marker(tmp_path):
    from langchain.agents import create_agent
    from langchain_core.tools import tool

    @tool
    def f(x: dict) -> str:
        """Takes anything."""
        return "ok"

    from langchain_core.language_models import BaseChatModel
    from langchain_core.outputs import ChatGeneration, ChatResult

    deep: dict = {}
    node = deep
    for _ in range(5000):
        node["a"] = {}
        node = node["a"]

    class Deep(BaseChatModel):  # a provider whose parsed tool arguments nest 5,000 deep
        @property
        def _llm_type(self) -> str:
            return "deep"

        def bind_tools(self, tools, **kw):
            return self

        def _generate(self, messages, stop=None, run_manager=None, **kw):
            done = any(m.type == "tool" for m in messages)
            msg = AIMessage(content="done") if done else AIMessage.model_construct(
                content="", tool_calls=[{"name": "f", "args": {"x": deep}, "id": "1", "type": "tool_call"}],
                invalid_tool_calls=[], additional_kwargs={}, response_metadata={}, type="ai")
            return ChatResult(generations=[ChatGeneration(message=msg)])

    store = TraceStore(tmp_path / "t.db")
    recorder = TraceRecorder(store, tools=[f])
    graph_input = {"messages": [HumanMessage("go")]}
    try:
        create_agent(Deep(), [f]).invoke(graph_input, {"callbacks": [recorder], "recursion_limit": 10})
    except RecursionError:
        pass  # the agent itself may fail on such arguments; the trace must not be lost for it
    assert recorder.write_errors == [] and store.count() == 1
    trace = next(store.traces())
    assert "nested deeper than" in json.dumps(trace.completions[0].candidates[0].message.tool_calls)


def test_import_merges_new_labels_into_known_episodes(tmp_path):
    db = _harvested(tmp_path, 2)
    store = TraceStore(db)
    ep = next(store.episodes()).id
    store.label(ep, False, "user thumbs down", "feedback")
    store.export_jsonl(tmp_path / "with-label.jsonl")
    other = TraceStore(tmp_path / "other.db")
    harvest(task="math", limit=2, store=other)  # different ids: same problems, fresh runs
    fresh = TraceStore(tmp_path / "copy.db")
    fresh.import_jsonl(tmp_path / "with-label.jsonl")
    fresh.import_jsonl(tmp_path / "with-label.jsonl")
    assert [lb.reason for lb in fresh.trace(ep).labels if lb.target_id == ep][-1] == "user thumbs down"
    # an episode already present without the label gets it from the import
    bare = TraceStore(tmp_path / "bare.db")
    store.export_jsonl(tmp_path / "all.jsonl")
    lines = [json.loads(x) for x in (tmp_path / "all.jsonl").read_text().splitlines()]
    for row in lines:
        row["labels"] = [lb for lb in row["labels"] if lb["source"] != "feedback"]
    (tmp_path / "unlabelled.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    bare.import_jsonl(tmp_path / "unlabelled.jsonl")
    added, present = bare.import_jsonl(tmp_path / "all.jsonl")
    assert (added, present) == (0, 2)
    assert bare.trace(ep).episode_label().reason == "user thumbs down"


@pytest.mark.slow
def test_two_resume_harvests_at_once_store_each_problem_once(tmp_path, data_dir):
    db = tmp_path / "t.db"
    env = {**os.environ, "FCAGENT_DATA": str(data_dir)}
    cmd = [sys.executable, "-m", "fcagent", "harvest", "--task", "logic:prontoqa", "--limit", "40", "--store", str(db),
           "--resume"]
    procs = [subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    assert all(p.returncode == 0 for p in procs), outs
    ids = [e.problem_id for e in TraceStore(db).episodes()]
    assert len(ids) == len(set(ids)) == 40


def test_two_exports_into_one_folder_both_finish_whole(tmp_path):
    db = _harvested(tmp_path, 8)
    from fcagent.data.export import export_sft

    errors: list[BaseException] = []

    def one():
        try:
            export_sft(db, tmp_path / "out")
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=one) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    rows = (tmp_path / "out" / "sft.jsonl").read_text().splitlines()
    assert rows and all(json.loads(r)["messages"] for r in rows)
    assert not list((tmp_path / "out").glob(".*.spool"))


def test_each_message_is_stored_once(tmp_path):
    from langchain.agents import create_agent
    from langchain_core.tools import tool

    big = "x" * 10_000_000

    @tool
    def dump(i: int) -> str:
        """Returns a lot."""
        return big

    script = [AIMessage(content="", tool_calls=[{"name": "dump", "args": {"i": i}, "id": None}]) for i in range(4)] + ["done"]
    db = tmp_path / "t.db"
    create_agent(ScriptedChatModel(responses={"go": script}), [dump]).invoke(
        {"messages": [HumanMessage("go")]}, {"callbacks": [TraceRecorder(TraceStore(db))]})
    store = TraceStore(db)
    trace = next(store.traces())
    assert len(trace.completions) == 5 and trace.completions[-1].messages[-1].content == big
    store._db.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    size = sum(p.stat().st_size for p in tmp_path.glob("t.db*"))
    assert size < 45_000_000  # 4 observations of 10 MB once each (was 101 MB: every call repeated them)


@pytest.mark.slow
def test_eval_results_are_reused_only_for_the_same_spec(tmp_path, tiny_model_dir):
    from fcagent.pipeline.evaluate import evaluate

    out = tmp_path / "eval"
    first = evaluate({"m": "reference"}, task="math", limit=3, out_dir=out)
    assert first["models"]["m"]["correct"] == 3
    second = evaluate({"m": f"{tiny_model_dir}?max_new_tokens=4"}, task="math", limit=3, out_dir=out)
    assert second["models"]["m"]["correct"] == 0 and second["models"]["m"]["spec"].endswith("max_new_tokens=4")


# --- bad input: one line, never a traceback, never a silent success ---------------------------------


def test_reference_teacher_with_samples_as_the_readme_shows(tmp_path):
    result = runner.invoke(app, ["harvest", "--task", "math", "-m", "reference", "--candidates", "4", "--limit", "2",
                                 "--store", str(tmp_path / "t.db")])
    assert result.exit_code == 0, result.output
    trace = next(TraceStore(tmp_path / "t.db").traces())
    assert len(trace.completions[0].candidates) == 4


@pytest.mark.slow
def test_silent_wrong_results_are_now_errors(tmp_path, tiny_model_dir):
    missing = tmp_path / "missing.db"
    for cmd in (["traces", "ls"], ["traces", "stats"], ["traces", "show"], ["export", "--out", str(tmp_path / "o")],
                ["traces", "export", str(tmp_path / "x.jsonl")]):
        result = runner.invoke(app, [*cmd, "--store", str(missing)], env={"COLUMNS": "300"})
        assert result.exit_code == 2 and "does not exist" in result.output, cmd
    assert not missing.exists()
    for args, expected in ((["run", "--task", "math", "--data-dir", "/typo", "--model", "reference"], "not a folder"),
                           (["run", "--task", "math:", "--model", "reference"], "names no source"),
                           (["run", "--task", "math", "--limit", "0"], "--limit"),
                           (["run", "--task", "math", "--max-agent-steps", "0"], "--max-agent-steps"),
                           (["harvest", "--limit", "-1"], "--limit"),
                           (["harvest", "--candidates", "0"], "--candidates"),
                           (["harvest", "--split", "bogus"], "--split"),
                           (["export", "--kind", "bogus"], "--kind"),
                           (["export", "--level", "bogus"], "--level"),
                           (["export", "--max-pairs-per-context", "0"], "--max-pairs-per-context"),
                           (["train", "--pairs", "x", "--method", "bogus"], "--method"),
                           (["replay", "-m", "x", "--candidates", "0"], "--candidates"),
                           (["train", "--pairs", "x", "--max-optimizer-steps", "0"], "--max-optimizer-steps"),
                           (["distill", "--test-problems", "-1"], "--test-problems"),
                           (["eval", "--model", "a=reference", "--model", "a=reference"], "given twice"),
                           (["eval", "--model", "a/b=reference"], "must be letters"),
                           (["eval", "--model", f"m={tiny_model_dir}?n=0", "--task", "math", "--limit", "1"], "greater than or equal to 1"),
                           (["eval", "--model", f"m={tiny_model_dir}?max_new_tokens=-5", "--task", "math", "--limit", "1"], "max_new_tokens")):
        result = runner.invoke(app, args, env={"COLUMNS": "300"})
        assert result.exit_code != 0 and expected in result.output, (args, result.output)
        assert result.exception is None or isinstance(result.exception, SystemExit), (args, result.exception)


@pytest.mark.slow
def test_bad_files_get_a_line_naming_the_file(tmp_path):
    db = _harvested(tmp_path, 1)
    bad_utf8 = tmp_path / "bad.jsonl"
    bad_utf8.write_bytes(b"\xff\xfe\x00garbage")
    cases = [
        (["traces", "import", str(tmp_path / "nope.jsonl")], "no such file"),
        (["traces", "import", str(tmp_path)], "is a folder"),
        (["traces", "import", str(bad_utf8)], "not UTF-8"),
        (["traces", "import", str(db)], "SQLite store, not a JSONL export"),
        (["train", "--pairs", str(bad_utf8)], "not UTF-8"),
        (["train", "--pairs", str(tmp_path), "--method", "sft"], "export with `fcagent export --kind"),
    ]
    for i, (text, expected) in enumerate((("- a\n- b\n", "must be a mapping"), ("lr: [\n", "not valid YAML"),
                                          ("epochz: 3\n", "epochz"))):
        cfg = tmp_path / f"cfg{i}.yaml"
        cfg.write_text(text)
        cases.append((["train", "--pairs", str(tmp_path), "--config", str(cfg)], expected))
    cases.append((["train", "--pairs", str(tmp_path), "--config", str(tmp_path / "none.yaml")], "no such file"))
    sft_dir = tmp_path / "sft"
    sft_dir.mkdir()
    (sft_dir / "sft.jsonl").write_text(json.dumps({"messages": "not a list"}) + "\n")
    cases.append((["train", "--pairs", str(sft_dir), "--method", "sft"], "`messages` must be a non-empty list"))
    out_file = tmp_path / "file.txt"
    out_file.write_text("x")
    cases.append((["export", "--out", str(out_file), "--store", str(db)], "is a file"))
    for args, expected in cases:
        result = runner.invoke(app, args, env={"COLUMNS": "300"})
        assert result.exit_code == 2 and expected in result.output, (args, result.output)
    corrupt = tmp_path / "corrupt.db"
    data = bytearray(db.read_bytes())
    data[5000:9000] = b"\x00\x17" * 2000  # a damaged page in the middle
    corrupt.write_bytes(bytes(data))
    for cmd in (["traces", "stats"], ["export", "--out", str(tmp_path / "c")]):
        result = runner.invoke(app, [*cmd, "--store", str(corrupt)], env={"COLUMNS": "300"})
        assert result.exit_code != 0 and "Traceback" not in result.output and result.exception is None or \
            isinstance(result.exception, SystemExit), (cmd, result.output)


def test_readers_open_the_store_read_only_and_refuse_what_is_not_a_store(tmp_path):
    """Listing and exporting open the store read-only: nothing is created or migrated, a store on a
    read-only medium reads (`immutable` when even `mode=ro` cannot open it), and an empty or foreign file
    is an error, not a new store."""
    from fcagent.core.errors import StoreError

    db = _harvested(tmp_path, 2)
    folder = db.parent
    for extra in folder.glob("t.db-*"):  # as a copy on a read-only medium would be: the file alone
        extra.unlink()
    before = sorted(p.name for p in folder.iterdir())
    reader = TraceStore(db, read_only=True)
    assert reader.count() == 2 and len(list(reader.traces())) == 2
    with pytest.raises(StoreError, match="read-only"):
        reader.label(reader.latest_episode_id(), False, "no")
    assert sorted(p.name for p in folder.iterdir()) == before or reader._db._read_uri.endswith("mode=ro")
    result = runner.invoke(app, ["traces", "stats", "--store", str(db)])
    assert result.exit_code == 0 and '"episodes": 2' in result.output
    empty = tmp_path / "empty.jsonl"
    empty.write_bytes(b"")
    for args in (["traces", "ls"], ["traces", "stats"], ["export", "--out", str(tmp_path / "o")]):
        result = runner.invoke(app, [*args, "--store", str(empty)])
        assert result.exit_code == 2 and "empty file, not a trace store" in result.output, result.output
    assert empty.read_bytes() == b""  # untouched, not turned into a store
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    result = runner.invoke(app, ["traces", "stats", "--store", str(text)])
    assert result.exit_code == 2 and "not an SQLite trace store" in result.output


def test_an_import_stopped_by_a_full_disk_says_how_far_it_got_and_a_rerun_finishes(tmp_path, monkeypatch):
    source = _harvested(tmp_path, 4)
    exported = tmp_path / "all.jsonl"
    TraceStore(source).export_jsonl(exported)
    target = tmp_path / "target.db"
    original = TraceStore._insert
    writes = {"n": 0}

    def full_after_two(self, rows, replace):
        writes["n"] += 1
        if writes["n"] > 2:
            raise sqlite3.OperationalError("database or disk is full")
        return original(self, rows, replace)

    monkeypatch.setattr(TraceStore, "_insert", full_after_two)
    result = runner.invoke(app, ["traces", "import", str(exported), "--store", str(target)])
    assert result.exit_code == 1 and "2 of 4 episodes" in result.output and "Run the same import again" in result.output
    monkeypatch.setattr(TraceStore, "_insert", original)
    result = runner.invoke(app, ["traces", "import", str(exported), "--store", str(target)])
    assert result.exit_code == 0 and "added 2 episodes, 2 were already present" in result.output
    assert TraceStore(target).count() == 4
