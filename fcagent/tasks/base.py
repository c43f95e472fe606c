"""What a task is: problems, a toolset per problem, worked examples, and a verifier."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Literal

from langchain_core.tools import BaseTool
from pydantic import BaseModel, Field

from fcagent.core.calls import Call

__all__ = ["Problem", "Verdict", "Task", "WorkedExample", "split_of", "DataError", "read_json_records"]

Split = Literal["train", "test"]


class DataError(ValueError):
    """A data file is malformed; the message names the file, line and field."""


class Problem(BaseModel):
    """One task problem: what the agent is asked, and what is known to be right."""

    id: str
    task: str  # family, e.g. "math"
    source: str  # e.g. "gsm8k", "generated", "simple_python"
    question: str
    system: str | None = None  # a system message that belongs to the problem (BFCL live)
    answer: Any = None  # gold final answer (None where the gold is a set of calls)
    # Gold chain: steps, each step the calls the model makes in one turn. The last step of an
    # executed task is `final_answer`. None where the data gives no chain.
    gold_chain: list[list[Call]] | None = None
    functions: list[dict[str, Any]] = Field(default_factory=list)  # per-problem function docs (BFCL)
    meta: dict[str, Any] = Field(default_factory=dict)
    fixed_split: Split | None = None  # where the data has official splits (GSM8K), they win

    @property
    def split(self) -> Split:
        return self.fixed_split or split_of(self.id)


class Verdict(BaseModel):
    """The task checker's judgement of one episode."""

    success: bool
    reason: str


class WorkedExample(BaseModel):
    """A solved problem shown in the text-protocol prompt (the paper's in-context examples)."""

    question: str
    steps: list[tuple[str, str]]  # (assistant call text, observation); the last observation may be ""


def split_of(problem_id: str, test_fraction: float = 0.4) -> Split:
    """Deterministic split by id hash, so training and evaluation problems never overlap."""
    bucket = int(hashlib.sha1(problem_id.encode()).hexdigest(), 16) % 10
    return "test" if bucket < round(test_fraction * 10) else "train"


def read_json_records(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield (line number, record) from a JSON array file or a JSON Lines file, with clear errors."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    yield from parse_json_records(text, path)


def parse_json_records(text: str, path: Path | str) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, record) of JSON text read from `path` (an array, or one object per line); errors
    name the file and line."""
    if text.lstrip().startswith("["):
        try:
            rows = json.loads(text)
        except json.JSONDecodeError as exc:
            raise DataError(f"{path}:{exc.lineno}: invalid JSON ({exc.msg})") from None
        for i, row in enumerate(rows, 1):
            if not isinstance(row, dict):
                raise DataError(f"{path}: item {i} is not an object")
            yield i, row
        return
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(f"{path}:{lineno}: invalid JSON ({exc.msg})") from None
        if not isinstance(row, dict):
            raise DataError(f"{path}:{lineno}: expected a JSON object")
        yield lineno, row


def require(row: dict[str, Any], field: str, where: str) -> Any:
    if field not in row:
        raise DataError(f"{where}: missing field `{field}`")
    return row[field]


class Task:
    """A task family: loads problems, gives each its tools, verifies the episode.

    Subclasses implement `load`, `tools_for`, `verify`; `execute` says whether the graph runs the
    tools (BFCL's functions are only checked, never run, so its episodes end after one turn).
    """

    name: str = ""
    execute: bool = True
    instructions: str = ""
    max_steps: int = 8  # the graph's step limit for this task
    max_new_tokens: int = 64  # enough for one call of this task; a small model that rambles stops here
    # Every good reply opens with exactly one call, so a local model is made to start its reply as one
    # (`decoding()`); False where a reply may hold several calls, or none.
    one_call_replies: bool = True
    CALL_PREFIX = '{"name": "'  # how a one-call reply opens in fcagent's call format

    def __init__(self, source: str | None = None, *, data_dir: str | Path | None = None):
        self.source = source
        self.data_dir = Path(data_dir) if data_dir else None

    def load(self, *, split: Split | None = None, limit: int | None = None, seed: int = 0) -> list[Problem]:
        raise NotImplementedError

    def tools_for(self, problem: Problem | None) -> list[BaseTool]:
        raise NotImplementedError

    def verify(self, problem: Problem, *, final_answer: Any, calls: list[Call]) -> Verdict:
        raise NotImplementedError

    def examples(self) -> list[WorkedExample]:
        return []

    def decoding(self) -> dict[str, Any]:
        """The decoding defaults of a local model on this task (`ModelSpec.for_task`): the token budget of
        one reply, and a reply forced to open as a JSON call where every good reply is one call."""
        return {"max_new_tokens": self.max_new_tokens, **({"response_prefix": self.CALL_PREFIX}
                                                            if self.one_call_replies else {})}

    @property
    def spec(self) -> str:
        return f"{self.name}:{self.source}" if self.source else self.name

    def _filter(self, problems: list[Problem], split: Split | None, limit: int | None) -> list[Problem]:
        if split:
            problems = [p for p in problems if p.split == split]
        return problems[:limit] if limit else problems



ToolFactory = Callable[[Problem | None], list[BaseTool]]
