import json

from langchain.agents import create_agent
from langchain_core.messages import AIMessage, HumanMessage
from langchain_core.tools import tool

from fcagent.export import export_preference_pairs
from fcagent.middleware import StudentMiddleware
from fcagent.store import TraceStore
from fcagent.testing import ScriptedChatModel


@tool
def lookup(city: str) -> str:
    """Population of a city."""
    return {"Oslo": "709000"}.get(city, "unknown")


def test_failed_student_step_escalates_to_teacher_and_the_pair_is_stored(tmp_path):
    store = TraceStore(tmp_path / "t.db")
    student = ScriptedChatModel(model_name="student", responses=[
        AIMessage(content="", tool_calls=[{"name": "search_web", "args": {"q": "Oslo"}, "id": "s1"}]),  # unknown function
        AIMessage(content="Oslo has 709000 people."),
    ])
    teacher = ScriptedChatModel(model_name="teacher", responses=[
        AIMessage(content="", tool_calls=[{"name": "lookup", "args": {"city": "Oslo"}, "id": "t1"}]),
    ])
    middleware = StudentMiddleware(student, teacher=teacher, store=store)
    agent = create_agent(teacher, [lookup], middleware=[middleware])
    out = agent.invoke({"messages": [HumanMessage("How many people live in Oslo?")]})
    assert out["messages"][-1].content == "Oslo has 709000 people."  # the run succeeded
    assert middleware.escalations == 1 and middleware.student_calls == 2
    assert len(teacher.seen_messages) == 1  # the teacher answered only the failed step
    (trace,) = list(store.traces())
    assert [lb.reason.split(":")[0] for lb in trace.labels] == ["teacher answer after a student failure", "unknown_function"]
    pairs = export_preference_pairs(store, tmp_path / "pairs")
    (row,) = [json.loads(x) for x in pairs.path.read_text().splitlines()]
    assert row["source"] == "teacher_student"
    assert '"lookup"' in row["chosen"][0]["content"] and '"search_web"' in row["rejected"][0]["content"]


def test_valid_student_steps_never_reach_the_teacher():
    student = ScriptedChatModel(responses=[AIMessage(content="", tool_calls=[{"name": "lookup", "args": {"city": "Oslo"}, "id": "a"}]),
                                           AIMessage(content="709000")])
    teacher = ScriptedChatModel(responses=["never"])
    mw = StudentMiddleware(student, teacher=teacher)
    create_agent(teacher, [lookup], middleware=[mw]).invoke({"messages": [HumanMessage("Oslo?")]})
    assert mw.escalations == 0 and teacher.seen_messages == []
