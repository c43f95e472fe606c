"""What shadow mode costs the user: p50 and p90 latency of the same agent with and without a shadowing
student, side by side in one process.

The agent is the demo traffic's (`fcagent.pipeline.demo_traffic`): a `create_agent` agent over NESTFUL's
APIs, its large model a scripted one that takes `teacher_latency_s` per call, as a hosted model does
over the network. With shadow, `StudentMiddleware(student, mode="shadow")` hands every call the teacher
answered to the bundled student on the shadow's background queue, which runs the real model on this
machine's cores while the user's requests go on (a full queue drops, so the student may see only a
sample). Rounds alternate: without shadow (the machine idle: the previous round's queue drained first,
untimed) then with; the latency is per request, first message to final answer.

    python -m benchmarks.shadow [--rounds 3 --requests 12 --teacher-latency 0.5]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from langchain.agents import create_agent
from langchain_core.messages import HumanMessage

from fcagent.pipeline.demo_traffic import NestfulTeacher, nestful_requests, request_tools


class _HostedTeacher(NestfulTeacher):
    """The scripted large model, taking as long as a hosted one."""

    latency_s: float = 0.5

    def _generate(self, *args: Any, **kwargs: Any):
        time.sleep(self.latency_s)
        return super()._generate(*args, **kwargs)


def _quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def run(rounds: int = 3, requests: int = 12, teacher_latency_s: float = 0.5, max_new_tokens: int = 48,
        data_dir: str | None = None) -> dict[str, Any]:
    from fcagent import StudentMiddleware, TraceStore, load_chat_model

    reqs = nestful_requests(data_dir, limit=requests, mistake_rate=0.0)
    student = load_chat_model("bundled:smollm2-135m", max_new_tokens=max_new_tokens)
    tmp = Path(tempfile.mkdtemp(prefix="fcagent-shadow-bench-"))
    shadow = StudentMiddleware(student, store=TraceStore(tmp / "shadow.db"), mode="shadow")
    latencies: dict[str, list[float]] = {"teacher_only": [], "teacher_with_shadow": []}

    def one(req: Any, middleware: list[Any]) -> float:
        agent = create_agent(_HostedTeacher(request=req, latency_s=teacher_latency_s), request_tools(req),
                             middleware=middleware)
        started = time.perf_counter()
        agent.invoke({"messages": [HumanMessage(req.question)]}, {"run_id": uuid.uuid4(), "recursion_limit": 50})
        return (time.perf_counter() - started) * 1000

    one(reqs[0], [shadow])  # warm-up: imports, the student's first load
    shadow.shadow.join(timeout=600)
    for _ in range(rounds):
        shadow.shadow.join(timeout=600)  # the machine as idle as it is without shadow
        latencies["teacher_only"] += [one(r, []) for r in reqs]
        latencies["teacher_with_shadow"] += [one(r, [shadow]) for r in reqs]
    state = shadow.shadow
    out: dict[str, Any] = {
        "setup": {"rounds": rounds, "requests_per_round": requests, "teacher_latency_s": teacher_latency_s,
                  "student": "bundled:smollm2-135m", "max_new_tokens": max_new_tokens},
        "shadow": {"submitted": state.submitted, "dropped": state.dropped, "answered_during_run": state.done,
                   "failed": state.failed}}
    for name, values in latencies.items():
        out[name] = {"requests": len(values), "p50_ms": round(statistics.median(values), 1),
                     "p90_ms": round(_quantile(values, 0.9), 1)}
    out["p50_ratio_with_over_without"] = round(out["teacher_with_shadow"]["p50_ms"] / out["teacher_only"]["p50_ms"], 4)
    out["p90_ratio_with_over_without"] = round(out["teacher_with_shadow"]["p90_ms"] / out["teacher_only"]["p90_ms"], 4)
    state.join(timeout=600)
    out["shadow"]["answered_in_the_end"] = state.done
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--requests", type=int, default=12)
    parser.add_argument("--teacher-latency", type=float, default=0.5)
    args = parser.parse_args()
    print(json.dumps(run(args.rounds, args.requests, args.teacher_latency), indent=2))


if __name__ == "__main__":
    main()
