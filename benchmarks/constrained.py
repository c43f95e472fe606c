"""Constrained-decoding backends side by side: llguidance vs xgrammar (vs no constraint), one process.

For the same BFCL simple_python function sets and the same tokenizer (SmolLM2's, 49k tokens):
* grammar build time per function set (each BFCL problem brings its own schema, so this is paid per
  problem unless cached);
* mask time per decoding step, along the gold call's tokens (the work added to every token);
* end to end on the bundled model, greedy: decode tokens/s constrained vs unconstrained on the same
  problems (the whole cost of the constraint in the generate loop).

    python -m benchmarks.constrained [--problems 20]

xgrammar is optional (`pip install 'fcagent[bench]'`; it pulls ~1 GB of triton); without it only
llguidance is measured. Accuracy with and without the constraint is `fcagent eval` with
`SPEC?constrain=llguidance` beside `SPEC` (docs/results/bfcl/README.md).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import statistics
import time
from typing import Any


def _gold_text(problem: Any) -> str:
    call = problem.gold_chain[0][0] if problem.gold_chain else None
    if call is None:
        return ""
    return json.dumps({"name": call.name, "arguments": call.args})


def run(problems: int = 20, max_new: int = 64) -> dict[str, Any]:
    import torch
    from langchain_core.messages import HumanMessage

    from fcagent.agent.prompting import tool_schemas
    from fcagent.models.loading import load_chat_model
    from fcagent.models.local.constrained import BACKENDS, Constrainer, call_schema
    from fcagent.tasks import get_task

    task = get_task("bfcl:simple_python")
    items = task.load(split="test", limit=problems)
    tool_sets = [tool_schemas(task.tools_for(p)) for p in items]
    backends = [b for b in BACKENDS if importlib.util.find_spec(b) is not None]
    model = load_chat_model("bundled:smollm2-135m", max_new_tokens=max_new, response_prefix='{"name": "')
    tok = model.tokenizer
    out: dict[str, Any] = {"problems": len(items), "backends": {}}

    for backend in backends:
        grammar = Constrainer(tok, backend, cache_size=0)
        build, masks = [], []
        for tools, problem in zip(tool_sets, items):
            started = time.perf_counter()
            row = grammar.row(call_schema(tools))
            build.append(time.perf_counter() - started)
            # Mask time along the gold call (what a model that writes it correctly pays per token).
            bitmask = torch.full((1, (grammar.vocab_size + 31) // 32), -1, dtype=torch.int32)
            for token in tok(_gold_text(problem), add_special_tokens=False)["input_ids"]:
                started = time.perf_counter()
                row.fill(bitmask, 0)
                masks.append(time.perf_counter() - started)
                row.accept(token)
        out["backends"][backend] = {"grammar_build_ms_median": round(1000 * statistics.median(build), 2),
                                    "grammar_build_ms_max": round(1000 * max(build), 2),
                                    "mask_us_per_token_median": round(1e6 * statistics.median(masks), 1),
                                    "mask_us_per_token_p99": round(1e6 * sorted(masks)[int(0.99 * (len(masks) - 1))], 1)}

    def decode(constrain: str | None) -> dict[str, Any]:
        chat = model.model_copy(update={"constrain": constrain})
        chat._constrainers = {}  # a fresh grammar cache: build time is part of the cost
        tokens, valid = 0, 0
        started = time.perf_counter()
        for tools, problem in zip(tool_sets, items):
            reply = chat.bind_tools(tools).invoke([HumanMessage(problem.question)])
            tokens += reply.usage_metadata["output_tokens"]
            valid += bool(reply.tool_calls)
        seconds = time.perf_counter() - started
        return {"tokens": tokens, "seconds": round(seconds, 2), "tokens_per_second": round(tokens / seconds, 1),
                "replies_with_a_known_call": valid}

    decode(None)  # warm-up (first-call allocations)
    out["decode"] = {"none": decode(None), **{b: decode(b) for b in backends}}
    base = out["decode"]["none"]["tokens_per_second"]
    out["decode_speed_vs_unconstrained"] = {b: round(out["decode"][b]["tokens_per_second"] / base, 3)
                                            for b in backends}
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--problems", type=int, default=20)
    args = parser.parse_args()
    print(json.dumps(run(args.problems), indent=2))


if __name__ == "__main__":
    main()
