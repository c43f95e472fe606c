"""Files fcagent writes whole or not at all."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from fcagent.core.records import bounded

__all__ = ["write_jsonl_atomic", "dumps"]

# One encoder for every stored value: `json.dumps` with these options builds a new one per call,
# which was a third of the trace writer's encoding time (~19 values per episode).
_ENCODER = json.JSONEncoder(ensure_ascii=False, default=str, separators=(",", ":"))


def dumps(value: Any) -> str:
    """Compact JSON; a value nested deeper than JSON encoding goes is stored cut, with a marker, not dropped."""
    try:
        return _ENCODER.encode(value)
    except RecursionError:
        return _ENCODER.encode(bounded(value))


def write_jsonl_atomic(path: str | os.PathLike[str], rows: Iterable[dict[str, Any]]) -> int:
    """Write rows as JSON Lines to a temp file beside `path`, then rename: readers (and a process
    killed mid-write) never see a half-written file. Returns the number of rows."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    n = 0
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            for row in rows:
                f.write(dumps(row) + "\n")
                n += 1
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return n
