"""Model soups on real tiny-model training: the soup is the mean of its students, loads and swaps back."""

import json
import shutil

import pytest
import torch
from langchain.agents import create_agent
from langchain_core.messages import HumanMessage
from langchain_core.tools import tool
from typer.testing import CliRunner

from fcagent import average_students, build_agent_graph, get_task, load_chat_model
from fcagent.cli.app import app
from fcagent.core.errors import UserError
from fcagent.training.settings import TrainSettings
from fcagent.training.train import train

pytestmark = pytest.mark.slow  # trains students to average

ROWS = [("What is 2 plus 3?", '{"name": "add", "arguments": {"a": 2, "b": 3}}'),
        ("What is 7 times 6?", '{"name": "multiply", "arguments": {"a": 7, "b": 6}}')]


@tool
def population(city: str) -> str:
    """Population of a city."""
    return {"Oslo": "709000"}.get(city, "unknown")


@pytest.fixture(scope="module")
def students(tmp_path_factory, tiny_model_dir):
    """Two LoRA runs and one whole-model run of the same tiny base, trained apart."""
    root = tmp_path_factory.mktemp("soup")
    sft = root / "sft"
    sft.mkdir()
    rows = [{"messages": [{"role": "system", "content": "Call a function."}, {"role": "user", "content": q},
                          {"role": "assistant", "content": c}], "tools": "[]"} for q, c in ROWS]
    (sft / "sft.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    runs = []
    for name, extra in (("a", {"seed": 0}), ("b", {"seed": 1, "learning_rate": 2e-2}), ("c", {"full_finetune": True})):
        settings = TrainSettings(**{"method": "sft", "max_steps": 3, "batch_size": 2, "learning_rate": 5e-3,
                                    "bf16": False, **extra})
        train(sft, str(tiny_model_dir), root / name, settings=settings)
        runs.append(str(root / name))
    return runs


def weights(spec):
    return {k: v.float() for k, v in load_chat_model(spec).hf_model.state_dict().items()}


def test_a_soup_is_the_mean_of_its_students_and_swaps_back(students, tmp_path):
    result = average_students(students, tmp_path / "soup")
    manifest = json.loads((tmp_path / "soup" / "fcagent_run.json").read_text())
    assert manifest["soup"] == students and manifest["method"] == "soup" and manifest["adapters"] == []
    assert manifest["merged_sha256"] == result.merged_sha256
    parts = [weights(s) for s in students]
    soup = weights(str(tmp_path / "soup"))
    assert any(not torch.equal(parts[0][k], parts[1][k]) for k in soup)  # the students differ ...
    for name, w in soup.items():  # ... and the soup is their mean, weight by weight
        assert torch.allclose(w, sum(p[name] for p in parts) / len(parts), atol=1e-6), name
    task = get_task("math")
    student = load_chat_model(str(tmp_path / "soup"), max_new_tokens=8)
    assert build_agent_graph(student, task=task, max_steps=1).invoke({"problem": task.load(limit=1)[0]})["steps"] == 1
    # and as the model of a user's own agent, with the user's tool (the grammar keeps the tiny model to a call)
    agent = create_agent(student.model_copy(update={"constrain": "llguidance", "max_new_tokens": 64}), [population])
    first = next(iter(agent.stream({"messages": [HumanMessage("How many people live in Oslo?")]}, stream_mode="updates")))
    (reply,) = first["model"]["messages"]  # its first step (a random tiny model would call on and on)
    assert reply.tool_calls[0]["name"] == "population"
    # an earlier soup is replaced in place; a soup of soups is just another student
    again = average_students(students[:2], tmp_path / "soup")
    assert again.merged_sha256 != result.merged_sha256
    assert json.loads((tmp_path / "soup" / "fcagent_run.json").read_text())["soup"] == students[:2]


def test_a_soup_refuses_what_it_cannot_average(students, tiny_model_dir, tmp_path):
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    with pytest.raises(UserError, match="at least two students"):
        average_students(students[:1], tmp_path / "s")
    with pytest.raises(UserError, match="inference options"):
        average_students([students[0], students[1] + "?constrain=llguidance"], tmp_path / "s")
    with pytest.raises(UserError, match="is one of the students"):
        average_students(students[:2], students[1])
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("mine")
    with pytest.raises(UserError, match="not empty and holds no earlier soup"):
        average_students(students[:2], tmp_path / "busy")
    assert (tmp_path / "busy" / "notes.txt").read_text() == "mine"
    with pytest.raises(UserError, match="not a local model"):  # the replaying teacher has no weights
        average_students([students[0], "reference"], tmp_path / "s")
    other = tmp_path / "wider"
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True)
    LlamaForCausalLM(cfg).save_pretrained(other)
    tok.save_pretrained(other)
    with pytest.raises(UserError, match="not the same architecture"):
        average_students([str(tiny_model_dir), str(other)], tmp_path / "s")
    other_tok = tmp_path / "other-tokenizer"  # same weights and shapes, one token more
    shutil.copytree(tiny_model_dir, other_tok)
    tok.add_tokens(["<soup-extra>"])
    tok.save_pretrained(other_tok)
    with pytest.raises(UserError, match="another tokenizer"):
        average_students([str(tiny_model_dir), str(other_tok)], tmp_path / "s")
    restyled = tmp_path / "restyled"  # the same adapter, declared to prompt in the other style
    shutil.copytree(students[0], restyled)
    manifest = json.loads((restyled / "fcagent_run.json").read_text())
    style = load_chat_model(students[0]).prompt_style
    manifest["prompt_style"] = "examples" if style == "compact" else "compact"
    (restyled / "fcagent_run.json").write_text(json.dumps(manifest))
    with pytest.raises(UserError, match="must be trained on the same prompts"):
        average_students([students[0], str(restyled)], tmp_path / "s")
    assert not (tmp_path / "s").exists()  # nothing half-written
    # on the command line: one line, exit code 2 (bad input), no traceback
    result = CliRunner().invoke(app, ["soup", "-m", students[0], "--out", str(tmp_path / "s")])
    assert result.exit_code == 2 and "at least two students" in result.output and "Traceback" not in result.output
    ok = CliRunner().invoke(app, ["soup", "-m", students[0], "-m", students[2], "--out", str(tmp_path / "cli")])
    assert ok.exit_code == 0, ok.output
    assert load_chat_model(str(tmp_path / "cli")).model_name == str(tmp_path / "cli")
