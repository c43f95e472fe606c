"""Users' feedback as labels: a file of thumbs up/down, read in one go.

Apps collect feedback against the id they already hold (the LangChain run id their agent ran under,
which is the episode id). `read_feedback("feedback.jsonl")` reads JSON Lines or CSV rows of
`{id, label, reason?, source?}` into `Label`s for `TraceStore.label_many` (`fcagent traces label
--file`); every row is checked before anything is written.

`label` is `good` / `bad` (also `up`/`down`, `true`/`false`, `1`/`0`, `+1`/`-1`, or a number where
>= 0.5 is good, LangSmith's convention for scores).
"""

from __future__ import annotations

import csv
import os
from pathlib import Path
from typing import Any

from fcagent.core.errors import UserError
from fcagent.core.records import Label
from fcagent.tasks.base import DataError, parse_json_records

__all__ = ["read_feedback", "parse_verdict"]

_GOOD = {"good", "up", "true", "yes", "1", "+1", "thumbs_up", "positive"}
_BAD = {"bad", "down", "false", "no", "0", "-1", "thumbs_down", "negative"}
_ID_KEYS = ("id", "episode_id", "run_id", "target_id")


def parse_verdict(value: Any) -> bool | None:
    """True for good, False for bad, None when `value` is neither."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int | float):
        return float(value) >= 0.5
    text = str(value).strip().lower()
    if text in _GOOD:
        return True
    if text in _BAD:
        return False
    try:
        return float(text) >= 0.5
    except ValueError:
        return None


def _rows(path: Path) -> list[tuple[int, dict[str, Any]]]:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UserError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise UserError(f"{path} is a folder, not a feedback file (JSONL or CSV)") from None
    except UnicodeDecodeError as exc:
        raise UserError(f"{path}: not UTF-8 text (byte {exc.start}); feedback is JSONL or CSV") from None
    if path.suffix.lower() == ".csv":
        reader = csv.DictReader(text.splitlines())
        return [(i, dict(row)) for i, row in enumerate(reader, 2)]
    try:
        return list(parse_json_records(text, path))
    except DataError as exc:
        raise UserError(f"{exc}; feedback is JSONL (one object per line with `id` and `label`) or CSV") from None


def read_feedback(path: str | os.PathLike[str], *, source: str = "feedback") -> list[Label]:
    """Labels from a JSONL or CSV file of `{id, label, reason?, source?}` rows (see the module docs)."""
    path = Path(path)
    labels = []
    for lineno, row in _rows(path):
        target = next((str(row[k]).strip() for k in _ID_KEYS if row.get(k) not in (None, "")), None)
        if not target:
            raise UserError(f"{path}:{lineno}: no `id` (the episode id: the run id your agent ran under)")
        raw = row.get("label", row.get("score", row.get("success")))
        verdict = parse_verdict(raw) if raw not in (None, "") else None
        if verdict is None:
            raise UserError(f"{path}:{lineno}: `label` must be good or bad (or up/down, 1/0, a score), got {raw!r}")
        labels.append(Label(target_id=target, success=verdict, reason=str(row.get("reason") or row.get("comment") or ""),
                            source=str(row.get("source") or source)))
    if not labels:
        raise UserError(f"{path} holds no feedback rows")
    return labels
