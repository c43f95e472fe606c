"""A trained student as GGUF, for the llama.cpp runtime and Ollama (`fcagent export-gguf`, `train --gguf`).

The run's adapters are merged into its base by the loader that serves the run (so the GGUF holds the
model `fcagent eval RUN` scores), the merged model is saved as a transformers checkpoint in a
temporary folder, and llama.cpp's own converter (`convert_hf_to_gguf.py`) writes the GGUF. The
converter comes from the sdist of llama-cpp-python — the llama.cpp that will read the file — unpacked
once into fcagent's cache; its sdist is checked against the sha256 recorded here.

The run folder gets `gguf/student.<type>.gguf` with the tokenizer beside it (the llama.cpp runtime
renders prompts with it, as the transformers runtime does), an Ollama `Modelfile`, and the GGUF's
sha256 in its manifest, without which the llama.cpp runtime refuses the file.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path
from typing import Literal

from pydantic import BaseModel

from fcagent.core.errors import RunFailure, UserError
from fcagent.models.bundled import cache_dir
from fcagent.models.manifest import RUN_MANIFEST, file_digest, read_manifest

__all__ = ["GGUF_TYPES", "GgufExport", "export_gguf", "converter_script", "modelfile"]

GGUF_TYPES = ("f16", "q8_0")
GgufType = Literal["f16", "q8_0"]
GGUF_FOLDER = "gguf"
# The converter's source when llama-cpp-python is not installed: the version the `llama-cpp` extra pins.
_PINNED = "0.3.36"
_SDIST_SHA256 = {"0.3.36": "832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e"}
_CONVERTER_FILES = ("convert_hf_to_gguf.py", "conversion/", "gguf-py/")


class GgufExport(BaseModel):
    """What `export_gguf` wrote."""

    run_dir: Path
    gguf: Path
    type: str
    sha256: str
    bytes: int
    modelfile: Path
    converter: str
    seconds: float


def _llama_cpp_python_version() -> str:
    try:
        return importlib.metadata.version("llama-cpp-python")
    except importlib.metadata.PackageNotFoundError:
        return _PINNED


def _sdist(version: str, folder: Path) -> Path:
    """The llama-cpp-python sdist of `version`: `FCAGENT_LLAMA_CPP_SDIST` if set, else fetched by pip
    (its cache holds it when the package was just built from it)."""
    if os.environ.get("FCAGENT_LLAMA_CPP_SDIST"):
        return Path(os.environ["FCAGENT_LLAMA_CPP_SDIST"])
    command = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--no-binary", ":all:",
               f"llama-cpp-python=={version}", "-d", str(folder)]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    found = sorted(folder.glob("llama_cpp_python-*.tar.gz"))
    if done.returncode != 0 or not found:
        raise RunFailure(f"could not fetch llama.cpp's converter (the llama-cpp-python {version} sdist) with pip: "
                         f"{(done.stderr or done.stdout).strip().splitlines()[-1:] or ['no output']}; "
                         "set FCAGENT_LLAMA_CPP_SDIST to a downloaded sdist")
    return found[0]


def converter_script() -> Path:
    """llama.cpp's `convert_hf_to_gguf.py` (with its `conversion` package and `gguf-py`), unpacked from
    the llama-cpp-python sdist into fcagent's cache on first use."""
    version = _llama_cpp_python_version()
    target = cache_dir() / "llama.cpp" / f"llama-cpp-python-{version}"
    script = target / "convert_hf_to_gguf.py"
    if script.exists():
        return script
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=".converter-") as tmp:
        sdist = _sdist(version, Path(tmp))
        expected = _SDIST_SHA256.get(version)
        if expected is not None and file_digest(sdist) != expected:
            raise UserError(f"{sdist} is not the published llama-cpp-python {version} sdist "
                            f"(sha256 {expected[:12]}…)")
        root = f"llama_cpp_python-{version}/vendor/llama.cpp/"
        unpacked = Path(tmp) / "unpacked"
        with tarfile.open(sdist) as tar:
            members = [m for m in tar.getmembers() if m.name.startswith(root) and
                       m.name[len(root):].startswith(_CONVERTER_FILES) and (m.isfile() or m.isdir())]
            for m in members:
                m.name = m.name[len(root):]
            tar.extractall(unpacked, members=members, filter="data")
        if not (unpacked / "convert_hf_to_gguf.py").exists():
            raise RunFailure(f"{sdist} has no vendor/llama.cpp/convert_hf_to_gguf.py")
        try:
            unpacked.rename(target)  # atomic: a concurrent first use finds the whole converter or none
        except OSError:
            if not script.exists():
                raise
    return script


def modelfile(gguf_name: str, tokenizer: object, prompt_style: str | None) -> str:
    """An Ollama Modelfile for the GGUF beside it: the chat template the student was trained with (ChatML,
    tool results as `Observation:` user turns, the template's default system prompt when none is given),
    its stop strings and greedy decoding. The functions go in the system message in the student's
    prompt style, as fcagent renders them."""
    probe = tokenizer.apply_chat_template(  # type: ignore[attr-defined]
        [{"role": "user", "content": "\x00"}], tokenize=False, add_generation_prompt=True)
    head, _, tail = probe.partition("<|im_start|>user\n\x00<|im_end|>\n")
    if tail != "<|im_start|>assistant\n":
        raise UserError("the Ollama Modelfile is written for ChatML chat templates (SmolLM2, Qwen2.5); this "
                        "student's template is another one")
    default_system = ""
    if head.startswith("<|im_start|>system\n") and head.endswith("<|im_end|>\n"):
        default_system = head[len("<|im_start|>system\n"):-len("<|im_end|>\n")]
    style = prompt_style or "examples"
    template = (
        '{{- range $i, $m := .Messages }}'
        '{{- if and (eq $i 0) (ne $m.Role "system") }}'
        + (f'<|im_start|>system\n{_go_text(default_system)}<|im_end|>\n' if default_system else '')
        + '{{ end }}'
        '{{- if eq $m.Role "tool" }}<|im_start|>user\nObservation: {{ $m.Content }}<|im_end|>\n'
        '{{ else }}<|im_start|>{{ $m.Role }}\n{{ $m.Content }}<|im_end|>\n'
        '{{ end }}'
        '{{- end }}<|im_start|>assistant\n')
    return "\n".join([
        "# Ollama Modelfile of an fcagent student (`ollama create student -f Modelfile`).",
        f"# The student reads its functions in the system message, in the `{style}` prompt style it was trained",
        f"# with: fcagent.agent.prompting.render_system_prompt(tools, style=\"{style}\"). It calls a function by",
        "# replying with one JSON object {\"name\": ..., \"arguments\": {...}}; a tool's result is sent back as a",
        "# `tool` message (shown to it as an `Observation:` turn).",
        f"FROM ./{gguf_name}",
        f'TEMPLATE """{template}"""',
        'PARAMETER stop "<|im_end|>"',
        'PARAMETER stop "Observation:"',
        "PARAMETER temperature 0",
        "",
    ])


def _go_text(text: str) -> str:
    """Literal text inside a Go template (`{{` would open an action)."""
    return text.replace("{{", '{{ "{{" }}')


def _record(run_dir: Path, name: str, digest: str) -> None:
    """Add the GGUF's sha256 to the run's manifest (rewritten atomically, every other field kept)."""
    path = run_dir / RUN_MANIFEST
    data = json.loads(path.read_text(encoding="utf-8"))
    data["gguf_sha256"] = {**(data.get("gguf_sha256") or {}), name: digest}
    fd, tmp = tempfile.mkstemp(dir=run_dir, prefix=f".{RUN_MANIFEST}.", suffix=".tmp")
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(json.dumps(data, indent=2))
    os.replace(tmp, path)


def export_gguf(run_dir: str | Path, outtype: GgufType = "q8_0") -> GgufExport:
    """Merge the run's adapters, convert with llama.cpp's converter, and record the GGUF (module docs)."""
    from fcagent.models.loading import load_chat_model

    run = Path(run_dir)
    if outtype not in GGUF_TYPES:
        raise UserError(f"`--type` must be one of {', '.join(GGUF_TYPES)}, got {outtype!r}")
    if not (run / RUN_MANIFEST).exists():
        raise UserError(f"{run} is not an fcagent run folder (no {RUN_MANIFEST})")
    manifest = read_manifest(run)
    started = time.perf_counter()
    script = converter_script()
    chat = load_chat_model(str(run), runtime="transformers")  # the adapters merged, as evaluation loads them
    folder = run / GGUF_FOLDER
    folder.mkdir(exist_ok=True)
    name = f"student.{outtype}.gguf"
    with tempfile.TemporaryDirectory(dir=run, prefix=".gguf-export-") as tmp:
        merged = Path(tmp) / "merged"
        chat.hf_model.save_pretrained(merged)
        chat.tokenizer.save_pretrained(merged)
        out = Path(tmp) / name
        done = subprocess.run([sys.executable, str(script), str(merged), "--outfile", str(out), "--outtype", outtype],
                              capture_output=True, text=True, check=False, env={**os.environ, "PYTHONUNBUFFERED": "1"})
        if done.returncode != 0 or not out.exists():
            last = [line for line in (done.stderr or done.stdout).splitlines() if line.strip()][-3:]
            raise RunFailure(f"llama.cpp's converter failed on {run}: {' | '.join(last) or 'no output'}")
        chat.tokenizer.save_pretrained(folder)  # what the llama.cpp runtime renders prompts with
        os.replace(out, folder / name)
    digest = file_digest(folder / name)
    (folder / "Modelfile").write_text(modelfile(name, chat.tokenizer, manifest.prompt_style), encoding="utf-8")
    _record(run, f"{GGUF_FOLDER}/{name}", digest)
    return GgufExport(run_dir=run, gguf=folder / name, type=outtype, sha256=digest,
                      bytes=(folder / name).stat().st_size, modelfile=folder / "Modelfile",
                      converter=f"llama.cpp convert_hf_to_gguf.py (llama-cpp-python {_llama_cpp_python_version()})",
                      seconds=round(time.perf_counter() - started, 1))


def remove_export(run_dir: Path) -> None:
    """Forget a run's GGUF files (a run trained again: they would hold the old weights)."""
    shutil.rmtree(run_dir / GGUF_FOLDER, ignore_errors=True)
