"""Files fcagent writes whole or not at all."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from fcagent.core.records import bounded

__all__ = ["write_jsonl_atomic", "write_records_atomic", "dumps", "remove_stale_temporaries"]

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
    """Write rows as JSON Lines, whole or not at all (`write_records_atomic`). Returns the number of rows."""
    return write_records_atomic(path, ((dumps(row) + "\n").encode("utf-8") for row in rows))


def write_records_atomic(path: str | os.PathLike[str], records: Iterable[bytes]) -> int:
    """Write byte records to a temp file beside `path`, then rename: readers (and a process killed mid-write)
    never see a half-written file. Returns the number of records."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(path.parent, f".{path.name}.")
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp")
    n = 0
    try:
        with os.fdopen(fd, "wb") as f:
            for record in records:
                f.write(record)
                n += 1
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return n


def remove_stale_temporaries(folder: Path, prefix: str) -> list[Path]:
    """Remove temporary files `prefix<pid>.*` whose writing process is gone (a SIGKILLed export leaves its
    temporary file behind); those of a process still running (another export into the same folder) stay."""
    removed = []
    for tmp in folder.glob(f"{glob_escape(prefix)}*"):
        pid = tmp.name[len(prefix):].split(".", 1)[0]
        if pid.isdigit() and not _alive(int(pid)):
            tmp.unlink(missing_ok=True)
            removed.append(tmp)
    return removed


def glob_escape(text: str) -> str:
    import glob

    return glob.escape(text)


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True
