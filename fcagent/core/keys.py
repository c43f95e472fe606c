"""The names fcagent writes into LangChain run metadata and episode records, defined once.

fcagent's graph, the recorder, the middlewares, replay, harvest and the exporter talk to each other
through run metadata (LangChain carries it from a graph node to every callback) and through the
episode's stored metadata. Every such key and every episode role lives here, so a module never
spells one as a literal; SQL that filters by role is built from the same tuple.
"""

from __future__ import annotations

from enum import StrEnum

__all__ = ["PROTOCOL", "STEP", "TOOLS", "PROBLEM_ID", "TASK", "SPLIT", "MODEL", "ROLE", "SAMPLES", "REPLAYED", "EPISODE_ID", "DEDUPE", "PROMPT",
           "Role", "STUDENT_ROLES", "sql_list"]

PROTOCOL = "fcagent_protocol"  # "native" | "text": how the graph talks to the model
STEP = "fcagent_step"  # 1-based step number of a model call in fcagent's graph
TOOLS = "fcagent_tools"  # the function schemas of a text-protocol call (they live only in the prompt)
PROBLEM_ID = "fcagent_problem_id"
TASK = "fcagent_task"
SPLIT = "fcagent_split"
MODEL = "fcagent_model"  # the model spec that produced an episode (what `harvest --resume` matches)
ROLE = "fcagent_role"  # a `Role`
SAMPLES = "fcagent_samples"
REPLAYED = "fcagent_replayed"  # the completion id a replayed student call answers
EPISODE_ID = "fcagent_episode_id"  # the agent-state key TraceMiddleware puts the episode id under
PROMPT = "fcagent_prompt"  # the text protocol's prompt parts (system, instructions, style): re-rendered on export
DEDUPE = "fcagent_dedupe"  # an episode the store keeps at most once (`harvest --resume`: task, problem, model)


class Role(StrEnum):
    """Who produced an episode's model calls."""

    TEACHER = "teacher"
    STUDENT = "student"
    STUDENT_REPLAY = "student-replay"  # the student answering a teacher's context (`fcagent replay`)
    STUDENT_ESCALATED = "student-escalated"  # a StudentMiddleware step the teacher had to redo
    STUDENT_SHADOW = "student-shadow"  # the student's reply to a request the teacher answered (shadow mode)
    EVAL = "eval"  # a model under evaluation (`fcagent eval`)


STUDENT_ROLES: tuple[str, ...] = (Role.STUDENT.value, Role.STUDENT_REPLAY.value, Role.STUDENT_ESCALATED.value,
                                   Role.STUDENT_SHADOW.value)


def sql_list(values: tuple[str, ...]) -> str:
    """`('a','b')` for an SQL `IN` clause; only for the fixed values defined in this module."""
    return "(" + ",".join("'" + v.replace("'", "''") + "'" for v in values) + ")"
