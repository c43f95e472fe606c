"""The CLI's one vocabulary: every option that more than one command takes is defined here once.

* `-m/--model` (`$FCAGENT_MODEL`) wherever one model is meant; `--teacher` / `--student` where a
  command has both roles (`distill`, `serve`).
* `--store` (`$FCAGENT_STORE`) on every command that reads or writes traces; `run` and `serve` record
  only when a store is named (by the option or the variable).
* `--max-agent-steps` (model calls per problem) and `--max-optimizer-steps` (training) are never one name.
* `--candidates`: replies sampled per model call, wherever a command samples.
* `--seed` says, on each command, what it seeds.

Only the standard library, typer and click are imported here: `fcagent --help` must stay fast.
"""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer

DEFAULT_STORE = "fcagent-traces.db"  # the same name as `fcagent.tracing.store.DEFAULT_STORE` (a test checks)
DEFAULT_MODEL = "bundled:smollm2-135m"

MODEL_HELP = ("Model spec: bundled:smollm2-135m, a run folder, a model folder, hf:org/name, provider:model "
              "(openai:gpt-4.1), `reference` (the task's gold chains); `?key=value` settings may follow.")


class Split(str, Enum):
    train = "train"
    test = "test"


class ProtocolChoice(str, Enum):
    auto = "auto"
    native = "native"
    text = "text"


class MethodChoice(str, Enum):
    dpo = "dpo"
    sft = "sft"
    rpo = "rpo"
    sft_dpo = "sft-dpo"
    sft_rpo = "sft-rpo"
    sft_chosen = "sft-chosen"


TaskOpt = Annotated[str, typer.Option("--task", "-t", help="Task spec: math, math:gsm8k, logic:prontoqa, "
                                      "bfcl:simple_python, bfcl:simple_python+multiple, ...")]
# A string, not a Path: Path() would merge a URL's `//`.
StoreOpt = Annotated[str, typer.Option("--store", envvar="FCAGENT_STORE",
                                       help="The trace store: an SQLite file, or a PostgreSQL database's URL "
                                       "(postgresql://user@host:5432/dbname).")]
# `run` and `serve` record only into a store that is named (here or in $FCAGENT_STORE).
RecordStoreOpt = Annotated[Optional[str], typer.Option(
    "--store", envvar="FCAGENT_STORE", help="Record every episode into this trace store (default: $FCAGENT_STORE; "
    "neither set: nothing is recorded).")]
DataOpt = Annotated[Optional[Path], typer.Option(
    "--data-dir", help="Folder holding the task data (default: $FCAGENT_DATA, ./data, ../shared/data).")]
ProtocolOpt = Annotated[ProtocolChoice, typer.Option(
    help="How the graph talks to the model: `native` tool calls, `text` (functions in the prompt, the call "
    "written as JSON), or `auto` (the model's preference).")]
MaxAgentStepsOpt = Annotated[Optional[int], typer.Option(
    "--max-agent-steps", min=1, max=1000, help="Model calls per problem before the run stops (default: the task's).")]
CandidatesOpt = Annotated[int, typer.Option(
    "--candidates", min=1, max=64, help="Replies sampled per model call (K), from one shared prompt pass.")]


def model_option(default: str | None = DEFAULT_MODEL, *, help: str = MODEL_HELP) -> typer.models.OptionInfo:
    """`-m/--model`, read from $FCAGENT_MODEL when not given."""
    return typer.Option(default, "--model", "-m", envvar="FCAGENT_MODEL", help=help)
