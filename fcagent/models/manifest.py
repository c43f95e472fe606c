"""What a run folder is: `fcagent_run.json`, the manifest training writes and loading trusts.

A run folder holds a trained student: its base model, the adapters (or the whole merged model) with
the sha256 of every weight file, the prompt style it was trained with, and how it was trained.
Loading refuses any weight file the manifest does not vouch for.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from fcagent.agent.prompting import PromptStyle
from fcagent.core.errors import UserError

__all__ = ["RUN_MANIFEST", "RunManifest", "read_manifest", "file_digest", "save_whole_model"]

RUN_MANIFEST = "fcagent_run.json"


class RunManifest(BaseModel):
    """`fcagent_run.json`: what a run folder is, and the sha256 of every weight file it may load."""

    model_config = ConfigDict(extra="allow")

    base_model: str = Field(min_length=1)
    adapters: list[str] = Field(default_factory=lambda: ["adapter"])
    adapter_sha256: dict[str, str] = Field(default_factory=dict)
    merged_sha256: str | None = None
    gguf_sha256: dict[str, str] = Field(default_factory=dict, description="The student as GGUF for the llama.cpp "
                                        "runtime (`fcagent export-gguf`): each file's path in the run folder, its "
                                        "sha256.")
    prompt_style: PromptStyle | None = None


def file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def save_whole_model(model: Any, tokenizer: Any, folder: Path) -> str:
    """Save a whole model (with its tokenizer) as one safetensors file; its sha256, for the manifest."""
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return file_digest(folder / "model.safetensors")


def read_manifest(run_dir: Path) -> RunManifest:
    path = run_dir / RUN_MANIFEST
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise UserError(f"{path} is not valid JSON ({exc.msg})") from None
    except UnicodeDecodeError:
        raise UserError(f"{path} is not UTF-8 text") from None
    if not isinstance(data, dict):
        raise UserError(f"{path} must be a JSON object (a run's manifest), got a {type(data).__name__}")
    try:
        return RunManifest.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        raise UserError(f"{path}: `{'.'.join(map(str, err['loc']))}`: {err['msg']}") from None
