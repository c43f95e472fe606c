"""Training on the real tiny-model path: DPO/SFT train, save, reload, run in the graph, and move log-probs."""

import json
import shutil

import pytest
import torch

from fcagent import build_agent_graph, get_task, load_chat_model
from fcagent.core.errors import UserError
from fcagent.training.settings import TrainSettings
from fcagent.training.train import train

# trains; and a training run shows no FutureWarning (fcagent uses transformers 5's names)
pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("error::FutureWarning")]

PAIRS = [
    ("What is 2 plus 3?", '{"name": "add", "arguments": {"a": 2, "b": 3}}', "I think five."),
    ("What is 7 times 6?", '{"name": "multiply", "arguments": {"a": 7, "b": 6}}', "It is 42 probably."),
    ("What is 9 minus 4?", '{"name": "subtract", "arguments": {"a": 9, "b": 4}}', "Nine minus four."),
    ("What is 8 divided by 2?", '{"name": "divide", "arguments": {"a": 8, "b": 2}}', "Four, I guess."),
]


@pytest.fixture()
def pairs_dir(tmp_path):
    rows = [{"prompt": [{"role": "system", "content": "Call a function."}, {"role": "user", "content": q}],
             "chosen": [{"role": "assistant", "content": c}], "rejected": [{"role": "assistant", "content": r}],
             "tools": "[]"} for q, c, r in PAIRS]
    (tmp_path / "pairs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return tmp_path


def logp(model, tokenizer, prompt, completion):
    p = tokenizer.apply_chat_template(prompt, add_generation_prompt=True, tokenize=False)
    full = tokenizer.apply_chat_template(prompt + [{"role": "assistant", "content": completion}], tokenize=False)
    p_ids = tokenizer(p, add_special_tokens=False)["input_ids"]
    ids = torch.tensor([tokenizer(full, add_special_tokens=False)["input_ids"]])
    with torch.no_grad():
        logits = model(ids).logits.float().log_softmax(-1)
    targets = ids[0, len(p_ids):]
    return logits[0, len(p_ids) - 1:-1].gather(-1, targets[:, None]).sum().item()


def margins(chat, rows):
    tok, model = chat.tokenizer, chat.hf_model
    return [logp(model, tok, r["prompt"], r["chosen"][0]["content"]) - logp(model, tok, r["prompt"], r["rejected"][0]["content"])
            for r in rows]


def chosen_logps(chat, rows):
    return [logp(chat.hf_model, chat.tokenizer, r["prompt"], r["chosen"][0]["content"]) for r in rows]


@pytest.mark.parametrize("method", ["dpo", "sft"])
def test_train_save_reload_swap_back_and_logprobs_move(method, pairs_dir, tiny_model_dir, tmp_path):
    rows = [json.loads(x) for x in (pairs_dir / "pairs.jsonl").read_text().splitlines()]
    base = load_chat_model(str(tiny_model_dir))
    before = margins(base, rows) if method == "dpo" else chosen_logps(base, rows)
    settings = TrainSettings(method=method, max_steps=6, learning_rate=5e-3, batch_size=2, bf16=False, beta=0.5)
    result = train(pairs_dir, str(tiny_model_dir), tmp_path / "run", settings=settings)
    run_dir = tmp_path / "run"
    manifest = json.loads((run_dir / "fcagent_run.json").read_text())
    assert manifest["method"] == method and manifest["base_model"] == str(tiny_model_dir)
    assert (run_dir / "adapter" / "adapter_model.safetensors").exists() and (run_dir / "training.png").exists()
    assert result.steps == 6 and len((run_dir / "metrics.jsonl").read_text().splitlines()) >= 6
    student = load_chat_model(str(run_dir), max_new_tokens=8)
    after = margins(student, rows) if method == "dpo" else chosen_logps(student, rows)
    # measured, not assumed: the trained direction on the training pairs
    assert sum(after) / len(after) > sum(before) / len(before) + 0.5
    task = get_task("math")
    out = build_agent_graph(student, task=task, max_steps=1).invoke({"problem": task.load(limit=1)[0]})
    assert out["steps"] == 1


def test_rpo_and_sft_dpo_methods_run(pairs_dir, tiny_model_dir, tmp_path):
    for method in ("rpo", "sft-dpo"):
        settings = TrainSettings(method=method, max_steps=1, batch_size=2, bf16=False)
        result = train(pairs_dir, str(tiny_model_dir), tmp_path / method, settings=settings)
        assert result.steps == (2 if method == "sft-dpo" else 1)
        assert load_chat_model(str(tmp_path / method)).model_name == str(tmp_path / method)


def test_sft_chosen_is_sft_dpo_s_matched_compute_control(pairs_dir, tiny_model_dir, tmp_path):
    """sft-chosen sees what sft-dpo sees (a row per pair, the chosen side repeated as often as it is
    paired, the same batches and steps, from the same warm start); only the loss differs."""
    rows = [json.loads(x) for x in (pairs_dir / "pairs.jsonl").read_text().splitlines()]
    rows.append({**rows[0], "rejected": [{"role": "assistant", "content": "Five."}]})  # chosen paired twice
    (pairs_dir / "pairs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    sft = train(pairs_dir, str(tiny_model_dir), tmp_path / "sft",
                settings=TrainSettings(method="sft", max_steps=1, batch_size=2, bf16=False))
    assert sft.rows == 4  # the SFT baseline reads each chosen once
    runs = {}
    for method in ("sft-dpo", "sft-chosen"):
        settings = TrainSettings(method=method, num_train_epochs=1, batch_size=2, grad_accum=1, bf16=False,
                                 learning_rate=5e-3, warm_start=str(tmp_path / "sft"))
        runs[method] = train(pairs_dir, str(tiny_model_dir), tmp_path / method, settings=settings)
    assert runs["sft-dpo"].rows == runs["sft-chosen"].rows == 5
    assert runs["sft-dpo"].steps == runs["sft-chosen"].steps == 3
    manifest = json.loads((tmp_path / "sft-chosen" / "fcagent_run.json").read_text())
    assert manifest["method"] == "sft-chosen" and manifest["adapters"] == ["sft_adapter", "adapter"]
    warm = load_chat_model(str(tmp_path / "sft"))
    before = chosen_logps(warm, rows[:4])
    after = chosen_logps(load_chat_model(str(tmp_path / "sft-chosen")), rows[:4])
    assert sum(after) > sum(before) + 0.5  # it is SFT on the chosen side: their likelihood rises


def test_last_turn_weight_fits_the_final_call_faster(tiny_model_dir, tmp_path):
    """Whole chains whose last call carries the answer: weighted, that call's likelihood rises more in
    the same steps (and the weight is recorded in the run folder)."""
    rows = []
    for q, answer in (("Is 4 even?", "True"), ("Is 7 even?", "False"), ("Is 10 even?", "True"), ("Is 3 even?", "False")):
        rows.append({"messages": [
            {"role": "system", "content": "Call a function."}, {"role": "user", "content": q},
            {"role": "assistant", "content": '{"name": "parity", "arguments": {"n": 1}}', "train": True},
            {"role": "user", "content": "Observation: computed."},
            {"role": "assistant", "content": '{"name": "final_answer", "arguments": {"answer": "%s"}}' % answer,
             "train": True}],
            "tools": "[]"})
    data = tmp_path / "data"
    data.mkdir()
    (data / "sft.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    gains = {}
    base = load_chat_model(str(tiny_model_dir))

    def final_logp(chat):
        return sum(logp(chat.hf_model, chat.tokenizer, r["messages"][:4], r["messages"][4]["content"]) for r in rows)

    before = final_logp(base)
    for weight in (1.0, 20.0):
        settings = TrainSettings(method="sft", max_steps=3, learning_rate=2e-3, batch_size=2, bf16=False,
                                 last_turn_weight=weight)
        train(data, str(tiny_model_dir), tmp_path / f"w{weight}", settings=settings)
        manifest = json.loads((tmp_path / f"w{weight}" / "fcagent_run.json").read_text())
        assert manifest["settings"]["last_turn_weight"] == weight
        gains[weight] = final_logp(load_chat_model(str(tmp_path / f"w{weight}"))) - before
    assert gains[20.0] > gains[1.0] + 1.0, gains
    with pytest.raises(UserError, match="last_turn_weight"):
        train(data, str(tiny_model_dir), tmp_path / "x", settings=TrainSettings(
            method="sft", max_steps=1, last_turn_weight=5.0, compact_head=False))


def test_bad_inputs_are_clear_errors(pairs_dir, tiny_model_dir, tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        train(pairs_dir, "./no/such/model", tmp_path / "r")
    (tmp_path / "cols").mkdir()
    (tmp_path / "cols" / "pairs.jsonl").write_text(json.dumps({"prompt": [{"role": "user", "content": "q"}]}) + "\n")
    with pytest.raises(UserError, match="no column\\(s\\) chosen, rejected"):
        train(tmp_path / "cols", str(tiny_model_dir), tmp_path / "r")
    distill_like = tmp_path / "distill"  # e.g. a distill run folder: training into it would mix a run in
    distill_like.mkdir()
    (distill_like / "harvest.done.json").write_text("{}")
    with pytest.raises(UserError, match="holds files a training run does not write \\(harvest.done.json\\)"):
        train(pairs_dir, str(tiny_model_dir), distill_like)
    assert sorted(p.name for p in distill_like.iterdir()) == ["harvest.done.json"]
    with pytest.raises(UserError, match="no training rows left.*prompt longer than max_length"):
        train(pairs_dir, str(tiny_model_dir), tmp_path / "r", settings=TrainSettings(max_length=16, max_steps=1))
    run = tmp_path / "run"
    train(pairs_dir, str(tiny_model_dir), run, settings=TrainSettings(max_steps=1, bf16=False))
    tampered = tmp_path / "tampered"
    shutil.copytree(run, tampered)
    weights = tampered / "adapter" / "adapter_model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(UserError, match="does not match the sha256"):
        load_chat_model(str(tampered))
    (tampered / "adapter" / "adapter_model.safetensors").unlink()
    (tampered / "adapter" / "adapter_model.bin").write_bytes(b"pickle")
    with pytest.raises(UserError, match="no adapter.*never loaded"):
        load_chat_model(str(tampered))


def test_a_run_folder_loads_only_what_its_manifest_hashes_from_inside_itself(pairs_dir, tiny_model_dir, tmp_path):
    run = tmp_path / "run"
    train(pairs_dir, str(tiny_model_dir), run, settings=TrainSettings(max_steps=1))
    good = json.loads((run / "fcagent_run.json").read_text())

    def variant(name, **changes):
        folder = tmp_path / name
        shutil.copytree(run, folder)
        manifest = {**good, **changes}
        for key in [k for k, v in changes.items() if v is None]:
            manifest.pop(key)
        (folder / "fcagent_run.json").write_text(json.dumps(manifest))
        return folder

    with pytest.raises(UserError, match="records no sha256 for adapter 'adapter'"):
        load_chat_model(str(variant("unhashed", adapter_sha256=None)))
    outside = variant("outside", adapters=["../run/adapter"], adapter_sha256={"../run/adapter": good["adapter_sha256"]["adapter"]})
    with pytest.raises(UserError, match="outside the run folder"):
        load_chat_model(str(outside))
    with pytest.raises(UserError, match="base_model"):
        load_chat_model(str(variant("nobase", base_model=None)))
    selfish = variant("selfish")
    manifest = json.loads((selfish / "fcagent_run.json").read_text())
    (selfish / "fcagent_run.json").write_text(json.dumps({**manifest, "base_model": str(selfish)}))
    with pytest.raises(UserError, match="leads back to this run folder"):
        load_chat_model(str(selfish))
    listed = variant("listed")
    (listed / "fcagent_run.json").write_text("[]")
    with pytest.raises(UserError, match="must be a JSON object"):
        load_chat_model(str(listed))


def test_exported_pairs_from_a_bundled_model_harvest_train_with_dpo(tmp_path, data_dir, tiny_model_dir):
    """`harvest` with the real bundled model (--samples 4) → exporter → TRL DPOTrainer, 2 steps."""
    from fcagent.data.export import export_preference_pairs
    from fcagent.pipeline.harvest import harvest

    db = tmp_path / "t.db"
    harvest(task="bfcl:simple_python", teacher="reference", limit=3, store=db, data_dir=data_dir)
    student = load_chat_model("bundled:smollm2-135m", max_new_tokens=32)
    harvest(task="bfcl:simple_python", teacher="bundled:smollm2-135m", model=student, samples=4, temperature=0.8,
            limit=3, store=db, data_dir=data_dir)
    exported = export_preference_pairs(db, tmp_path / "pairs")
    assert exported.rows >= 3 and set(exported.stats["by_source"]) <= {"step", "trajectory"}
    result = train(tmp_path / "pairs", str(tiny_model_dir), tmp_path / "run",
                   settings=TrainSettings(max_steps=2, batch_size=2, bf16=False))
    assert result.steps == 2 and result.final_metrics.get("loss") is not None


def test_sft_keeps_a_loadable_snapshot_after_every_epoch(pairs_dir, tiny_model_dir, tmp_path):
    # distill evaluates these as sft@N for the learning curve; the last epoch is the run itself.
    settings = TrainSettings(method="sft", num_train_epochs=2, batch_size=2, learning_rate=5e-3, bf16=False,
                             save_epochs=True)
    train(pairs_dir, str(tiny_model_dir), tmp_path / "run", settings=settings)
    final = json.loads((tmp_path / "run" / "fcagent_run.json").read_text())
    snapshots = {n: json.loads((tmp_path / "run" / "epochs" / n / "fcagent_run.json").read_text()) for n in ("1", "2")}
    assert [s["epoch"] for s in snapshots.values()] == [1, 2]
    assert {s["prompt_style"] for s in snapshots.values()} == {final["prompt_style"]}
    # the last snapshot holds the final weights, the first other ones; both load as run folders
    assert snapshots["2"]["adapter_sha256"]["adapter"] == final["adapter_sha256"]["adapter"]
    assert snapshots["1"]["adapter_sha256"]["adapter"] != final["adapter_sha256"]["adapter"]
    rows = [json.loads(x) for x in (pairs_dir / "pairs.jsonl").read_text().splitlines()]
    first, last = (load_chat_model(str(tmp_path / "run" / "epochs" / n)) for n in ("1", "2"))
    assert chosen_logps(first, rows) != chosen_logps(last, rows)


def test_full_finetune_trains_every_weight_and_the_run_loads_as_a_whole_model(pairs_dir, tiny_model_dir, tmp_path):
    rows = [json.loads(x) for x in (pairs_dir / "pairs.jsonl").read_text().splitlines()]
    before = chosen_logps(load_chat_model(str(tiny_model_dir)), rows)
    settings = TrainSettings(method="sft", full_finetune=True, num_train_epochs=2, batch_size=2, learning_rate=1e-3,
                             save_epochs=True)
    train(pairs_dir, str(tiny_model_dir), tmp_path / "run", settings=settings)
    run = tmp_path / "run"
    manifest = json.loads((run / "fcagent_run.json").read_text())
    assert manifest["adapters"] == [] and manifest["lora"] is None and manifest["base_dtype"] == "float32"
    assert not (run / "adapter").exists() and (run / "merged" / "model.safetensors").exists()
    student = load_chat_model(str(run), max_new_tokens=8)
    after = chosen_logps(student, rows)
    assert sum(after) / len(after) > sum(before) / len(before) + 0.5  # measured: the chosen calls got likelier
    snapshots = {n: json.loads((run / "epochs" / n / "fcagent_run.json").read_text()) for n in ("1", "2")}
    assert snapshots["2"]["merged_sha256"] == manifest["merged_sha256"] != snapshots["1"]["merged_sha256"]
    first = load_chat_model(str(run / "epochs" / "1"))
    assert chosen_logps(first, rows) != after
    # saved mid-training, the snapshot still renders with the inference template, not the training one
    assert first.tokenizer.chat_template == student.tokenizer.chat_template
    assert "{% generation %}" not in first.tokenizer.chat_template
    task = get_task("math")  # swapped back into the graph like any student
    assert build_agent_graph(student, task=task, max_steps=1).invoke({"problem": task.load(limit=1)[0]})["steps"] == 1
    # a run folder that vouches for no weights at all is refused, not loaded as the untrained base
    (run / "merged" / "model.safetensors").unlink()
    with pytest.raises(UserError, match="lists no adapter, and the run has no merged model"):
        load_chat_model(str(run))
    with pytest.raises(UserError, match="trains the SFT baseline only"):
        train(pairs_dir, str(tiny_model_dir), tmp_path / "r", settings=TrainSettings(method="dpo", full_finetune=True))
    with pytest.raises(UserError, match="in float32"):
        train(pairs_dir, str(tiny_model_dir), tmp_path / "r",
              settings=TrainSettings(method="sft", full_finetune=True, base_dtype="bfloat16"))
