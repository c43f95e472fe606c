"""`fcagent serve` under load: one client vs many, with and without batching, same requests.

Each request is a BFCL simple_python question with its function as an OpenAI `tools` entry, sent to
`POST /v1/chat/completions` over HTTP (uvicorn on loopback, the bundled student, greedy decoding).
Three runs of the same request list:

- `one_client`: the requests one after another from a single client (what a single user sees);
- `concurrent`: the same requests from `--clients` (8) concurrent clients, batching on (concurrent
  requests decoded together, up to one row per client);
- `concurrent_unbatched`: the same concurrent clients, batching off (`max_batch_rows=1`): requests
  take turns on the model, the way a server without batching serves them.

Reported per run: completion tokens/s over the whole run, requests/s, and latency p50/p95 per
request. The ratios say what batching buys under concurrency and what one client would wait.

    python -m benchmarks.serve [--requests 32 --clients 8 --max-tokens 48]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any


def _requests(n: int, max_tokens: int) -> list[dict[str, Any]]:
    from fcagent.agent.prompting import tool_schemas
    from fcagent.tasks import get_task

    task = get_task("bfcl:simple_python")
    return [{"model": "student", "temperature": 0, "max_tokens": max_tokens,
             "messages": [{"role": "user", "content": p.question}], "tools": tool_schemas(task.tools_for(p))}
            for p in task.load(split="test", limit=n)]


def _load(url: str, requests: list[dict[str, Any]], clients: int) -> dict[str, Any]:
    import httpx

    def one(body: dict[str, Any]) -> tuple[float, int]:
        started = time.perf_counter()
        with httpx.Client(timeout=600) as client:
            reply = client.post(f"{url}/v1/chat/completions", json=body)
        reply.raise_for_status()
        return time.perf_counter() - started, reply.json()["usage"]["completion_tokens"]

    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=clients) as pool:
        results = list(pool.map(one, requests))
    seconds = time.perf_counter() - started
    latencies = sorted(r[0] for r in results)
    tokens = sum(r[1] for r in results)
    return {"clients": clients, "requests": len(requests), "completion_tokens": tokens, "seconds": round(seconds, 2),
            "tokens_per_second": round(tokens / seconds, 1), "requests_per_second": round(len(requests) / seconds, 3),
            "latency_p50_s": round(statistics.median(latencies), 2),
            "latency_p95_s": round(latencies[min(len(latencies) - 1, int(0.95 * len(latencies)))], 2)}


def run(requests: int = 32, clients: int = 8, max_tokens: int = 48) -> dict[str, Any]:
    import torch

    from fcagent.models.loading import load_chat_model
    from fcagent.serving.app import ServeSettings, background_server, create_app

    bodies = _requests(requests, max_tokens)
    results: dict[str, Any] = {"requests": requests, "clients": clients, "max_tokens": max_tokens,
                               "model": "bundled:smollm2-135m", "threads": torch.get_num_threads()}
    plan = [("one_client", 1, clients), ("concurrent", clients, clients), ("concurrent_unbatched", clients, 1)]
    for name, n_clients, batch_rows in plan:
        # A model per run: its own batching queue and prompt cache (nothing warm carries over).
        student = load_chat_model("bundled:smollm2-135m", max_batch_rows=batch_rows)
        app = create_app(student, settings=ServeSettings(model_name="student"))
        with background_server(app) as url:
            _load(url, bodies[:2], 1)  # warm-up: first-call allocations, the tool prompt's template
            student._prefix_cache.clear()
            before = student._batcher.batches
            results[name] = _load(url, bodies, n_clients) | {"max_batch_rows": batch_rows,
                                                             "batches": student._batcher.batches - before}
        print(name, json.dumps(results[name]), flush=True)
    rate = {name: results[name]["tokens_per_second"] for name, _, _ in plan}
    results["concurrent_over_one_client"] = round(rate["concurrent"] / rate["one_client"], 2)
    results["batched_over_unbatched"] = round(rate["concurrent"] / rate["concurrent_unbatched"], 2)
    return results


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=32)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--max-tokens", type=int, default=48)
    parser.add_argument("--out", default=None, help="Also write the results here (JSON).")
    args = parser.parse_args()
    results = run(args.requests, args.clients, args.max_tokens)
    text = json.dumps(results, indent=2)
    if args.out:
        from pathlib import Path

        Path(args.out).write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
