# Record of a past run (2026-11-26): grammar_twin.md. Kept as it ran; the CLI flags it uses may
# have been renamed since (see docs/cli.md): harvest/replay --samples is now --candidates,
# --teacher/--student of harvest/replay/train/soup are now -m/--model, train --max-steps is now
# --max-optimizer-steps, run --max-steps is now --max-agent-steps, serve MODEL is now serve
# --student MODEL, export --prompt-style as_recorded is now examples.
"""The jointly trained BFCL student with and without a call grammar that allows lists of calls, on the
held-out problems of BFCL's parallel categories. Run from the project root:

    fcagent eval --task bfcl:parallel+parallel_multiple --limit 156 --out runs/bfcl-joined-grammar \
        --model "sft+llguidance=runs/bfcl-joined/runs/sft?constrain=llguidance&constrain_calls=many"
    python docs/results/bfcl/joined/grammar_twin.py

The unconstrained side is the joined run's own evaluation (runs/bfcl-joined, the same weights, greedy,
the same 224-token budget and no reply prefix): the same problems, paired. Writes grammar_twin.md here.
"""
import json
import re
from collections import Counter
from pathlib import Path

from fcagent.pipeline.evaluate import mcnemar_exact

HERE = Path(__file__).parent
PLAIN = Path("runs/bfcl-joined/eval/results/sft.jsonl")
GRAMMAR = Path("runs/bfcl-joined-grammar/results/sft+llguidance.jsonl")


def load(path: Path) -> dict[str, dict]:
    return {r["problem_id"]: r for r in map(json.loads, path.read_text().splitlines()) if r}


def failure(row: dict) -> str:
    if row["success"]:
        return "right"
    m = re.match(r"made (\d+) calls, expected (\d+)", row["reason"])
    if m:
        return "too few calls" if int(m[1]) < int(m[2]) else "too many calls"
    return "no function call" if row["reason"].startswith("no function call") else "a wrong call"


plain, grammar = load(PLAIN), load(GRAMMAR)
ids = [i for i in grammar if i in plain]
lines = ["# Joined BFCL student: a call grammar that allows lists of calls (parallel categories)", "",
         __doc__.split("\n\n")[1].strip().replace("    ", ""), "",
         "| category | problems | unconstrained | + llguidance (lists allowed) | only unconstrained right | only grammar right | p |",
         "|---|---|---|---|---|---|---|"]
for source in sorted({i.rsplit("_", 1)[0] for i in ids}) + ["all"]:
    sub = [i for i in ids if source == "all" or i.rsplit("_", 1)[0] == source]
    a, b = [plain[i]["success"] for i in sub], [grammar[i]["success"] for i in sub]
    m = mcnemar_exact(a, b)
    lines.append(f"| {source} | {len(sub)} | {sum(a)} | {sum(b)} | {m['only_a']} | {m['only_b']} | {m['p_value']:.3g} |")
lines += ["", "Outcomes (every problem of both categories):", "", "| outcome | unconstrained | + llguidance |", "|---|---|---|"]
ca, cb = Counter(failure(plain[i]) for i in ids), Counter(failure(grammar[i]) for i in ids)
for kind in ("right", "too few calls", "too many calls", "no function call", "a wrong call"):
    lines.append(f"| {kind} | {ca[kind]} | {cb[kind]} |")
(HERE / "grammar_twin.md").write_text("\n".join(lines) + "\n")
print("\n".join(lines))
