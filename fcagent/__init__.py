"""fcagent: turn a function-calling agent's own traces into a cheaper model."""

from fcagent.calls import Call, CallParseError, format_calls, parse_calls
from fcagent.errors import RunFailure, UserError
from fcagent.graph import AgentState, build_agent_graph
from fcagent.middleware import TraceMiddleware
from fcagent.models import load_chat_model
from fcagent.recorder import TraceRecorder
from fcagent.redact import Redactor
from fcagent.store import TraceStore
from fcagent.tasks import Problem, Task, Verdict, get_task
from fcagent.teacher import ReferenceTeacher

__all__ = [
    "AgentState",
    "Call",
    "CallParseError",
    "Problem",
    "Redactor",
    "ReferenceTeacher",
    "RunFailure",
    "Task",
    "TraceMiddleware",
    "TraceRecorder",
    "TraceStore",
    "UserError",
    "Verdict",
    "build_agent_graph",
    "format_calls",
    "get_task",
    "load_chat_model",
    "parse_calls",
]

__version__ = "0.1.0"
