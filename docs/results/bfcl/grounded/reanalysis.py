# Record of a past run (2026-11-27): reanalysis.md. Kept as it ran; the CLI flags it uses may have
# been renamed since (see docs/cli.md): harvest/replay --samples is now --candidates,
# --teacher/--student of harvest/replay/train/soup are now -m/--model, train --max-steps is now
# --max-optimizer-steps, run --max-steps is now --max-agent-steps, serve MODEL is now serve
# --student MODEL, export --prompt-style as_recorded is now examples.
"""The earlier BFCL students' saved replies (docs/results/bfcl/soup, held-out simple_python, all 165)
re-scored after `drop_ungrounded_arguments`: what `?drop_ungrounded=true` would have changed. Greedy,
one-call problems: the option changes nothing but the reply's arguments, so re-scoring the saved reply
equals decoding again with it. Prints a markdown table.

    python docs/results/bfcl/grounded/reanalysis.py > docs/results/bfcl/grounded/reanalysis.md   # from the repository root
"""

from __future__ import annotations

import json
from pathlib import Path

from fcagent import get_task
from fcagent.core.calls import Call, drop_ungrounded_arguments
from fcagent.tasks.bfcl import check_bfcl

ROOT = Path(__file__).resolve().parents[4]
ROWS = ROOT / "docs/results/bfcl/soup/simple_python-all/results"


def main() -> None:
    problems = {p.id: p for p in get_task("bfcl:simple_python").load(split="test")}  # ./data, ../shared/data, $FCAGENT_DATA
    print("| model (docs/results/bfcl/soup) | as decoded | ungrounded dropped | fixed | broken |")
    print("|---|---|---|---|---|")
    for path in sorted(ROWS.glob("*.jsonl")):
        before = after = fixed = broken = 0
        for line in path.read_text().splitlines():
            row = json.loads(line)
            problem = problems[row["problem_id"]]
            ok = row["success"]
            calls = row["final_answer"]
            if isinstance(calls, list) and calls:
                kept = drop_ungrounded_arguments([Call(name=c["name"], args=c["arguments"]) for c in calls],
                                                 problem.functions, problem.question)
                now = check_bfcl("simple_python", problem.functions, problem.answer, kept).success
            else:
                now = ok
            before += ok
            after += now
            fixed += now and not ok
            broken += ok and not now
        print(f"| {path.stem} | {before} | {after} | {fixed} | {broken} |")


if __name__ == "__main__":
    main()
