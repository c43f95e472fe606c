"""The rows an export writes, in TRL's conversational formats, and the checks they pass.

`PreferencePair` (DPO: `prompt`, `chosen`, `rejected`) and `SftRow` (`messages`), each with a `tools`
column (the function schemas as a JSON string) and provenance. `validate_pair` / `validate_sft_row`
check what TRL's trainers accept and name the field that fails; `load_pairs` reads an export back as
a `datasets.Dataset`, validated.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from fcagent.core.errors import UserError
from fcagent.core.records import PairSource
from fcagent.data.layout import ExportKind, ExportLayout

__all__ = ["ExportError", "PreferencePair", "SftRow", "validate_pair", "validate_sft_row", "load_pairs"]


class ExportError(UserError):
    """The store cannot yield the requested data; the message says why and what to do."""


class PreferencePair(BaseModel):
    """One row of TRL's conversational preference format, plus provenance columns."""

    prompt: list[dict[str, Any]]
    chosen: list[dict[str, Any]]
    rejected: list[dict[str, Any]]
    tools: str = "[]"  # JSON list of function schemas (TRL decodes a JSON string)
    source: PairSource
    task: str | None = None
    problem_id: str | None = None
    context_hash: str
    rejected_reason: str = ""
    rejected_kind: str | None = None  # a StepError kind, or None for a wrong answer / a divergence

    @staticmethod
    def sides(data: dict[str, Any]) -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[dict[str, Any]]]:
        """A written row's (prompt, chosen, rejected) messages: what the exporter dedupes and measures by."""
        return data["prompt"], data["chosen"], data["rejected"]

    @staticmethod
    def check(data: dict[str, Any], where: str) -> None:
        validate_pair(data, where)


class SftRow(BaseModel):
    messages: list[dict[str, Any]]
    tools: str = "[]"
    task: str | None = None
    problem_id: str | None = None
    context_hash: str

    @staticmethod
    def sides(data: dict[str, Any]) -> tuple[list[dict[str, Any]], list[dict[str, Any]], None]:
        return data["messages"][:-1], data["messages"][-1:], None

    @staticmethod
    def check(data: dict[str, Any], where: str) -> None:
        validate_sft_row(data, where)


def _check_messages(value: Any, field: str, where: str) -> None:
    """`value` is a non-empty list of role/content messages; else an ExportError naming the field."""
    if not isinstance(value, list) or not value:
        raise ExportError(f"{where}: `{field}` must be a non-empty list of messages")
    for i, m in enumerate(value):
        if not isinstance(m, dict) or m.get("role") not in ("system", "user", "assistant", "tool"):
            raise ExportError(f"{where}: `{field}[{i}].role` must be system/user/assistant/tool")
        if not isinstance(m.get("content", ""), str):
            raise ExportError(f"{where}: `{field}[{i}].content` must be a string")


def validate_pair(row: dict[str, Any], where: str = "row") -> None:
    """Check a row against what TRL's DPOTrainer accepts; raises ExportError naming the field."""
    for key in ("prompt", "chosen", "rejected"):
        _check_messages(row.get(key), key, where)
    if row["prompt"][-1]["role"] == "assistant":
        raise ExportError(f"{where}: the prompt must end with a user turn, not an assistant one")
    if row["prompt"][-1]["role"] == "tool":
        raise ExportError(f"{where}: the prompt ends with a `tool` message, which some chat templates cannot render")
    for key in ("chosen", "rejected"):
        if any(m["role"] != "assistant" for m in row[key]):
            raise ExportError(f"{where}: `{key}` may only hold assistant messages (tool output is never trained on)")
    if row["chosen"] == row["rejected"]:
        raise ExportError(f"{where}: `chosen` and `rejected` are identical")
    try:
        json.loads(row.get("tools", "[]"))
    except (json.JSONDecodeError, TypeError):
        raise ExportError(f"{where}: `tools` must be a JSON string of function schemas") from None


def validate_sft_row(row: dict[str, Any], where: str = "row") -> None:
    """Check an SFT row: `messages` a list of role/content messages ending with an assistant turn."""
    messages = row.get("messages")
    _check_messages(messages, "messages", where)
    if messages[-1]["role"] != "assistant":
        raise ExportError(f"{where}: the last message must be the assistant's (what SFT trains on)")
    if not isinstance(row.get("tools", "[]"), str):
        raise ExportError(f"{where}: `tools` must be a JSON string of function schemas")


def load_pairs(path: str | os.PathLike[str], kind: ExportKind | str = ExportKind.DPO):
    """A `datasets.Dataset` from an export folder or file (JSONL or `save_to_disk` folder), validated."""
    kind = ExportKind(kind)
    from datasets import Dataset, load_from_disk

    path = Path(path)
    if path.is_dir() and (path / "dataset_info.json").exists():
        ds = load_from_disk(str(path))
        rows = ds.to_list()
    else:
        file = ExportLayout(path).rows(kind) if path.is_dir() else path
        if not file.exists():
            raise ExportError(f"{file} does not exist; export with `fcagent export --kind {kind}` first")
        rows = []
        try:
            with file.open(encoding="utf-8") as f:
                for lineno, line in enumerate(f, 1):
                    if not line.strip():
                        continue
                    try:
                        rows.append(json.loads(line))
                    except json.JSONDecodeError as exc:
                        raise ExportError(f"{file}:{lineno}: invalid JSON ({exc.msg})") from None
                    if not isinstance(rows[-1], dict):
                        raise ExportError(f"{file}:{lineno}: a row must be a JSON object")
        except UnicodeDecodeError as exc:
            raise ExportError(f"{file}: not UTF-8 text (byte {exc.start}); rows are JSON Lines") from None
        except IsADirectoryError:
            raise ExportError(f"{file} is a folder, not a JSONL file") from None
    need = ("prompt", "chosen", "rejected") if kind is ExportKind.DPO else ("messages",)
    for i, row in enumerate(rows, 1):
        missing = [k for k in need if k not in row]
        if missing:
            raise ExportError(f"{path}: row {i} has no column(s) {', '.join(missing)} (expected {', '.join(need)})")
        if kind is ExportKind.DPO:
            validate_pair(row, where=f"{path}: row {i}")
        else:
            validate_sft_row(row, where=f"{path}: row {i}")
    if not rows:
        raise ExportError(f"{path} holds no rows")
    keep = [*need, "tools"]
    return Dataset.from_list([{k: row.get(k, "[]") for k in keep} for row in rows])
