"""`fcagent export`: labelled traces as DPO pairs or SFT rows, in TRL's conversational format or OpenAI's."""

from __future__ import annotations

import json
from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer

from fcagent.cli.app import app, console, open_store
from fcagent.cli.options import DEFAULT_STORE, StoreOpt
from fcagent.core.errors import UserError


class Kind(str, Enum):
    dpo = "dpo"
    sft = "sft"


class Level(str, Enum):
    step = "step"
    trajectory = "trajectory"
    both = "both"


class Unlabelled(str, Enum):
    skip = "skip"
    good = "good"


class SftRows(str, Enum):
    chain = "chain"
    step = "step"


class PromptStyleChoice(str, Enum):
    examples = "examples"
    compact = "compact"


class FormatChoice(str, Enum):
    trl = "trl"
    openai = "openai"


@app.command("export")
def export_cmd(out: Annotated[Path, typer.Option("--out", help="Output folder.")] = Path("pairs"),
               store: StoreOpt = Path(DEFAULT_STORE),
               kind: Annotated[Kind, typer.Option(help="dpo (preference pairs) or sft (good completions).")] = Kind.dpo,
               format: Annotated[FormatChoice, typer.Option(
                   help="trl (TRL's conversational rows, what `fcagent train` reads) or openai (OpenAI's "
                        "fine-tuning JSONL: chat rows with tools, preference rows).")] = FormatChoice.trl,
               level: Annotated[Level, typer.Option(help="Pair sources besides teacher-vs-student.")] = Level.both,
               teacher_student: Annotated[bool, typer.Option(help="Include teacher-vs-student pairs.")] = True,
               task: Annotated[Optional[str], typer.Option(help="Only this task family.")] = None,
               unlabelled: Annotated[Unlabelled, typer.Option(help="Episodes nobody labelled: skip, or take them as good.")] = Unlabelled.skip,
               sft_rows: Annotated[SftRows, typer.Option(help="SFT: a row per good chain (every turn trained) or per step.")] = SftRows.chain,
               prompt_style: Annotated[PromptStyleChoice, typer.Option(
                   help="The rows' system prompt: `examples` as the teacher saw it, or the `compact` student one.")
               ] = PromptStyleChoice.examples,
               max_pairs_per_context: Annotated[int, typer.Option(min=1, max=1000, help="Most pairs sharing one prompt.")] = 4,
               max_pairs_per_problem: Annotated[int, typer.Option(min=1, max=100_000, help="Most rows from one task problem.")] = 16,
               seed: Annotated[int, typer.Option(min=0, help="Seeds the order the rows are written in (a shuffle).")] = 0,
               redact: Annotated[bool, typer.Option(help="Redact secrets and personal data.")] = True,
               dataset: Annotated[bool, typer.Option(help="Also write a datasets.Dataset (save_to_disk).")] = True) -> None:
    """Export labelled traces as DPO pairs or SFT rows, in TRL's conversational format or OpenAI's fine-tuning one."""
    from rich.table import Table

    from fcagent.data.export import export_preference_pairs, export_sft
    from fcagent.data.layout import ExportLayout
    from fcagent.data.rows import load_pairs

    if out.exists() and not out.is_dir():
        raise UserError(f"`--out` {out} is a file; it names the folder the export writes into")
    settings = dict(level=level.value, teacher_student=teacher_student, task=task, unlabelled=unlabelled.value,
                    sft_rows=sft_rows.value, prompt_style=prompt_style.value,
                    max_pairs_per_context=max_pairs_per_context,
                    max_pairs_per_problem=max_pairs_per_problem, seed=seed, redact=redact, format=format.value)
    result = (export_preference_pairs if kind is Kind.dpo else export_sft)(open_store(store), out, **settings)
    layout = ExportLayout(out)
    if dataset and format is FormatChoice.trl:  # a datasets.Dataset of TRL's rows, for `fcagent train`
        load_pairs(result.path, kind.value).save_to_disk(str(layout.dataset(kind.value)))
    stats = result.stats
    table = Table("rows", "by source", "by task", "rejected reasons", "dropped")
    table.add_row(str(stats["rows"]), json.dumps(stats["by_source"]), json.dumps(stats["by_task"]),
                  json.dumps(stats["rejected_reasons"]), json.dumps(stats["dropped"]))
    console.print(table)
    console.print(f"wrote {result.path} and {layout.stats(kind.value, format.value)}")
