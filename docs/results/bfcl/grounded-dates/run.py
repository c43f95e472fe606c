# Record of a past run (2026-11-27): live_multiple-dated/ and report.md (summary.md). Kept as it
# ran; the CLI flags it uses may have been renamed since (see docs/cli.md): harvest/replay
# --samples is now --candidates, --teacher/--student of harvest/replay/train/soup are now
# -m/--model, train --max-steps is now --max-optimizer-steps, run --max-steps is now
# --max-agent-steps, serve MODEL is now serve --student MODEL, export --prompt-style as_recorded
# is now examples.
"""`drop_ungrounded` and dates: does accepting a date the request states in words ("April 25th 2023" for
`2023-04-25`) stop the option breaking such calls, without keeping invented values?

Where the change came from, so the numbers can be weighed: `docs/results/bfcl/grounded` found the rule
dropping three correct dates on held-out live_simple; the date reading (fcagent/calls.py,
`_stated_dates`) was written for them, so those 147 problems are re-scored here as the design data only.
Decided before any result below was seen (2026-11-27): the independent check is BFCL live_multiple (no
student trained on it, not read while designing): the soup of the seed-2 student's epochs 2 and 3
(`runs/bfcl-soup-s2ep23`, docs/results/bfcl/grounded) decodes, under the one-call grammar and without
the option, every held-out live_multiple problem whose request states a date, and each saved reply is
re-scored three ways: as decoded, with the rule before (a value counts as stated only verbatim), and
with dates read. The two rules differ only on date-valued optional strings, so problems whose request
states no date cannot differ between them. Greedy one-call problems: re-scoring a saved reply equals
decoding with the option (docs/results/bfcl/grounded/reanalysis.md).

    python docs/results/bfcl/grounded-dates/run.py > docs/results/bfcl/grounded-dates/report.md   # from the repository root
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fcagent import get_task
from fcagent.core.calls import Call, _spoken, _stated_dates, drop_ungrounded_arguments, functions_by_name
from fcagent.pipeline.evaluate import evaluate, mcnemar_exact
from fcagent.tasks.bfcl import check_bfcl

ROOT = Path(__file__).resolve().parents[4]
HERE = ROOT / "docs/results/bfcl/grounded-dates"
SOUP = "runs/bfcl-soup-s2ep23?constrain=llguidance"


def verbatim_rule(calls: list[Call], tools: list[dict[str, Any]], said: str) -> list[Call]:
    """The rule as it was before dates were read (docs/results/bfcl/grounded)."""
    spoken = _spoken(said)
    out = []
    for call in calls:
        fn = functions_by_name(tools).get(call.name)
        required = set(((fn or {}).get("parameters") or {}).get("required") or [])
        out.append(call.model_copy(update={"args": {
            k: v for k, v in call.args.items()
            if fn is None or k in required or not isinstance(v, str) or _spoken(v) in spoken}}))
    return out


RULES: dict[str, Callable[..., list[Call]] | None] = {
    "as decoded": None, "verbatim rule": verbatim_rule, "dates read": drop_ungrounded_arguments}


def rescore(rows: list[dict[str, Any]], problems: dict[str, Any]) -> dict[str, list[bool]]:
    outcomes: dict[str, list[bool]] = {name: [] for name in RULES}
    for row in rows:
        problem = problems[row["problem_id"]]
        calls = row["final_answer"]
        for name, rule in RULES.items():
            if rule is None or not (isinstance(calls, list) and calls):
                outcomes[name].append(bool(row["success"]))
                continue
            kept = rule([Call(name=c["name"], args=c["arguments"]) for c in calls], problem.functions, problem.question)
            outcomes[name].append(check_bfcl(problem.source, problem.functions, problem.answer, kept).success)
    return outcomes


def table(title: str, outcomes: dict[str, list[bool]]) -> str:
    n = len(outcomes["as decoded"])
    lines = [f"### {title} ({n} problems)", "", "| replies | correct | vs verbatim rule (fixed / broken, p) |", "|---|---|---|"]
    for name, got in outcomes.items():
        vs = ""
        if name != "verbatim rule":
            m = mcnemar_exact(outcomes["verbatim rule"], got)
            vs = f"{m['only_b']} / {m['only_a']}, p = {m['p_value']:.3g}"
        lines.append(f"| {name} | {sum(got)} | {vs} |")
    return "\n".join(lines) + "\n"


def rows_of(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def main() -> None:
    task = get_task("bfcl:live_multiple")  # ./data, ../shared/data, $FCAGENT_DATA
    dated = [p for p in task.load(split="test") if _stated_dates(_spoken(p.question))]
    evaluate({"soup-s2ep23+llguidance": SOUP}, task=task.spec, problems=dated, out_dir=HERE / "live_multiple-dated",
             model_kwargs={"max_new_tokens": task.max_new_tokens})
    print("# `drop_ungrounded` with dates read: re-scored replies\n")
    print("Command: `python docs/results/bfcl/grounded-dates/run.py` (decisions in its docstring). Official rules, "
          "one-call grammar; the replies were decoded without the option and re-scored.\n")
    independent = rescore(rows_of(HERE / "live_multiple-dated/results/soup-s2ep23+llguidance.jsonl"),
                          {p.id: p for p in dated})
    print(table("Independent check: held-out live_multiple problems whose request states a date, "
                "soup of s2's epochs 2 and 3", independent))
    design = {p.id: p for p in get_task("bfcl:multiple+live_simple").load(split="test")}
    for name in ("soup-s2ep23+llguidance", "s2+llguidance"):
        rows = rows_of(ROOT / f"docs/results/bfcl/grounded/multiple+live_simple/results/{name}.jsonl")
        print(table(f"Design data: held-out multiple + live_simple, {name.split('+')[0]}", rescore(rows, design)))


if __name__ == "__main__":
    main()
