"""Task suites: problems + a toolset + a verifier. `get_task("bfcl:simple_python")`."""

from __future__ import annotations

from pathlib import Path

from fcagent.tasks.base import (
    DataError,
    Problem,
    Task,
    Verdict,
    WorkedExample,
    split_of,
)
from fcagent.tasks.bfcl import BfclTask, check_bfcl
from fcagent.tasks.logic import LogicTask
from fcagent.tasks.math import MathTask

__all__ = ["get_task", "Task", "Problem", "Verdict", "WorkedExample", "DataError", "split_of", "MathTask",
           "LogicTask", "BfclTask", "check_bfcl", "TASK_FAMILIES"]

TASK_FAMILIES: dict[str, type[Task]] = {"math": MathTask, "logic": LogicTask, "bfcl": BfclTask}


def get_task(spec: str, *, data_dir: str | Path | None = None) -> Task:
    """A task from its spec: a family and optionally a source, e.g. `math`, `math:gsm8k`, `bfcl:multiple`."""
    family, colon, source = (spec or "").partition(":")
    if family not in TASK_FAMILIES:
        raise DataError(f"`task` must be one of {', '.join(TASK_FAMILIES)} (optionally `family:source`), got {spec!r}")
    if colon and not source.strip():
        raise DataError(f"`task` {spec!r} names no source after the colon (e.g. `{family}` or `{family}:<source>`)")
    return TASK_FAMILIES[family](source or None, data_dir=data_dir)
