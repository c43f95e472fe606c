"""The drop-in story on a user's own agent: a `create_agent` warehouse assistant with typed tools
(two raise `ToolException`, handled), a scripted native tool-calling "large model", 30 requests of
which 8 repeat a good request word for word with a wrong answer, feedback given per episode through
the CLI, then export: SFT rows with final answers, DPO pairs for the repeats, tools in every row."""

from __future__ import annotations

import json
import logging
import uuid
from typing import Any

import pytest
from langchain.agents import create_agent
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, HumanMessage
from langchain_core.outputs import ChatGeneration, ChatResult
from langchain_core.tools import ToolException, tool
from typer.testing import CliRunner

from fcagent import (
    Label,
    TraceMiddleware,
    TraceRecorder,
    TraceStore,
    export_preference_pairs,
    export_sft,
)
from fcagent.cli.app import app

STOCK = {f"SKU-{i}": 10 * i for i in range(1, 12)}


@tool
def check_stock(sku: str) -> int:
    """Units of a product in the warehouse."""
    if sku not in STOCK:
        raise ToolException(f"unknown SKU {sku}")
    return STOCK[sku]


check_stock.handle_tool_error = True


@tool
def reserve(sku: str, quantity: int) -> str:
    """Reserve units of a product for an order."""
    if quantity > STOCK.get(sku, 0):
        raise ToolException(f"only {STOCK.get(sku, 0)} units of {sku} left")
    return f"reserved {quantity} x {sku}"


reserve.handle_tool_error = True


@tool
def opening_hours(day: str) -> str:
    """The warehouse's opening hours on a day of the week."""
    return "8-16" if day.lower() not in ("saturday", "sunday") else "closed"


TOOLS = [check_stock, reserve, opening_hours]


def call(name: str, **args: Any) -> AIMessage:
    return AIMessage(content="", tool_calls=[{"name": name, "args": args, "id": f"call_{uuid.uuid4().hex[:8]}"}])


class WarehouseModel(BaseChatModel):
    """A scripted native tool-calling model: each question has its own list of replies, one per step
    (the replies after the question's last user message count the step)."""

    scripts: dict[str, list[Any]]
    hide_tools: bool = False  # a provider whose bind_tools keeps the schemas out of the invocation params

    @property
    def _llm_type(self) -> str:
        return "warehouse-scripted"

    @property
    def _identifying_params(self) -> dict[str, Any]:
        return {"model_name": "big-model"}

    def bind_tools(self, tools: list[Any], **kwargs: Any):
        from fcagent.agent.prompting import tool_schemas

        return self if self.hide_tools else self.bind(tools=tool_schemas(tools), **kwargs)

    def _generate(self, messages, stop=None, run_manager=None, **kwargs) -> ChatResult:
        question = next(m.content for m in reversed(messages) if isinstance(m, HumanMessage))
        step = 0
        for m in reversed(messages):
            if isinstance(m, HumanMessage):
                break
            step += isinstance(m, AIMessage)
        reply = self.scripts[question][step]
        message = reply.model_copy(deep=True) if isinstance(reply, AIMessage) else AIMessage(content=reply)
        if message.tool_calls:  # fresh ids per run, as a real model's
            message.tool_calls = [{**c, "id": f"call_{uuid.uuid4().hex[:8]}"} for c in message.tool_calls]
        return ChatResult(generations=[ChatGeneration(message=message)])


def requests() -> list[tuple[str, list[Any], bool]]:
    """(question, the model's replies, the user's verdict): 30 requests, 8 of them repeats with a wrong answer."""
    out = []
    for i in range(1, 12):
        q = f"How many units of SKU-{i} do we have?"
        out.append((q, [call("check_stock", sku=f"SKU-{i}"), f"We have {10 * i} units of SKU-{i}."], True))
    for i in range(1, 9):  # the same request, word for word: the model misreads the tool's answer
        q = f"How many units of SKU-{i} do we have?"
        out.append((q, [call("check_stock", sku=f"SKU-{i}"), f"We have {10 * i + 5} units of SKU-{i}."], False))
    for i in range(1, 6):  # a reservation the tool refuses (a handled ToolException), then a good answer
        q = f"Reserve 500 units of SKU-{i}."
        out.append((q, [call("reserve", sku=f"SKU-{i}", quantity=500),
                        f"Sorry, only {10 * i} units of SKU-{i} are left, so nothing was reserved."], True))
    for day in ("Monday", "Tuesday", "Saturday", "Sunday", "Friday", "Wednesday"):
        q = f"Are you open on {day}?"
        hours = "closed" if day in ("Saturday", "Sunday") else "8-16"
        out.append((q, [call("opening_hours", day=day), f"On {day} the warehouse is {hours}."], True))
    assert len(out) == 30
    return out


def model_for(reqs, **kw) -> WarehouseModel:
    scripts: dict[str, list[Any]] = {}
    for q, replies, _ in reqs:
        scripts.setdefault(q, replies)
    return WarehouseModel(scripts=scripts, **kw)


def run_all(reqs, agent_for, config_for) -> list[str]:
    """Runs every request (each repeat with its own script) and returns the episode ids, in order."""
    ids = []
    for q, replies, _ in reqs:
        agent = agent_for(model_for([(q, replies, True)]))
        run_id = uuid.uuid4()
        agent.invoke({"messages": [HumanMessage(q)]}, {"run_id": run_id, **config_for()})
        ids.append(str(run_id))
    return ids


def label_with_cli(store_path, reqs, ids, tmp_path) -> None:
    feedback = tmp_path / "feedback.jsonl"
    feedback.write_text("".join(json.dumps({"id": i[:12], "label": "good" if ok else "bad", "reason": "user feedback"}) + "\n"
                                for i, (_, _, ok) in zip(ids, reqs)))
    result = CliRunner().invoke(app, ["traces", "label", "--file", str(feedback), "--store", str(store_path)])
    assert result.exit_code == 0, result.output
    assert "labelled 30 (22 good, 8 bad)" in result.output


def check_export(store: TraceStore, tmp_path) -> None:
    # every request exported (test_fraction 0): the counts below are of all 30 episodes
    chains = [json.loads(line) for line in export_sft(store, tmp_path / "chains", test_fraction=0.0).path.read_text().splitlines()]
    whole = [r for r in chains if all(m.get("train") for m in r["messages"] if m["role"] == "assistant")]
    assert len(whole) == 11 + 6  # every good episode whose steps were all good: one row, every turn trained
    for r in chains:
        if "Reserve" in r["messages"][1]["content"]:  # the failed reserve call is never a target
            trained = [m["content"] for m in r["messages"] if m["role"] == "assistant" and m["train"]]
            assert trained == [r["messages"][-1]["content"]] and trained[0].startswith("Sorry")
    sft = export_sft(store, tmp_path / "sft", sft_rows="step", test_fraction=0.0)
    rows = [json.loads(line) for line in sft.path.read_text().splitlines()]
    finals = [r for r in rows if not r["messages"][-1]["content"].startswith("{")]
    calls = [r for r in rows if r["messages"][-1]["content"].startswith("{")]
    assert any("We have 30 units of SKU-3." == r["messages"][-1]["content"] for r in finals)  # final answers learnt
    assert not any('"reserve"' in r["messages"][-1]["content"] for r in calls)  # a call whose tool failed: never a target
    assert all(json.loads(r["tools"]) and {t["function"]["name"] for t in json.loads(r["tools"])} ==
               {"check_stock", "reserve", "opening_hours"} for r in rows)  # the functions the model saw
    assert all(r["messages"][0]["role"] == "system" and "check_stock" in r["messages"][0]["content"] for r in rows)
    pairs = export_preference_pairs(store, tmp_path / "pairs", test_fraction=0.0)
    prs = [json.loads(line) for line in pairs.path.read_text().splitlines()]
    wrong = [p for p in prs if p["rejected_reason"] == "final reply of an episode labelled bad"]
    assert len(wrong) == 8  # one per repeated request, the wrong answer rejected
    for p in wrong:
        assert p["chosen"][0]["content"].split()[2] != p["rejected"][0]["content"].split()[2]
        assert json.loads(p["tools"])
    stats = pairs.stats["episodes"]
    assert stats == {"labelled good": 22, "labelled bad": 8}


def test_recorder_route_episode_feedback_becomes_sft_rows_and_pairs(tmp_path):
    store_path = tmp_path / "traces.db"
    store = TraceStore(store_path)
    reqs = requests()
    recorder = TraceRecorder(store, app="warehouse")
    ids = run_all(reqs, lambda m: create_agent(m, TOOLS), lambda: {"callbacks": [recorder]})
    assert recorder.write_errors == [] and store.count() == 30
    # the episode id is the run id the app held; the handled ToolException is a labelled tool error
    trace = store.trace(ids[19])
    assert trace.episode.id == ids[19] and trace.tool_runs[0].error.startswith("only 10 units")
    (tool_label,) = [lb for lb in trace.labels if lb.source == "tool"]
    assert tool_label.kind == "tool_error" and not tool_label.success
    assert tool_label.target_id == trace.completions[0].id  # on the call that caused it
    # a native agent's answer in words is an answer, not a parse error
    assert trace.completions[-1].candidates[0].error is None
    label_with_cli(store_path, reqs, ids, tmp_path)
    check_export(store, tmp_path)


def test_middleware_route_gives_the_same_training_data(tmp_path):
    store_path = tmp_path / "traces.db"
    store = TraceStore(store_path)
    reqs = requests()
    middleware = TraceMiddleware(store)
    ids = run_all(reqs, lambda m: create_agent(m, TOOLS, middleware=[middleware]), dict)
    assert store.count() == 30 and {e.id for e in store.episodes()} == set(ids) and not middleware._open
    label_with_cli(store_path, reqs, ids, tmp_path)
    check_export(store, tmp_path)


def test_unlabelled_episodes_are_skipped_or_taken_as_good_and_counted(tmp_path):
    store = TraceStore(tmp_path / "t.db")
    reqs = requests()[:3]
    run_all(reqs, lambda m: create_agent(m, TOOLS), lambda: {"callbacks": [TraceRecorder(store)]})
    from fcagent.data.rows import ExportError

    with pytest.raises(ExportError, match="traces label ID --good/--bad.*--unlabelled good"):
        export_sft(store, tmp_path / "a")
    result = export_sft(store, tmp_path / "b", unlabelled="good")  # one whole chain per episode
    assert result.rows == 3 and result.stats["episodes"] == {"unlabelled (taken as good)": 3}
    assert export_sft(store, tmp_path / "s", unlabelled="good", sft_rows="step").rows == 6
    with pytest.raises(ExportError, match="same request answered in an episode labelled good and in one labelled bad"):
        export_preference_pairs(store, tmp_path / "c", unlabelled="good")


def test_tools_kept_out_of_invocation_params_come_from_the_recorder_or_a_warning(tmp_path, caplog):
    store = TraceStore(tmp_path / "t.db")
    q, replies, _ = requests()[0]
    hidden = model_for([(q, replies, True)], hide_tools=True)
    with caplog.at_level(logging.WARNING, logger="fcagent"):
        recorder = TraceRecorder(store)
        create_agent(hidden, TOOLS).invoke({"messages": [HumanMessage(q)]}, {"callbacks": [recorder]})
        recorder.flush()  # the episode is converted (and the warning given) on the store's writer thread
    assert "tool schemas are not in its invocation params" in caplog.text
    create_agent(hidden, TOOLS).invoke({"messages": [HumanMessage(q)]},
                                       {"callbacks": [TraceRecorder(store, tools=TOOLS)]})
    first, second = list(store.traces())
    assert first.completions[0].tools == [] and len(second.completions[0].tools) == 3


def test_a_run_that_raises_is_still_stored_by_the_middleware(tmp_path):
    store = TraceStore(tmp_path / "t.db")

    @tool
    def explode(x: str) -> str:
        """Always fails, unhandled."""
        raise RuntimeError("boom")

    model = WarehouseModel(scripts={"go": [call("explode", x="1"), "never"]})
    middleware = TraceMiddleware(store)
    agent = create_agent(model, [explode], middleware=[middleware])
    run_id = uuid.uuid4()
    with pytest.raises(RuntimeError, match="boom"):
        agent.invoke({"messages": [HumanMessage("go")]}, {"run_id": run_id})
    trace = store.trace(str(run_id))
    assert trace.episode.status == "error" and "boom" in trace.episode.error
    assert trace.tool_runs[0].error.startswith("RuntimeError") and not middleware._open


def test_cli_labels_by_prefix_lists_questions_and_shows_call_ids(tmp_path):
    store_path = tmp_path / "t.db"
    store = TraceStore(store_path)
    reqs = requests()[:2]
    ids = run_all(reqs, lambda m: create_agent(m, TOOLS), lambda: {"callbacks": [TraceRecorder(store)]})
    runner = CliRunner()
    out = runner.invoke(app, ["traces", "label", ids[0][:10], "--bad", "--reason", "wrong", "--store", str(store_path)])
    assert out.exit_code == 0 and "labelled 1 (0 good, 1 bad)" in out.output
    assert store.trace(ids[0]).episode_label().reason == "wrong"
    listing = runner.invoke(app, ["traces", "ls", "--store", str(store_path)], env={"COLUMNS": "200"})
    assert "How many units of SKU-1" in listing.output and "bad (user)" in listing.output
    short = [line.split()[1] for line in listing.output.splitlines() if "SKU-1 " in line or "SKU-1" in line][0]
    assert ids[0].startswith(short.strip("│ "))  # the listed id is one `label` and `show` accept
    shown = runner.invoke(app, ["traces", "show", ids[0][:10], "--store", str(store_path)], env={"COLUMNS": "200"})
    assert all(f"call {c.id}" in shown.output for c in store.trace(ids[0]).completions)
    missing = runner.invoke(app, ["traces", "label", "zzzz", "--good", "--store", str(store_path)])
    assert missing.exit_code != 0


def test_held_out_requests_are_never_exported_for_training(tmp_path):
    """Recorded traffic is split by request (first user message + tools): a held-out request never reaches
    the training rows, and a request asked again falls on the same side."""
    from fcagent.data.split import traffic_split

    store = TraceStore(tmp_path / "traces.db")
    reqs = requests()
    recorder = TraceRecorder(store)
    ids = run_all(reqs, lambda m: create_agent(m, TOOLS), lambda: {"callbacks": [recorder]})
    store.label_many([Label(target_id=i, success=True, source="feedback") for i in ids])
    sides: dict[str, set[str]] = {}
    for trace in store.traces():
        question = trace.completions[0].messages[0].content
        sides.setdefault(question, set()).add(traffic_split(trace.episode.request_key, 0.2))
    assert all(len(s) == 1 for s in sides.values())  # a repeated request never straddles the split
    held_out = {q for q, s in sides.items() if s == {"test"}}
    assert held_out and len(held_out) < len(sides)
    rows = [json.loads(line) for line in export_sft(store, tmp_path / "sft").path.read_text().splitlines()]
    seen = {m["content"] for r in rows for m in r["messages"] if m["role"] == "user"}
    assert seen and not seen & held_out
    assert export_sft(store, tmp_path / "all", test_fraction=0.0).rows > len(rows)
