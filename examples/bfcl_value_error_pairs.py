"""Preference pairs whose rejected side is sampled under the grammar (value errors, not format errors):
the SFT student + llguidance replays 80 teacher contexts x 4; SFT->DPO from the same SFT adapter; both
evaluated with the grammar on the same 100 BFCL problems (docs/results/bfcl/value-error-pairs/).

    python examples/bfcl_value_error_pairs.py runs/bfcl/runs/sft runs/bfcl-value-pairs
"""
import json
import sys
import time
from pathlib import Path

from fcagent.data.export import export_preference_pairs
from fcagent.models.loading import load_chat_model
from fcagent.pipeline.evaluate import evaluate
from fcagent.pipeline.harvest import harvest
from fcagent.pipeline.replay import replay
from fcagent.tasks import get_task
from fcagent.training.settings import TrainSettings
from fcagent.training.train import train

out = Path(sys.argv[2] if len(sys.argv) > 2 else "runs/bfcl-value-pairs"); store = out / "traces.db"; task = "bfcl:simple_python"
SFT = sys.argv[1] if len(sys.argv) > 1 else "runs/bfcl/runs/sft"  # an SFT run folder (distill makes one)
t = get_task(task); kw = {"max_new_tokens": t.max_new_tokens, "response_prefix": '{"name": "'}
T = {}
s = time.time(); print(harvest(task=task, teacher="reference", split="train", store=store, resume=True)); T["harvest"] = time.time() - s
s = time.time(); chat = load_chat_model(SFT, constrain="llguidance", **kw)
print(replay(store, chat, student_name=SFT + "?constrain=llguidance", task=task, samples=4, temperature=0.8, limit=80)); T["replay"] = time.time() - s
ex = export_preference_pairs(store, out / "data", tokenizer=chat.tokenizer); print(ex.rows, json.dumps(ex.stats.get("rejected_reasons")))
s = time.time(); print(train(out / "data", "bundled:smollm2-135m", out / "runs" / "sft-dpo-vg",
      settings=TrainSettings(method="sft-dpo", max_steps=20, batch_size=2, grad_accum=2, warm_start=SFT)).model_dump_json()[:400]); T["train"] = time.time() - s
s = time.time()
rep = evaluate({"sft+llguidance": SFT + "?constrain=llguidance", "sft-dpo-vg+llguidance": str(out / "runs" / "sft-dpo-vg") + "?constrain=llguidance"},
               task=task, split="test", limit=100, out_dir=out / "eval", model_kwargs=kw); T["eval"] = time.time() - s
print(json.dumps({k: v["correct"] for k, v in rep["models"].items()}), json.dumps(rep["mcnemar"]), json.dumps(T))
