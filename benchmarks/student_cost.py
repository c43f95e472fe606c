"""Student vs teacher, per problem: tokens through the model and wall time, same problems, same graph.

Both models run the same held-out problems through `run_problems` into a scratch trace store; tokens
are counted from the recorded completions with one tokenizer (the student's), so a hosted teacher
and the local student are counted alike: prompt tokens = the chat-templated input of every model
call, completion tokens = the reply. Offline the teacher is `reference` (gold chains replayed): its
tokens are what a teacher writing those chains would read and write, and its wall time is a replay,
not a model, so only the student's time is a measurement there. With `--teacher provider:model` both
are measured.

    python -m benchmarks.student_cost [--task bfcl:simple_python --problems 10 --student RUN_OR_SPEC]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any


def _measure(name: str, spec: str, task: Any, problems: list, tokenizer: Any, work: Path,
             model_kwargs: dict[str, Any]) -> dict[str, Any]:
    from fcagent.models.loading import resolve_model
    from fcagent.pipeline.runner import run_problems
    from fcagent.tracing.store import TraceStore

    chat = resolve_model(spec, problems, **({} if spec == "reference" else model_kwargs))
    store = TraceStore(work / f"{name}.db")
    started = time.perf_counter()
    results = run_problems(chat, task, problems, store=store, metadata={"fcagent_model": spec})
    seconds = time.perf_counter() - started
    prompt = completion = calls = 0
    for trace in store.traces():
        for c in trace.completions:
            calls += 1
            messages = [{"role": m.role if m.role in ("system", "user", "assistant") else "user",
                         "content": m.content} for m in c.messages]
            text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
            prompt += len(tokenizer(text, add_special_tokens=False)["input_ids"])
            for cand in c.candidates[:1]:
                completion += len(tokenizer(cand.message.content, add_special_tokens=False)["input_ids"])
    n = len(problems)
    return {"spec": spec, "correct": sum(r.success for r in results), "problems": n,
            "model_calls_per_problem": round(calls / n, 2), "prompt_tokens_per_problem": round(prompt / n),
            "completion_tokens_per_problem": round(completion / n, 1), "wall_s_per_problem": round(seconds / n, 3)}


def run(task: str = "bfcl:simple_python", problems: int = 10, teacher: str = "reference",
        student: str = "bundled:smollm2-135m") -> dict[str, Any]:
    from fcagent.models.loading import load_chat_model
    from fcagent.tasks import get_task

    t = get_task(task)
    chosen = t.load(split="test", limit=problems)
    kwargs = {"max_new_tokens": t.max_new_tokens, "response_prefix": '{"name": "'}
    tokenizer = load_chat_model("bundled:smollm2-135m").tokenizer
    work = Path(tempfile.mkdtemp(prefix="fcagent-cost-bench-"))
    out = {"task": task, "teacher": _measure("teacher", teacher, t, chosen, tokenizer, work, kwargs),
           "student": _measure("student", student, t, chosen, tokenizer, work, kwargs)}
    s, te = out["student"], out["teacher"]
    out["student_over_teacher_tokens"] = round(
        (s["prompt_tokens_per_problem"] + s["completion_tokens_per_problem"])
        / max(te["prompt_tokens_per_problem"] + te["completion_tokens_per_problem"], 1), 2)
    out["teacher_wall_is_a_model"] = teacher != "reference"
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--task", default="bfcl:simple_python")
    parser.add_argument("--problems", type=int, default=10)
    parser.add_argument("--teacher", default="reference")
    parser.add_argument("--student", default="bundled:smollm2-135m")
    args = parser.parse_args()
    print(json.dumps(run(args.task, args.problems, args.teacher, args.student), indent=2))


if __name__ == "__main__":
    main()
