# Record of a past run (2026-11-26): summary.md. Kept as it ran; the CLI flags it uses may have
# been renamed since (see docs/cli.md): harvest/replay --samples is now --candidates,
# --teacher/--student of harvest/replay/train/soup are now -m/--model, train --max-steps is now
# --max-optimizer-steps, run --max-steps is now --max-agent-steps, serve MODEL is now serve
# --student MODEL, export --prompt-style as_recorded is now examples.
"""Per seed: what each model answers on the 100 held-out ProntoQA problems, and how DPO's last steps
ended (its rewards). Run from the project root after run.sh 0 1 2; writes summary.md here."""
import json
from pathlib import Path

HERE = Path(__file__).parent
MODELS = ("sft", "sft-chosen", "sft-dpo")


def rows(seed: int, model: str) -> list[dict]:
    path = Path(f"runs/logic-pref-s{seed}/eval/results/{model}.jsonl")
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else float("nan")


lines = ["# ProntoQA: one pass over the SFT student's answer errors, two ways, three seeds", "",
         "Answers on the 100 held-out problems (gold: 52 `True`, 48 `False`): right / `True` answered "
         "(of them right) / anything but True or False.", "",
         "| seed | pairs (True>False, False>True, other) | " + " | ".join(MODELS) + " |",
         "|---|---|" + "---|" * len(MODELS)]
dpo_end = []
for seed in (0, 1, 2):
    folder = Path(f"runs/logic-pref-s{seed}")
    if not (folder / "eval" / "results" / "sft-dpo.jsonl").exists():
        continue
    pairs = [json.loads(x) for x in (folder / "data" / "pairs.jsonl").read_text().splitlines() if x.strip()]
    kinds = [("True" if '"True"' in p["chosen"][-1]["content"] else "False")
             + (">" + ("True" if '"True"' in p["rejected"][-1]["content"] else
                       "False" if '"False"' in p["rejected"][-1]["content"] else "other")) for p in pairs]
    split = f"{len(pairs)} ({kinds.count('True>False')}, {kinds.count('False>True')}, " \
            f"{len(pairs) - kinds.count('True>False') - kinds.count('False>True')})"
    cells = []
    for model in MODELS:
        r = rows(seed, model)
        said_true = [x for x in r if x["final_answer"] == "True"]
        other = [x for x in r if x["final_answer"] not in ("True", "False")]
        cells.append(f"{sum(x['success'] for x in r)} / {len(said_true)} ({sum(x['success'] for x in said_true)}) / {len(other)}")
    lines.append(f"| {seed} | {split} | " + " | ".join(cells) + " |")
    log = [json.loads(x) for x in (folder / "runs" / "sft-dpo" / "metrics.jsonl").read_text().splitlines() if x.strip()]
    steps = [x for x in log if "rewards/chosen" in x]
    last = steps[-5:]
    dpo_end.append(f"| {seed} | {len(steps)} | {mean([x['rewards/chosen'] for x in last]):+.2f} | "
                   f"{mean([x['rewards/rejected'] for x in last]):+.2f} | {mean([x['rewards/accuracies'] for x in last]):.2f} |")
lines += ["", "DPO's last five logged steps (β 0.1; rewards are β·log-ratio to the SFT start):", "",
          "| seed | logged steps | rewards/chosen | rewards/rejected | reward accuracy |", "|---|---|---|---|---|", *dpo_end]
(HERE / "summary.md").write_text("\n".join(lines) + "\n")
print("\n".join(lines))
