"""From your agent's recorded traffic to a promoted student, gated by a measurement on that traffic.

    python examples/own_traffic.py [runs/own-traffic] [--requests 290] [--steps 40]

The traffic here is the bundled demo (`record_demo_traffic`): a `create_agent` agent over NESTFUL's APIs
(IBM, Apache-2.0), each request answered by a scripted large model that goes wrong in one run in five,
and every episode labelled by its user's feedback. Your own store takes its place unchanged: record it
with `TraceRecorder`, label it (`store.label_many(read_feedback(path))` or `fcagent traces label`).

`distill_traffic` holds out a fifth of the requests (by a hash of the request, so training never sees
them), trains the student on the rest, scores the base student, the new one and the recorded model on
every held-out step, and promotes the new student (points `prod` at it) only if the gate holds.
`fcagent distill --store STORE --gate ... --promote ...` is the same from the command line.
"""
import argparse
from pathlib import Path

from fcagent import Gate, TraceStore, TrainSettings, distill_traffic, record_demo_traffic

parser = argparse.ArgumentParser()
parser.add_argument("out", nargs="?", default="runs/own-traffic")
parser.add_argument("--requests", type=int, default=None, help="demo requests to record (all 290 by default)")
parser.add_argument("--steps", type=int, default=40, help="training steps (batch 4)")
args = parser.parse_args()
out = Path(args.out)

# --- 1. your agent's traffic, recorded and labelled by your users (here: the demo's) ----------------------
store = TraceStore(out / "traces.db")
if store.count() == 0:
    counts = record_demo_traffic(store, limit=args.requests)
    print(f"recorded {counts['episodes']} episodes: {counts['labelled_good']} good, {counts['labelled_bad']} bad")

# --- 2. train on the train side, measure on the held-out side, promote only past the gate ---------------
result = distill_traffic(store=store, out=out / "loop", student="bundled:smollm2-135m",
                         settings=TrainSettings(method="sft", max_steps=args.steps, per_device_train_batch_size=4),
                         gate=Gate.parse(["step_agreement>=0.3"]), promote_to=out / "prod", log=lambda line: None)

# --- 3. what it measured -----------------------------------------------------------------------------------
for name, m in result.report["models"].items():
    agreement = m["step_agreement"]
    print(f"{name:>9}: step agreement {agreement['agree']}/{agreement['n']} = {agreement['rate']:.0%} "
          f"(95% CI {agreement['ci95'][0]:.0%}-{agreement['ci95'][1]:.0%}), would escalate {m['escalation_rate']:.0%}")
print("\n".join(result.verdict))
print(f"exit code {result.exit_code} (3: the gate does not hold); report: {out / 'loop'}/round-*/eval/report.md")
