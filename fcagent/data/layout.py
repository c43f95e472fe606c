"""Where an export puts its files: one object that export writes and train and distill read.

    OUT/pairs.jsonl       DPO pairs            OUT/stats.dpo.json   what the pair export did
    OUT/sft.jsonl         SFT rows             OUT/stats.sft.json   what the SFT export did
    OUT/dataset-dpo/      the pairs as a `datasets.Dataset` (`save_to_disk`), where asked for
    OUT/dataset-sft/      the SFT rows likewise
    OUT/pairs.openai.jsonl, OUT/sft.openai.jsonl, OUT/stats.{dpo,sft}.openai.json: `--format openai`

No other module spells these names.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

from fcagent.agent.prompting import PromptStyle

__all__ = ["ExportKind", "ExportFormat", "ExportLayout"]


class ExportKind(StrEnum):
    DPO = "dpo"  # preference pairs
    SFT = "sft"  # supervised rows


class ExportFormat(StrEnum):
    TRL = "trl"  # TRL's conversational formats: what `fcagent train` reads
    OPENAI = "openai"  # OpenAI's fine-tuning JSONL (`fcagent.data.openai_format`)


@dataclass(frozen=True)
class ExportLayout:
    """An export folder's files."""

    folder: Path

    @classmethod
    def of(cls, path: str | Path) -> ExportLayout:
        """The layout of an export folder, or of the folder holding an export file."""
        path = Path(path)
        return cls(path if path.is_dir() or not path.suffix else path.parent)

    def rows(self, kind: ExportKind | str, fmt: ExportFormat | str = ExportFormat.TRL) -> Path:
        name = "pairs" if ExportKind(kind) is ExportKind.DPO else "sft"
        return self.folder / (f"{name}.jsonl" if ExportFormat(fmt) is ExportFormat.TRL else f"{name}.{fmt}.jsonl")

    def stats(self, kind: ExportKind | str, fmt: ExportFormat | str = ExportFormat.TRL) -> Path:
        suffix = "" if ExportFormat(fmt) is ExportFormat.TRL else f".{fmt}"
        return self.folder / f"stats.{ExportKind(kind).value}{suffix}.json"

    def dataset(self, kind: ExportKind | str) -> Path:
        return self.folder / f"dataset-{ExportKind(kind).value}"

    def prompt_style(self, kind: ExportKind | str) -> PromptStyle:
        """The prompt style the rows were exported with (their stats say), `examples` when unknown
        (exports made before the style was recorded, or rows from elsewhere)."""
        try:
            style = json.loads(self.stats(kind).read_text())["settings"].get("prompt_style")
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            return PromptStyle.EXAMPLES
        return PromptStyle.COMPACT if style == "compact" else PromptStyle.EXAMPLES
