"""Where task data comes from: a user's path, a local data folder, or the Hugging Face hub."""

from __future__ import annotations

import os
from pathlib import Path

from fcagent.tasks.base import DataError

__all__ = ["find_data_file"]

DATA_ENV = "FCAGENT_DATA"


def _search_roots(data_dir: Path | None) -> list[Path]:
    roots: list[Path] = []
    if data_dir:
        roots.append(Path(data_dir))
    if os.environ.get(DATA_ENV):
        roots.append(Path(os.environ[DATA_ENV]))
    here = Path.cwd().resolve()
    for parent in [here, *here.parents][:4]:
        roots += [parent / "data", parent / "shared" / "data", parent.parent / "shared" / "data"]
    return roots


def find_data_file(relative: str, data_dir: Path | None, *, hub_hint: str) -> Path:
    """The first `root/relative` that exists; a clear error listing where it looked otherwise."""
    roots = _search_roots(data_dir)
    for root in roots:
        candidate = root / relative
        if candidate.exists():
            return candidate
    looked = ", ".join(str(r) for r in dict.fromkeys(roots))
    raise DataError(
        f"`{relative}` not found (looked in: {looked}). Pass `data_dir=` / `--data-dir`, set "
        f"${DATA_ENV}, or load from the hub: {hub_hint}"
    )
