# Record of a past run (2026-11-26): answer_token_probe.txt here and in logic/prontoqa-weighted/.
# Kept as it ran; the CLI flags it uses may have been renamed since (see docs/cli.md):
# harvest/replay --samples is now --candidates, --teacher/--student of harvest/replay/train/soup
# are now -m/--model, train --max-steps is now --max-optimizer-steps, run --max-steps is now
# --max-agent-steps, serve MODEL is now serve --student MODEL, export --prompt-style as_recorded
# is now examples.
"""Does a trained ProntoQA student fit its own training answers? Teacher-force each whole-chain SFT row
up to the final answer token and compare p("True") with p("False").

    python docs/results/logic/prontoqa-full/answer_token_probe.py runs/logic-full \
        runs/logic-full/runs/sft runs/logic-full/runs/sft/epochs/2

Output of that command (2026-11-26) is in answer_token_probe.txt beside this file.
"""

import json
import sys
from pathlib import Path

import torch

from fcagent.training.chat_templates import training_template
from fcagent.models.loading import load_chat_model


def main(run_folder: str, *specs: str) -> None:
    rows = [json.loads(line) for line in (Path(run_folder) / "data-sft" / "sft.jsonl").open()]
    for spec in specs:
        model = load_chat_model(spec)
        tok, hf = model.tokenizer, model.hf_model
        (true_id,), (false_id,) = tok.encode("True", add_special_tokens=False), tok.encode("False", add_special_tokens=False)
        right = predicts_true = 0
        p_gold = []
        for row in rows:
            ids = tok.apply_chat_template(row["messages"], chat_template=training_template(tok), tokenize=True,
                                          return_dict=True)["input_ids"]
            gold = json.loads(row["messages"][-1]["content"])["arguments"]["answer"]
            gold_id = true_id if gold == "True" else false_id
            at = max(i for i, t in enumerate(ids) if t == gold_id)  # the answer token is the gold word's last use
            with torch.no_grad():
                probs = torch.softmax(hf(torch.tensor([ids[:at]])).logits[0, -1].float(), -1)
            p_true, p_false = probs[true_id].item(), probs[false_id].item()
            predicted = "True" if p_true > p_false else "False"
            right += predicted == gold
            predicts_true += predicted == "True"
            p_gold.append((p_true if gold == "True" else p_false) / (p_true + p_false))
        print(f"{spec}: train answers right {right}/{len(rows)}; predicts True {predicts_true}; "
              f"mean p(gold | True or False) {sum(p_gold) / len(p_gold):.3f}")


if __name__ == "__main__":
    main(*sys.argv[1:])
