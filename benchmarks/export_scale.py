"""Exporter throughput and memory on synthetic stores of 10k and 100k episodes.

Each synthetic episode is a 3-step math chain with one invalid sibling candidate at its first step
(so every episode yields a step-level pair). Peak memory is the process's max RSS growth during the
export; it stays flat with store size because the exporter streams completions grouped by context
from SQLite and spools rows to disk.

    python -m benchmarks.export_scale [--sizes 10000 100000]
"""

from __future__ import annotations

import argparse
import json
import resource
import tempfile
import time
import uuid
from pathlib import Path

from fcagent.core.records import context_hash
from fcagent.data.export import export_preference_pairs
from fcagent.tracing.store import TraceStore


def synthetic_episode(i: int) -> dict:
    ep = str(uuid.uuid4())
    system = {"role": "system", "content": "Solve with the calculator functions."}
    question = {"role": "user", "content": f"Tom has {i} apples and buys {i % 7 + 2} more. How many?"}
    tools = [{"type": "function", "function": {"name": "add", "parameters": {"type": "object", "properties": {
        "a": {"type": "number"}, "b": {"type": "number"}}, "required": ["a", "b"]}}}]
    good = {"message": {"role": "assistant", "content": json.dumps({"name": "add", "arguments": {"a": i, "b": i % 7 + 2}})},
            "calls": [{"name": "add", "args": {"a": i, "b": i % 7 + 2}}]}
    bad = {"message": {"role": "assistant", "content": "the answer is many"}, "parse_error": "no function call found"}
    comps, labels = [], []
    history = [system, question]
    for step in range(3):
        cid = str(uuid.uuid4())
        cands = [good, bad] if step == 0 else [good]
        comps.append({"id": cid, "episode_id": ep, "seq": step, "model": "synthetic", "protocol": "text", "step": step + 1,
                      "context_hash": context_hash(history, tools), "messages": list(history), "tools": tools,
                      "params": {}, "candidates": cands, "usage": {}})
        labels.append({"target_id": cid, "candidate": 0, "success": True, "reason": "valid call", "source": "graph"})
        history = history + [good["message"], {"role": "user", "content": f"Observation: {i + step}"}]
    labels.append({"target_id": ep, "candidate": None, "success": True, "reason": "correct answer", "source": "verifier"})
    return {"episode": {"id": ep, "started_at": time.time(), "status": "complete", "task": "math",
                        "problem_id": f"synthetic-{i}", "split": "train", "metadata": {}, "outputs": {}},
            "completions": comps, "tool_runs": [], "labels": labels}


def build(path: Path, n: int) -> float:
    store = TraceStore(path)
    started = time.perf_counter()
    for i in range(n):
        store.write_episode(synthetic_episode(i))
    return n / (time.perf_counter() - started)


def run(sizes: list[int]) -> dict:
    out: dict = {}
    work = Path(tempfile.mkdtemp(prefix="fcagent-export-bench-"))
    for n in sizes:
        db = work / f"s{n}.db"
        write_rate = build(db, n)
        rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        started = time.perf_counter()
        result = export_preference_pairs(db, work / f"out{n}", redact=False)
        seconds = time.perf_counter() - started
        rss_after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        out[str(n)] = {"episodes": n, "pairs": result.rows, "export_seconds": round(seconds, 1),
                       "episodes_per_second": round(n / seconds), "store_writes_per_second": round(write_rate),
                       "peak_rss_growth_mb": round((rss_after - rss_before) / 1024, 1),
                       "peak_rss_mb": round(rss_after / 1024, 1)}
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    args = parser.parse_args()
    print(json.dumps(run(args.sizes), indent=2))


if __name__ == "__main__":
    main()
