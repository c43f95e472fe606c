"""Whole-chain SFT rows, the training template, the compact prompt and prefix-shared DPO: each is
checked against what it replaces (the same tokens, the same loss, the same gradients)."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from langchain_core.messages import AIMessage, HumanMessage, SystemMessage

from fcagent import get_task, load_chat_model
from fcagent.core.records import to_langchain
from fcagent.data.export import export_sft
from fcagent.pipeline.harvest import harvest
from fcagent.training.chat_templates import training_template


@pytest.fixture(scope="module")
def chains(tmp_path_factory, smol_dir):
    root = tmp_path_factory.mktemp("chains")
    harvest(task="math", limit=6, store=root / "t.db")
    whole = export_sft(root / "t.db", root / "whole")
    steps = export_sft(root / "t.db", root / "steps", sft_rows="step")
    compact = export_sft(root / "t.db", root / "compact", prompt_style="compact")
    read = lambda r: [json.loads(x) for x in r.path.read_text().splitlines()]  # noqa: E731
    return {"whole": read(whole), "steps": read(steps), "compact": read(compact)}


def test_a_chain_is_one_row_with_every_turn_trained(chains):
    assert len(chains["whole"]) == 6 and len(chains["steps"]) == sum(
        sum(m["role"] == "assistant" for m in r["messages"]) for r in chains["whole"])
    for row in chains["whole"]:
        assert all(m["train"] for m in row["messages"] if m["role"] == "assistant")
    for row in chains["steps"]:
        flags = [m["train"] for m in row["messages"] if m["role"] == "assistant"]
        assert flags[-1] and not any(flags[:-1])


@pytest.mark.slow
def test_the_training_template_renders_the_inference_prompt_token_for_token(chains):
    """Every trained turn of a chain row starts exactly where LocalChatModel's prompt for that step ends."""
    student = load_chat_model("bundled:smollm2-135m")
    tok = student.tokenizer
    template = training_template(tok)
    assert template is not None
    for row in chains["whole"][:3] + chains["compact"][:3]:
        messages = row["messages"]
        rendered = tok.apply_chat_template(messages, chat_template=template, return_dict=True,
                                           return_assistant_tokens_mask=True)
        ids, mask = rendered["input_ids"], rendered["assistant_masks"]
        assert tok.apply_chat_template(messages, tokenize=False, chat_template=template) == \
            tok.apply_chat_template([{k: v for k, v in m.items() if k != "train"} for m in messages], tokenize=False)
        starts = [i for i in range(len(mask)) if mask[i] and (i == 0 or not mask[i - 1])]
        turns = [i for i, m in enumerate(messages) if m["role"] == "assistant"]
        assert len(starts) == len(turns)
        for start, k in zip(starts, turns):
            history = [to_langchain({"role": m["role"], "content": m["content"]}) for m in messages[:k]]
            prompt_ids = tok(student.render(history), add_special_tokens=False)["input_ids"]
            assert ids[:start] == prompt_ids  # the exact prompt the student sees at this step
            assert tok.decode([t for t, m in zip(ids[start:], mask[start:]) if m][: len(tok(messages[k]["content"] + "<|im_end|>", add_special_tokens=False)["input_ids"])]) \
                == messages[k]["content"] + "<|im_end|>"


def _nll(model, ids: list[int], mask: list[int]) -> tuple[float, int]:
    x = torch.tensor([ids])
    with torch.no_grad():
        logits = model(input_ids=x).logits[0, :-1].float()
    logp = torch.log_softmax(logits, -1).gather(-1, x[0, 1:].unsqueeze(-1)).squeeze(-1)
    m = torch.tensor(mask[1:], dtype=torch.bool)
    return float(-logp[m].sum()), int(m.sum())


@pytest.mark.slow
def test_whole_chain_loss_equals_the_per_step_losses(chains, tiny_model_dir):
    """Same weights, same reduction: the summed NLL over a chain's assistant tokens equals the summed NLL
    of its per-step rows (each token sees the same context in both), with as many tokens."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    template = training_template(tok)
    for chain in chains["whole"][:3]:
        r = tok.apply_chat_template(chain["messages"], chat_template=template, return_dict=True,
                                    return_assistant_tokens_mask=True)
        chain_loss, chain_tokens = _nll(model, r["input_ids"], r["assistant_masks"])
        step_loss, step_tokens = 0.0, 0
        turns = [i for i, m in enumerate(chain["messages"]) if m["role"] == "assistant"]
        for k in turns:  # TRL's prompt/completion form of the same turn
            plain = [{"role": m["role"], "content": m["content"]} for m in chain["messages"]]
            prompt = tok.apply_chat_template(plain[:k], add_generation_prompt=True, return_dict=True)["input_ids"]
            full = tok.apply_chat_template(plain[: k + 1], return_dict=True)["input_ids"]
            assert full[: len(prompt)] == prompt
            completion = tok(plain[k]["content"] + "<|im_end|>", add_special_tokens=False)["input_ids"]
            mask = [0] * len(prompt) + [1] * len(completion) + [0] * (len(full) - len(prompt) - len(completion))
            loss, n = _nll(model, full, mask)
            step_loss, step_tokens = step_loss + loss, step_tokens + n
        assert chain_tokens == step_tokens
        assert chain_loss == pytest.approx(step_loss, rel=1e-5)


@pytest.mark.slow
def test_the_compact_prompt_is_smaller_and_carried_to_the_run_folder(chains, tmp_path, tiny_model_dir):
    from fcagent.training.settings import TrainSettings
    from fcagent.training.train import train

    whole = sum(len(json.dumps(r["messages"])) for r in chains["whole"])
    compact = sum(len(json.dumps(r["messages"])) for r in chains["compact"])
    assert compact < 0.75 * whole
    assert "Example 1:" in chains["whole"][0]["messages"][0]["content"]
    assert "Example 1:" not in chains["compact"][0]["messages"][0]["content"]
    data = tmp_path / "data"
    data.mkdir()
    (data / "sft.jsonl").write_text("".join(json.dumps(r) + "\n" for r in chains["compact"]))
    (data / "stats.sft.json").write_text(json.dumps({"settings": {"prompt_style": "compact"}}))
    train(data, str(tiny_model_dir), tmp_path / "run", settings=TrainSettings(method="sft", max_steps=1))
    assert json.loads((tmp_path / "run" / "fcagent_run.json").read_text())["prompt_style"] == "compact"
    served = load_chat_model(str(tmp_path / "run"))
    assert served.prompt_style == "compact"  # no flag: the run folder says so
    # served through the graph, the student's prompt is the compact one it was trained on
    from fcagent import build_agent_graph

    task = get_task("math")
    problem = task.load(split="train", limit=1)[0]
    state = build_agent_graph(served.model_copy(update={"max_new_tokens": 4}), task=task, max_steps=1).invoke(
        {"problem": problem})
    assert state["steps"] == 1
    system = next(r for r in chains["compact"] if r["problem_id"] == problem.id)["messages"][0]["content"] \
        if any(r["problem_id"] == problem.id for r in chains["compact"]) else None
    if system is not None:
        from fcagent.agent.graph import final_answer_tool
        from fcagent.agent.prompting import render_system_prompt, tool_schemas

        rendered = render_system_prompt(tool_schemas([*task.tools_for(problem), final_answer_tool()]),
                                        instructions=task.instructions, system=problem.system, style="compact")
        assert rendered == system


@pytest.mark.slow
def test_prefix_shared_dpo_matches_trls_log_probs_and_gradients(tiny_model_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl.trainer.dpo_trainer import DataCollatorForPreference
    from trl.trainer.utils import add_fused_lm_head

    from fcagent.training.trainers import install_prefix_sharing

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    trl_model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    ours = copy.deepcopy(trl_model)
    outputs = ("log_probs", "entropy", "mean_logits", "is_top1")
    add_fused_lm_head(trl_model, outputs=outputs)
    add_fused_lm_head(ours, outputs=outputs)
    install_prefix_sharing(ours, outputs)
    examples = [{"prompt_ids": list(range(10, 60)), "chosen_ids": [5, 6, 7, 8], "rejected_ids": [9, 10]},
                {"prompt_ids": list(range(70, 90)), "chosen_ids": [11], "rejected_ids": [12, 13, 14, 15, 16, 17]}]
    batch = DataCollatorForPreference(pad_token_id=tok.pad_token_id)(examples)
    labels = batch["input_ids"].masked_fill(batch["completion_mask"] == 0, -100)
    kw = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"], "labels": labels,
          "fused_lm_head": True, "use_cache": False}
    a, b = trl_model(**kw), ours(**kw)
    assert torch.allclose(a.log_probs, b.log_probs, atol=1e-4) and torch.allclose(a.entropy, b.entropy, atol=1e-4)
    assert torch.equal(a.is_top1, b.is_top1)
    (a.log_probs.sum() + a.entropy.sum()).backward()
    (b.log_probs.sum() + b.entropy.sum()).backward()
    for p, q in zip(trl_model.parameters(), ours.parameters()):
        assert torch.allclose(p.grad, q.grad, atol=1e-4)
    # a batch that is not pairs of shared prompts is scored unpacked, still only where labelled
    single = {**kw, "input_ids": batch["input_ids"][:3], "attention_mask": batch["attention_mask"][:3], "labels": labels[:3]}
    assert torch.allclose(trl_model(**single).log_probs, ours(**single).log_probs, atol=1e-4)


def test_the_compact_lm_head_matches_trls_for_sft(tiny_model_dir):
    from transformers import AutoModelForCausalLM
    from trl.trainer.utils import add_fused_lm_head

    from fcagent.training.trainers import install_compact_head

    trl_model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    ours = copy.deepcopy(trl_model)
    outputs = ("log_probs", "entropy", "is_top1")
    add_fused_lm_head(trl_model, outputs=outputs)
    add_fused_lm_head(ours, outputs=outputs)
    install_compact_head(ours, outputs)
    ids = torch.randint(5, 2000, (3, 40))
    mask = torch.ones_like(ids)
    mask[2, 30:] = 0  # a padded row
    labels = ids.masked_fill(torch.rand(ids.shape) < 0.7, -100).masked_fill(mask == 0, -100)
    kw = {"input_ids": ids, "attention_mask": mask, "labels": labels, "fused_lm_head": True}
    a, b = trl_model(**kw), ours(**kw)
    assert torch.allclose(a.log_probs, b.log_probs, atol=1e-4) and torch.allclose(a.loss, b.loss, atol=1e-5)
    a.loss.backward()
    b.loss.backward()
    for p, q in zip(trl_model.parameters(), ours.parameters()):
        assert torch.allclose(p.grad, q.grad, atol=1e-4)


def test_the_graph_serves_a_model_its_own_prompt_style(tiny_model_dir):
    from fcagent import build_agent_graph
    from fcagent.agent.testing import ScriptedChatModel

    task = get_task("math")
    problem = task.load(limit=1)[0]
    for style, example in (("examples", True), ("compact", False)):
        model = ScriptedChatModel(native=False, responses=['final_answer(answer=1)'])
        object.__setattr__(model, "prompt_style", style)
        build_agent_graph(model, task=task).invoke({"problem": problem})
        system = model.seen_messages[0][0]
        assert isinstance(system, SystemMessage) and ("Example 1:" in system.content) == example
    assert isinstance(HumanMessage("x"), HumanMessage) and AIMessage  # imports used


def test_last_turn_weight_weights_only_each_rows_final_turn(tiny_model_dir):
    from transformers import AutoModelForCausalLM
    from trl.trainer.utils import add_fused_lm_head

    from fcagent.training.trainers import install_compact_head, last_turn_mask

    labels = torch.full((3, 12), -100)
    labels[0, 2:4] = labels[0, 6:9] = 7  # two turns: the second is the last
    labels[1, 3:11] = 7  # one turn
    # row 2: nothing labelled
    mask = last_turn_mask(labels)  # TRL scores label t+1 at position t
    assert mask[0].nonzero().flatten().tolist() == [5, 6, 7]
    assert mask[1].nonzero().flatten().tolist() == list(range(2, 10)) and not mask[2].any()

    trl_model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    ours = copy.deepcopy(trl_model)
    outputs = ("log_probs", "entropy", "is_top1")
    add_fused_lm_head(trl_model, outputs=outputs)
    add_fused_lm_head(ours, outputs=outputs)
    install_compact_head(ours, outputs, last_turn_weight=5.0)
    ids = torch.randint(5, 2000, (3, 12))
    labels = torch.where(labels == 7, ids, labels)
    kw = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels, "fused_lm_head": True}
    a, b = trl_model(**kw), ours(**kw)
    plain = -a.log_probs.sum()
    extra = -(a.log_probs * mask).sum()
    assert torch.allclose(b.loss, (plain + 4.0 * extra) / a.label_mask.sum(), atol=1e-5)
    assert torch.equal(a.is_top1, b.is_top1) and torch.allclose(a.entropy, b.entropy, atol=1e-4)
