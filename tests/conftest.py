import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"
if SHARED_DATA.exists():
    os.environ.setdefault("FCAGENT_DATA", str(SHARED_DATA))


@pytest.fixture(scope="session")
def data_dir() -> Path:
    if not SHARED_DATA.exists():
        pytest.skip("../shared/data is not beside the project")
    return SHARED_DATA


@pytest.fixture(scope="session")
def smol_dir() -> Path:
    from fcagent.models.bundled import bundled_model_dir

    return bundled_model_dir("smollm2-135m")


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, smol_dir) -> Path:
    """A tiny random-init Llama (hidden 64, 2 layers) with the SmolLM2 tokenizer."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tok = AutoTokenizer.from_pretrained(smol_dir)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096,
                      tie_word_embeddings=True, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                      pad_token_id=tok.pad_token_id)
    torch.manual_seed(0)
    model = LlamaForCausalLM(cfg)
    out = tmp_path_factory.mktemp("tiny-llama")
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


@pytest.fixture(autouse=True)
def _run_in_a_temporary_folder(tmp_path, monkeypatch):
    """Every test runs in a folder of its own: a command's default output (`fcagent-traces.db`, `eval/`,
    `runs/`) never lands in the repository, and a test that writes to the working directory by mistake
    writes nowhere that matters."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("FCAGENT_STORE", raising=False)
    monkeypatch.delenv("FCAGENT_MODEL", raising=False)


# The PostgreSQL server, per-test schemas and `store_url` (SQLite, then PostgreSQL) for the store tests.
from postgres_fixtures import postgres_server, postgres_url, pytest_terminal_summary, store_url  # noqa: E402, F401
