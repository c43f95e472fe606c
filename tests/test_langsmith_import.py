"""LangSmith harvest, offline: Run objects shaped as the client returns them (LangChainTracer's format)."""

import datetime as dt
import uuid

from langchain_core.load import dumpd
from langchain_core.messages import AIMessage, HumanMessage, SystemMessage
from langsmith.schemas import Feedback, Run

from fcagent.tracing.langsmith_import import import_langsmith
from fcagent.tracing.store import TraceStore


def make_runs():
    trace = uuid.uuid4()
    t0 = dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)
    sec = dt.timedelta(seconds=1)
    root = Run(id=trace, trace_id=trace, name="agent", run_type="chain", start_time=t0, end_time=t0 + 5 * sec,
               inputs={"messages": []}, outputs={}, extra={"metadata": {"user": "u1"}})
    call = AIMessage(content="", tool_calls=[{"name": "get_weather", "args": {"city": "Oslo"}, "id": "c1"}])
    llm = Run(id=uuid.uuid4(), trace_id=trace, parent_run_id=trace, name="ChatOpenAI", run_type="llm",
              start_time=t0 + sec, end_time=t0 + 2 * sec,
              inputs={"messages": [[dumpd(SystemMessage("be brief")), dumpd(HumanMessage("weather in Oslo?"))]]},
              outputs={"generations": [[{"text": "", "type": "ChatGeneration", "message": dumpd(call)}]]},
              extra={"invocation_params": {"model": "gpt-4.1", "api_key": "sk-should-not-be-stored-12345678",
                                           "tools": [{"type": "function", "function": {"name": "get_weather", "parameters": {}}}]}})
    tool = Run(id=uuid.uuid4(), trace_id=trace, parent_run_id=trace, name="get_weather", run_type="tool",
               start_time=t0 + 2 * sec, end_time=t0 + 3 * sec, inputs={"input": {"city": "Oslo"}}, outputs={"output": "rain"})
    feedback = [Feedback(id=uuid.uuid4(), run_id=trace, trace_id=trace, created_at=t0, modified_at=t0, key="user_score",
                         score=0, comment="wrong city")]
    return [root, llm, tool], feedback


class FakeClient:
    def __init__(self, runs, feedback):
        self.runs, self.feedback = runs, feedback

    def list_runs(self, project_name=None, limit=None):
        assert project_name == "prod-agent"
        return iter(self.runs)

    def list_feedback(self, run_ids=None):
        return iter([f for f in self.feedback if f.run_id in set(run_ids)])


def test_import_runs_and_feedback_idempotently(tmp_path):
    store = TraceStore(tmp_path / "t.db")
    client = FakeClient(*make_runs())
    info = import_langsmith(store, project="prod-agent", client=client)
    assert info == {"runs": 3, "episodes_added": 1, "feedback": 1}
    (trace,) = list(store.traces())
    (c,) = trace.completions
    assert [(m.role, m.content) for m in c.messages] == [("system", "be brief"), ("user", "weather in Oslo?")]
    assert c.candidates[0].calls == [{"name": "get_weather", "args": {"city": "Oslo"}}]
    assert c.tools[0]["function"]["name"] == "get_weather" and c.model == "gpt-4.1" and "api_key" not in c.params
    assert [(t.name, t.args, t.output) for t in trace.tool_runs] == [("get_weather", {"city": "Oslo"}, "rain")]
    label = trace.episode_label()
    assert label.success is False and label.source == "langsmith:user_score" and label.reason == "wrong city"
    assert trace.episode.metadata["user"] == "u1"
    again = import_langsmith(store, project="prod-agent", client=client)
    assert again["episodes_added"] == 0 and store.count() == 1 and store.count("labels") == 1


def test_tool_outputs_are_their_content_and_a_tool_error_labels_its_call(tmp_path):
    from langchain_core.messages import ToolMessage

    runs, _ = make_runs()
    root, llm, tool = runs
    tool.outputs = {"output": dumpd(ToolMessage("no such city", tool_call_id="c1", status="error", name="get_weather"))}
    final = Run(id=uuid.uuid4(), trace_id=root.id, parent_run_id=root.id, name="ChatOpenAI", run_type="llm",
                start_time=tool.end_time, end_time=tool.end_time + dt.timedelta(seconds=1),
                inputs={"messages": [[dumpd(HumanMessage("weather in Oslo?"))]]},
                outputs={"generations": [[{"text": "Sorry.", "type": "ChatGeneration", "message": dumpd(AIMessage("Sorry."))}]]},
                extra={"invocation_params": {"model": "gpt-4.1"}})
    store = TraceStore(tmp_path / "t.db")
    import_langsmith(store, project="prod-agent", client=FakeClient([root, llm, tool, final], []))
    (trace,) = list(store.traces())
    (run,) = trace.tool_runs
    assert run.output is None or "ToolMessage" not in (run.output or "")
    assert run.error == "no such city" and run.tool_call_id == "c1"
    (tool_label,) = [lb for lb in trace.labels if lb.source == "tool"]
    assert tool_label.target_id == str(llm.id) and tool_label.kind == "tool_error"
    # the final answer in words is an answer, not a parse error
    assert trace.completions[-1].candidates[0].error is None


def test_without_a_key_nothing_is_contacted(tmp_path, monkeypatch):
    import pytest

    from fcagent.core.errors import UserError

    monkeypatch.delenv("LANGSMITH_API_KEY", raising=False)
    monkeypatch.delenv("LANGCHAIN_API_KEY", raising=False)
    with pytest.raises(UserError, match="LANGSMITH_API_KEY"):
        import_langsmith(tmp_path / "t.db", project="p")
