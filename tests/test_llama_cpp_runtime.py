"""The llama.cpp runtime (`?runtime=llama.cpp`) and GGUF export (`fcagent export-gguf`).

A tiny random Llama, made a run folder and exported by llama.cpp's own converter, drives the control
flow (fast); the bundled SmolLM2's GGUF runs the real model (slow). Both need llama-cpp-python (the
`llama-cpp` extra, which CI installs).
"""

import json
import shutil

import pytest
from batching_check import check_concurrent_calls_batch_like_alone
from langchain_core.messages import AIMessageChunk, HumanMessage, SystemMessage

from fcagent import load_chat_model
from fcagent.core.errors import UserError
from fcagent.models.local.generation import DecodeRequest

pytest.importorskip("llama_cpp", reason="the llama.cpp runtime needs the `llama-cpp` extra")

ADD = [{"type": "function", "function": {"name": "add", "description": "Add two integers.", "parameters": {
    "type": "object", "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}}, "required": ["a", "b"]}}}]
FLIP = [{"type": "function", "function": {"name": "flip", "description": "Flip a switch.", "parameters": {
    "type": "object", "properties": {"on": {"type": "boolean"}}, "required": ["on"]}}}]


@pytest.fixture(scope="module")
def tiny_run(tiny_model_dir, tmp_path_factory):
    """The tiny Llama as a whole-model run folder (as `full_finetune` writes one), exported as f16 GGUF."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from fcagent.models.manifest import RUN_MANIFEST, save_whole_model
    from fcagent.training.gguf import export_gguf

    run = tmp_path_factory.mktemp("tiny-run")
    digest = save_whole_model(AutoModelForCausalLM.from_pretrained(tiny_model_dir),
                              AutoTokenizer.from_pretrained(tiny_model_dir), run / "merged")
    (run / RUN_MANIFEST).write_text(json.dumps({"base_model": str(tiny_model_dir), "adapters": [],
                                                "merged_sha256": digest, "prompt_style": "compact"}))
    export = export_gguf(run, "f16")
    return run, export


@pytest.fixture(scope="module")
def tiny(tiny_run):
    return load_chat_model(f"{tiny_run[0]}?runtime=llama.cpp", max_new_tokens=12)


def test_export_writes_the_gguf_its_sha256_and_a_modelfile_and_the_run_loads_with_either_runtime(tiny_run, tmp_path):
    from fcagent.models.manifest import read_manifest

    run, export = tiny_run
    assert export.gguf == run / "gguf" / "student.f16.gguf" and export.gguf.stat().st_size == export.bytes
    assert read_manifest(run).gguf_sha256 == {"gguf/student.f16.gguf": export.sha256}
    with export.gguf.open("rb") as f:
        assert f.read(4) == b"GGUF"
    modelfile = export.modelfile.read_text()
    assert "FROM ./student.f16.gguf" in modelfile and "`compact` prompt style" in modelfile
    assert 'PARAMETER stop "<|im_end|>"' in modelfile and "Observation: {{ $m.Content }}" in modelfile
    llama = load_chat_model(f"{run}?runtime=llama.cpp")
    plain = load_chat_model(str(run))
    assert (llama.runtime, plain.runtime) == ("llama.cpp", "transformers")
    assert llama.prompt_style == plain.prompt_style == "compact" and llama.model_name.startswith(str(run))
    assert llama.render([HumanMessage("hi")], ADD) == plain.render([HumanMessage("hi")], ADD)  # one prompt
    copy = tmp_path / "copy"
    shutil.copytree(run, copy)
    with (copy / "gguf" / "student.f16.gguf").open("r+b") as f:
        f.seek(-1, 2)
        f.write(b"\x01")
    with pytest.raises(UserError, match="does not match the sha256"):
        load_chat_model(f"{copy}?runtime=llama.cpp")
    with pytest.raises(UserError, match="no q8_0 GGUF"):
        load_chat_model(f"{run}?runtime=llama.cpp&gguf=q8_0")


def test_only_bundled_models_and_exported_runs_load_on_llama_cpp(tiny_model_dir):
    with pytest.raises(UserError, match="not a transformers checkpoint"):
        load_chat_model(f"{tiny_model_dir}?runtime=llama.cpp")
    with pytest.raises(UserError, match="`runtime`"):
        load_chat_model(f"{tiny_model_dir}?runtime=vllm")


def test_usage_and_n_candidates_from_one_prompt(tiny):
    gens = tiny.generate([[HumanMessage("hello")]], n=3, temperature=1.0).generations[0]
    assert len(gens) == 3 and len({g.text for g in gens}) > 1  # sampled, not copies
    usage = gens[0].message.usage_metadata
    assert usage["input_tokens"] > 3 and 0 < usage["output_tokens"] <= 12


def test_stream_adds_up_to_invoke(tiny):
    model = tiny.model_copy(update={"max_new_tokens": 24})
    invoked = model.invoke([HumanMessage("count to three")])
    chunks = list(model.stream([HumanMessage("count to three")]))
    assert all(isinstance(c, AIMessageChunk) for c in chunks) and len(chunks) >= 2
    summed = chunks[0]
    for c in chunks[1:]:
        summed = summed + c
    assert summed.content == invoked.content and summed.usage_metadata == invoked.usage_metadata
    assert summed.response_metadata["finish_reason"] == invoked.response_metadata["finish_reason"]


def test_concurrent_calls_are_batched_and_match_one_at_a_time(tiny, monkeypatch):
    check_concurrent_calls_batch_like_alone(tiny, monkeypatch)


def test_greedy_copies_equal_the_greedy_reply_alone(tiny):
    import dataclasses

    prompt = tiny.render([HumanMessage("what is two plus two?")])
    greedy = tiny.settings_for({"temperature": 0.0, "max_new_tokens": 10})
    alone = tiny.decode(DecodeRequest(prompt=prompt, settings=greedy)).texts[0]
    copies = tiny.decode(DecodeRequest(prompt=prompt, settings=dataclasses.replace(greedy, n=3)))
    assert copies.texts == [alone] * 3


def test_the_prompt_cache_evaluates_only_new_tokens_and_changes_nothing(tiny_run):
    model = load_chat_model(f"{tiny_run[0]}?runtime=llama.cpp", max_new_tokens=8)
    history = [HumanMessage("count to three")]
    first = model.invoke(history)
    follow = [*history, first, HumanMessage("and now to four")]
    model.clear_prompt_cache()
    expected = model.invoke(follow).content  # from nothing kept
    model.clear_prompt_cache()
    model.invoke(history)
    before = model.engine.prefilled
    assert model.invoke(follow).content == expected
    ids = [model.tokenizer(model.render(m), add_special_tokens=False)["input_ids"] for m in (history, follow)]
    shared = next(i for i, (a, b) in enumerate(zip(*ids, strict=False)) if a != b) if ids[1][:len(ids[0])] != ids[0] \
        else len(ids[0])
    assert model.engine.prefilled - before == len(ids[1]) - shared  # only what the first prompt lacked


def test_the_call_grammar_forces_a_schema_valid_call(tiny):
    roomy = tiny.model_copy(update={"max_new_tokens": 64})
    named = roomy.bind_tools(FLIP, tool_choice="flip").invoke([HumanMessage("hello")])
    assert [c["name"] for c in named.tool_calls] == ["flip"] and isinstance(named.tool_calls[0]["args"]["on"], bool)
    free = roomy.bind_tools(FLIP, tool_choice="none").invoke([HumanMessage("hello")])
    assert free.tool_calls == [] and free.invalid_tool_calls == []


def test_token_limit_and_timeout_cut_the_reply(tiny_run):
    slow = load_chat_model(f"{tiny_run[0]}?runtime=llama.cpp", max_new_tokens=4000, timeout=0.2,
                           stop_sequences=[], stop_at_call_end=False)
    reply = slow.invoke("hi")
    assert reply.response_metadata["finish_reason"] == "length" and reply.usage_metadata["output_tokens"] < 4000
    short = load_chat_model(f"{tiny_run[0]}?runtime=llama.cpp", max_tokens=5, stop_sequences=[])
    assert short.invoke("hi").usage_metadata["output_tokens"] <= 5


# --- the real model ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def smol():
    return load_chat_model("bundled:smollm2-135m?runtime=llama.cpp", max_new_tokens=48)


@pytest.mark.slow
def test_bundled_model_streams_what_it_invokes(smol):
    invoked = smol.invoke([HumanMessage("Name three colours.")])
    chunks = list(smol.stream([HumanMessage("Name three colours.")]))
    summed = chunks[0]
    for c in chunks[1:]:
        summed = summed + c
    assert invoked.content and summed.content == invoked.content and len(chunks) > 3


@pytest.mark.slow
def test_bundled_model_calls_a_tool_under_the_grammar(smol):
    constrained = smol.model_copy(update={"constrain": "llguidance"})
    reply = constrained.bind_tools(ADD).invoke([HumanMessage("What is 2 plus 3? Use the add function.")])
    assert [c["name"] for c in reply.tool_calls] == ["add"] and reply.invalid_tool_calls == []
    args = reply.tool_calls[0]["args"]
    assert set(args) == {"a", "b"} and all(isinstance(v, int) for v in args.values())
    assert reply.response_metadata["finish_reason"] == "tool_calls"


@pytest.mark.slow
def test_bundled_model_runs_the_agent_graph(smol, data_dir):
    from fcagent import build_agent_graph, get_task

    task = get_task("bfcl:simple_python", data_dir=data_dir)
    graph = build_agent_graph(smol.model_copy(update={"constrain": "llguidance"}), task=task)
    for p in task.load(split="test", limit=2):
        out = graph.invoke({"problem": p})
        assert out["steps"] == 1 and out["status"] == "answered" and isinstance(out["verdict"]["success"], bool)


@pytest.mark.slow
def test_a_trained_run_exported_by_the_cli_answers_alike_on_both_runtimes(tiny_model_dir, tmp_path):
    """`fcagent train --gguf f16`: a LoRA run, merged and converted; the llama.cpp runtime replies as the
    transformers runtime does to the prompts it was trained on."""
    from typer.testing import CliRunner

    from fcagent.cli.app import app

    chains = [("What is 2 plus 3?", '{"name": "add", "arguments": {"a": 2, "b": 3}}'),
              ("What is 7 times 6?", '{"name": "multiply", "arguments": {"a": 7, "b": 6}}')]
    rows = [{"prompt": [{"role": "system", "content": "Call a function."}, {"role": "user", "content": q}],
             "chosen": [{"role": "assistant", "content": c}], "rejected": [{"role": "assistant", "content": "No."}],
             "tools": "[]"} for q, c in chains]
    (tmp_path / "pairs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    run = tmp_path / "run"
    result = CliRunner().invoke(app, ["train", "--pairs", str(tmp_path), "-m", str(tiny_model_dir), "--method", "sft",
                                      "--max-optimizer-steps", "40", "--out", str(run), "--gguf", "f16"])
    assert result.exit_code == 0, result.output
    assert (run / "gguf" / "student.f16.gguf").exists() and (run / "gguf" / "Modelfile").exists()
    hf = load_chat_model(str(run), max_new_tokens=24)
    gguf = load_chat_model(f"{run}?runtime=llama.cpp", max_new_tokens=24)
    for question, _ in chains:
        messages = [SystemMessage("Call a function."), HumanMessage(question)]
        assert gguf.invoke(messages).content == hf.invoke(messages).content
