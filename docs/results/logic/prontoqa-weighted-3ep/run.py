# Record of a past run (2026-11-26): report.md (seed 0) and the seed-1 and seed-2 runs that
# seeds.py reads. Kept as it ran; the CLI flags it uses may have been renamed since (see
# docs/cli.md): harvest/replay --samples is now --candidates, --teacher/--student of
# harvest/replay/train/soup are now -m/--model, train --max-steps is now --max-optimizer-steps,
# run --max-steps is now --max-agent-steps, serve MODEL is now serve --student MODEL, export
# --prompt-style as_recorded is now examples.
"""The 3-epoch weighted ProntoQA student: the SFT stage of `fcagent distill --task logic:prontoqa --preset full
--method sft --sft-epochs 3 --last-turn-weight 20 [--seed N]` (same settings) and one evaluation of the final
model (distill would also evaluate its epoch snapshots). Run from the project root, after runs/logic-ltw20
exists (its export is the data):

    python docs/results/logic/prontoqa-weighted-3ep/run.py [SEED]

Seed 0 writes runs/logic-ltw20-3ep, seed N runs/logic-ltw20-3ep-seedN. Results: report.md beside this file."""
import json
import sys

from fcagent.pipeline.evaluate import evaluate
from fcagent.training.settings import TrainSettings
from fcagent.training.train import train

seed = int(sys.argv[1]) if len(sys.argv) > 1 else 0
out = "runs/logic-ltw20-3ep" + (f"-seed{seed}" if seed else "")
settings = TrainSettings(method="sft", num_train_epochs=3, per_device_train_batch_size=4, last_turn_weight=20.0,
                         prompt_style="compact", seed=seed)
print(train("runs/logic-ltw20/data-sft", "bundled:smollm2-135m", out + "/sft", settings=settings).model_dump(mode="json"))
report = evaluate({"sft3" + (f"-seed{seed}" if seed else ""): out + "/sft"}, task="logic:prontoqa", split="test", limit=100,
                  out_dir=out + "/eval", model_kwargs={"max_new_tokens": 40, "response_prefix": '{"name": "'})
print(json.dumps({k: v["correct"] for k, v in report["models"].items()}))
