"""fcagent: turn a function-calling agent's own traces into a cheaper model.

The public names below are imported on first use (PEP 562), so `import fcagent` and `fcagent --help`
load nothing heavy: LangGraph alone takes over a second to import. The packages follow the data flow
(see docs/architecture.md): tasks and agent → tracing → data → models → training → routing and
serving → pipeline.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# public name -> the module that defines it
_EXPORTS: dict[str, str] = {
    # core
    "Call": "fcagent.core.calls", "CallParseError": "fcagent.core.calls", "format_calls": "fcagent.core.calls",
    "parse_calls": "fcagent.core.calls",
    "UserError": "fcagent.core.errors", "RunFailure": "fcagent.core.errors", "StoreError": "fcagent.core.errors",
    "StoreWriteError": "fcagent.core.errors",
    "Label": "fcagent.core.records", "StepError": "fcagent.core.records", "LabelSource": "fcagent.core.records",
    "PairSource": "fcagent.core.records",
    # tasks and the agent
    "Problem": "fcagent.tasks", "Task": "fcagent.tasks", "Verdict": "fcagent.tasks", "get_task": "fcagent.tasks",
    "AgentState": "fcagent.agent.graph", "build_agent_graph": "fcagent.agent.graph",
    "PromptStyle": "fcagent.agent.prompting",
    "ReferenceTeacher": "fcagent.agent.teacher",
    # tracing
    "TraceStore": "fcagent.tracing.store", "TraceRecorder": "fcagent.tracing.recorder",
    "TraceMiddleware": "fcagent.tracing.middleware", "Redactor": "fcagent.tracing.redact",
    "read_feedback": "fcagent.tracing.feedback", "OtlpSink": "fcagent.tracing.otlp.outbound",
    "import_otlp": "fcagent.tracing.otlp.inbound",
    # data
    "export_preference_pairs": "fcagent.data.export", "export_sft": "fcagent.data.export",
    "ExportLayout": "fcagent.data.layout", "load_pairs": "fcagent.data.rows",
    # models
    "load_chat_model": "fcagent.models.loading", "ModelSpec": "fcagent.models.spec",
    "Constrainer": "fcagent.models.local.constrained", "call_schema": "fcagent.models.local.constrained",
    # training
    "LoraSettings": "fcagent.training.settings", "TrainSettings": "fcagent.training.settings",
    "train": "fcagent.training.train", "train_dpo": "fcagent.training.train", "train_sft": "fcagent.training.train",
    "average_students": "fcagent.training.soup",
    # routing and serving
    "StudentMiddleware": "fcagent.routing.middleware", "StudentCheck": "fcagent.routing.check",
    # pipeline
    "harvest": "fcagent.pipeline.harvest", "replay": "fcagent.pipeline.replay", "evaluate": "fcagent.pipeline.evaluate",
    "compare_seeds": "fcagent.pipeline.compare", "distill": "fcagent.pipeline.distill",
    "evaluate_traffic": "fcagent.pipeline.traffic", "distill_traffic": "fcagent.pipeline.distill_traffic",
    "Gate": "fcagent.pipeline.promotion", "promote": "fcagent.pipeline.promotion",
    "record_demo_traffic": "fcagent.pipeline.demo_traffic",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'fcagent' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # the next access is a plain attribute
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])


if TYPE_CHECKING:  # what a type checker and an IDE see
    from fcagent.agent.graph import AgentState, build_agent_graph
    from fcagent.agent.prompting import PromptStyle
    from fcagent.agent.teacher import ReferenceTeacher
    from fcagent.core.calls import Call, CallParseError, format_calls, parse_calls
    from fcagent.core.errors import RunFailure, StoreError, StoreWriteError, UserError
    from fcagent.core.records import Label, LabelSource, PairSource, StepError
    from fcagent.data.export import export_preference_pairs, export_sft
    from fcagent.data.layout import ExportLayout
    from fcagent.data.rows import load_pairs
    from fcagent.models.loading import load_chat_model
    from fcagent.models.local.constrained import Constrainer, call_schema
    from fcagent.models.spec import ModelSpec
    from fcagent.pipeline.compare import compare_seeds
    from fcagent.pipeline.demo_traffic import record_demo_traffic
    from fcagent.pipeline.distill import distill
    from fcagent.pipeline.distill_traffic import distill_traffic
    from fcagent.pipeline.evaluate import evaluate
    from fcagent.pipeline.harvest import harvest
    from fcagent.pipeline.promotion import Gate, promote
    from fcagent.pipeline.replay import replay
    from fcagent.pipeline.traffic import evaluate_traffic
    from fcagent.routing.check import StudentCheck
    from fcagent.routing.middleware import StudentMiddleware
    from fcagent.tasks import Problem, Task, Verdict, get_task
    from fcagent.tracing.feedback import read_feedback
    from fcagent.tracing.middleware import TraceMiddleware
    from fcagent.tracing.otlp.inbound import import_otlp
    from fcagent.tracing.otlp.outbound import OtlpSink
    from fcagent.tracing.recorder import TraceRecorder
    from fcagent.tracing.redact import Redactor
    from fcagent.tracing.store import TraceStore
    from fcagent.training.settings import LoraSettings, TrainSettings
    from fcagent.training.soup import average_students
    from fcagent.training.train import train, train_dpo, train_sft
