"""Graphs served by `langgraph dev` / LangGraph Studio (named in langgraph.json).

`math_agent` runs the calculator task with the model named by $FCAGENT_MODEL (default: the
reference teacher, which needs no model download; set `bundled:smollm2-135m` for the local model).
Send `{"messages": [{"role": "user", "content": "..."}]}`, or `{"problem": {...}}` for a task problem.
"""

from __future__ import annotations

import os

from fcagent import ReferenceTeacher, build_agent_graph, get_task, load_chat_model


def _make(task_spec: str):
    task = get_task(task_spec)
    spec = os.environ.get("FCAGENT_MODEL", "reference")
    model = ReferenceTeacher(problems=task.load(limit=200)) if spec == "reference" else load_chat_model(spec)
    return build_agent_graph(model, task=task)


math_agent = _make("math")
logic_agent = _make("logic")
