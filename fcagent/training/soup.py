"""Average several students of one base model into one: a uniform "model soup".

Students fine-tuned from the same base (epoch snapshots of one run, runs with other seeds, adapter
ranks or whole-model training) can be averaged weight by weight into a single model that costs no
more to run than any one of them and is often better than each (Wortsman et al., "Model soups",
2022). LoRA students are averaged after their adapters are merged into the base, so every student
contributes its whole weight change. The soup is saved as a whole-model run folder that loads,
evaluates and swaps back like any trained student; its manifest names the students it came from.

    fcagent soup -m runs/bfcl/epochs/2 -m runs/bfcl --out runs/bfcl-soup
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field

from fcagent.core.errors import UserError
from fcagent.models.loading import load_chat_model
from fcagent.models.manifest import (
    RUN_MANIFEST,
    RunManifest,
    read_manifest,
    save_whole_model,
)
from fcagent.models.spec import ModelSpec

__all__ = ["SoupResult", "average_students"]

_SOUP_OUTPUTS = frozenset({RUN_MANIFEST, "merged"})


class SoupResult(BaseModel):
    output_dir: str
    students: list[str] = Field(min_length=2)
    merged_sha256: str
    seconds: float


def _check_out(out: Path, students: Sequence[str]) -> None:
    """The soup never writes into a student's folder, nor over a folder that is not an earlier soup."""
    target = out.resolve()
    for spec in students:
        if Path(spec).exists() and Path(spec).resolve() == target:
            raise UserError(f"`--out` {out} is one of the students; write the soup to a new folder")
    if out.exists() and not out.is_dir():
        raise UserError(f"`--out` {out} is a file, not a folder")
    if out.is_dir() and any(out.iterdir()):
        foreign = sorted(p.name for p in out.iterdir() if p.name not in _SOUP_OUTPUTS)
        earlier_soup = not foreign and (out / RUN_MANIFEST).exists() and "soup" in (read_manifest(out).model_extra or {})
        if not earlier_soup:
            raise UserError(f"`--out` {out} is not empty and holds no earlier soup; write the soup to a new folder")


def _base_of(spec: str) -> str:
    path = Path(spec)
    return read_manifest(path).base_model if (path / RUN_MANIFEST).exists() else spec


def average_students(students: Sequence[str], output_dir: str | Path) -> SoupResult:
    """Average the weights of `students` (model specs: run folders or local models of one
    architecture and tokenizer) with equal shares; write a whole-model run folder to `output_dir`."""
    import torch
    from rich.progress import track

    from fcagent.models.local.chat_model import LocalChatModel

    started = time.perf_counter()
    students = [str(s) for s in students]
    if len(students) < 2:
        raise UserError(f"a soup needs at least two students (`--student`), got {len(students)}")
    for spec in students:
        if ModelSpec.parse(spec).settings:
            raise UserError(f"student `{spec}`: a soup averages weights; give inference options "
                            "(`?constrain=...`) when loading the soup, not its students")
    out = Path(output_dir)
    _check_out(out, students)

    total: dict[str, Any] = {}
    shapes: dict[str, tuple[int, ...]] = {}  # the first student's, which every other must match
    first: Any = None
    for spec in track(students, description="averaging students", transient=True):
        model = load_chat_model(spec)
        if not isinstance(model, LocalChatModel):
            raise UserError(f"student `{spec}` is not a local model: only weights on this machine can be averaged")
        weights = model.hf_model.state_dict()
        if first is None:
            first = model
            total = {name: w.detach().to(torch.float32, copy=True) for name, w in weights.items()}
            shapes = {name: tuple(w.shape) for name, w in total.items()}
            continue
        if model.prompt_style != first.prompt_style:
            raise UserError(f"student `{spec}` prompts in the {model.prompt_style!r} style, `{students[0]}` in "
                            f"{first.prompt_style!r}: a soup's students must be trained on the same prompts")
        if model.tokenizer.get_vocab() != first.tokenizer.get_vocab():
            raise UserError(f"student `{spec}` has another tokenizer than `{students[0]}`")
        theirs = {name: tuple(w.shape) for name, w in weights.items()}
        if theirs != shapes:
            differ = sorted(set(theirs) ^ set(shapes)) or sorted(n for n in theirs if theirs[n] != shapes[n])
            raise UserError(f"student `{spec}` is not the same architecture as `{students[0]}` "
                            f"(weights differ: {', '.join(differ[:3])})")
        for name, w in weights.items():
            total[name] += w.detach().to(torch.float32)
        del model, weights

    soup = first.hf_model.to(torch.float32)  # averaged in float32 and saved so, like a whole-model run
    soup.load_state_dict({name: w / len(students) for name, w in total.items()})
    if out.exists():  # an earlier soup (checked above): replaced, not mixed; its manifest goes first,
        (out / RUN_MANIFEST).unlink(missing_ok=True)  # so a failed write leaves no folder that looks whole
        shutil.rmtree(out / "merged", ignore_errors=True)
    digest = save_whole_model(soup, first.tokenizer, out / "merged")
    manifest = RunManifest(base_model=_base_of(students[0]), adapters=[], merged_sha256=digest,
                           prompt_style=first.prompt_style, method="soup", soup=students,
                           created=datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S%z"))
    (out / RUN_MANIFEST).write_text(manifest.model_dump_json(indent=2, exclude_none=True))
    return SoupResult(output_dir=str(out), students=students, merged_sha256=digest,
                      seconds=round(time.perf_counter() - started, 1))
