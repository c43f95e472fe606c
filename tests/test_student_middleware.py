import json

from langchain.agents import create_agent
from langchain_core.messages import AIMessage, HumanMessage
from langchain_core.tools import tool

from fcagent.agent.testing import ScriptedChatModel
from fcagent.data.export import export_preference_pairs
from fcagent.routing.middleware import StudentMiddleware
from fcagent.tracing.store import TraceStore


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


def _student_pair_labels(store):
    (trace,) = list(store.traces())
    return [(lb.success, lb.kind) for lb in trace.labels]


def test_an_answer_in_words_without_looking_anything_up_is_escalated_by_default(tmp_path):
    store = TraceStore(tmp_path / "t.db")
    student = ScriptedChatModel(model_name="student", responses=[AIMessage(content="Oslo has about 2 million people."),
                                                                 AIMessage(content="709000 people.")])
    teacher = ScriptedChatModel(model_name="teacher", responses=[
        AIMessage(content="", tool_calls=[{"name": "lookup", "args": {"city": "Oslo"}, "id": "t1"}])])
    mw = StudentMiddleware(student, teacher=teacher, store=store)
    out = create_agent(teacher, [lookup], middleware=[mw]).invoke({"messages": [HumanMessage("How many people in Oslo?")]})
    # the hallucinated answer never reached the user; the student's later grounded answer was accepted
    assert out["messages"][-1].content == "709000 people."
    assert mw.escalations == 1 and mw.student_calls == 2
    assert (False, "no_call") in _student_pair_labels(store)


def test_validate_any_a_function_and_a_judge_model():
    def run(validate, answer="It is sunny."):
        student = ScriptedChatModel(model_name="student", responses=[AIMessage(content=answer)])
        teacher = ScriptedChatModel(model_name="teacher", responses=[AIMessage(content="teacher says")])
        mw = StudentMiddleware(student, teacher=teacher, validate=validate)
        out = create_agent(teacher, [lookup], middleware=[mw]).invoke({"messages": [HumanMessage("Weather?")]})
        return out["messages"][-1].content, mw.escalations

    assert run("any") == ("It is sunny.", 0)
    assert run(lambda messages, reply: "sunny" not in reply.content) == ("teacher says", 1)
    assert run(lambda messages, reply: None) == ("It is sunny.", 0)
    assert run(ScriptedChatModel(responses=["NO: nothing supports it"])) == ("teacher says", 1)
    assert run(ScriptedChatModel(responses=["YES"])) == ("It is sunny.", 0)
    import pytest

    from fcagent.core.errors import UserError

    with pytest.raises(UserError, match="validate"):
        StudentMiddleware(ScriptedChatModel(responses=["x"]), validate="sometimes")


def test_the_students_accepted_replies_are_recorded_under_its_name(tmp_path):
    from fcagent.tracing.middleware import TraceMiddleware

    store = TraceStore(tmp_path / "t.db")
    student = ScriptedChatModel(model_name="small-student", responses=[
        AIMessage(content="", tool_calls=[{"name": "lookup", "args": {"city": "Oslo"}, "id": "a"}]),
        AIMessage(content="709000")])
    teacher = ScriptedChatModel(model_name="big-teacher", responses=["never"])
    agent = create_agent(teacher, [lookup], middleware=[TraceMiddleware(store), StudentMiddleware(student, teacher=teacher)])
    agent.invoke({"messages": [HumanMessage("Oslo?")]})
    (trace,) = list(store.traces())
    assert [c.model for c in trace.completions] == ["small-student", "small-student"]


def test_async_agents_share_the_same_decisions(tmp_path):
    import asyncio

    from fcagent.tracing.middleware import TraceMiddleware

    store = TraceStore(tmp_path / "t.db")
    student = ScriptedChatModel(model_name="student", responses=[
        AIMessage(content="", tool_calls=[{"name": "search_web", "args": {"q": "Oslo"}, "id": "s1"}]),
        AIMessage(content="709000")])
    teacher = ScriptedChatModel(model_name="teacher", responses=[
        AIMessage(content="", tool_calls=[{"name": "lookup", "args": {"city": "Oslo"}, "id": "t1"}])])
    mw = StudentMiddleware(student, teacher=teacher, store=store)
    agent = create_agent(teacher, [lookup], middleware=[TraceMiddleware(store), mw])
    out = asyncio.run(agent.ainvoke({"messages": [HumanMessage("Oslo?")]}))
    assert out["messages"][-1].content == "709000" and mw.escalations == 1
    episodes = {t.episode.name: t for t in store.traces()}
    assert set(episodes) == {"student-escalation", "create_agent"}
    assert [lb.kind for lb in episodes["student-escalation"].labels if not lb.success] == ["unknown_function"]
    assert [c.model for c in episodes["create_agent"].completions] == ["teacher", "student"]
