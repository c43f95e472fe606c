"""fcagent: turn a function-calling agent's own traces into a cheaper model."""

from fcagent.calls import Call, CallParseError, format_calls, parse_calls
from fcagent.constrained import Constrainer, call_schema
from fcagent.errors import RunFailure, UserError
from fcagent.graph import AgentState, build_agent_graph
from fcagent.compare import compare_seeds
from fcagent.distill import distill
from fcagent.evaluate import evaluate
from fcagent.export import export_preference_pairs, export_sft
from fcagent.feedback import read_feedback
from fcagent.harvest import harvest
from fcagent.middleware import StudentMiddleware, TraceMiddleware
from fcagent.models import load_chat_model
from fcagent.recorder import TraceRecorder
from fcagent.redact import Redactor
from fcagent.store import TraceStore
from fcagent.records import Label, StepError
from fcagent.tasks import Problem, Task, Verdict, get_task
from fcagent.replay import replay
from fcagent.soup import average_students
from fcagent.teacher import ReferenceTeacher
from fcagent.train import LoraSettings, TrainSettings, train, train_dpo, train_sft

__all__ = [
    "AgentState",
    "Call",
    "CallParseError",
    "Constrainer",
    "Label",
    "Problem",
    "Redactor",
    "ReferenceTeacher",
    "RunFailure",
    "StepError",
    "Task",
    "TraceMiddleware",
    "TraceRecorder",
    "TraceStore",
    "UserError",
    "Verdict",
    "LoraSettings",
    "StudentMiddleware",
    "TrainSettings",
    "average_students",
    "build_agent_graph",
    "call_schema",
    "compare_seeds",
    "distill",
    "evaluate",
    "export_preference_pairs",
    "export_sft",
    "harvest",
    "replay",
    "train",
    "train_dpo",
    "train_sft",
    "format_calls",
    "get_task",
    "load_chat_model",
    "parse_calls",
    "read_feedback",
]

__version__ = "0.1.0"
