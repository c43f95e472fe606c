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

The three runs are made for each runtime (`--runtimes transformers,llama.cpp`: the same chat model,
its tokens decoded by transformers or by llama.cpp from the GGUF), in one process, so the ratio
between runtimes holds whatever else the machine is doing. Every request must be answered, and each
runtime's greedy replies must be the same whatever the batching (`identical_across_batching`).

    python -m benchmarks.serve [--requests 32 --clients 8 --max-tokens 48 --runtimes transformers,llama.cpp]
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


def _load(url: str, requests: list[dict[str, Any]], clients: int) -> tuple[dict[str, Any], list[Any]]:
    import httpx

    def one(body: dict[str, Any]) -> tuple[float, int, Any]:
        started = time.perf_counter()
        with httpx.Client(timeout=600) as client:
            reply = client.post(f"{url}/v1/chat/completions", json=body)
        reply.raise_for_status()
        data = reply.json()
        message = data["choices"][0]["message"]
        return time.perf_counter() - started, data["usage"]["completion_tokens"], \
            [message.get("content"), message.get("tool_calls") and [c["function"] for c in message["tool_calls"]]]

    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=clients) as pool:
        results = list(pool.map(one, requests))
    seconds = time.perf_counter() - started
    latencies = sorted(r[0] for r in results)
    tokens = sum(r[1] for r in results)
    return {"clients": clients, "requests": len(requests), "answered": len(results), "completion_tokens": tokens,
            "seconds": round(seconds, 2), "tokens_per_second": round(tokens / seconds, 1),
            "requests_per_second": round(len(requests) / seconds, 3),
            "latency_p50_s": round(statistics.median(latencies), 2),
            "latency_p95_s": round(latencies[min(len(latencies) - 1, int(0.95 * len(latencies)))], 2)}, \
        [r[2] for r in results]


def run(requests: int = 32, clients: int = 8, max_tokens: int = 48,
        runtimes: tuple[str, ...] = ("transformers", "llama.cpp")) -> dict[str, Any]:
    import torch

    from fcagent.models.loading import load_chat_model
    from fcagent.serving.app import ServeSettings, background_server, create_app

    bodies = _requests(requests, max_tokens)
    results: dict[str, Any] = {"requests": requests, "clients": clients, "max_tokens": max_tokens,
                               "model": "bundled:smollm2-135m", "threads": torch.get_num_threads()}
    plan = [("one_client", 1, clients), ("concurrent", clients, clients), ("concurrent_unbatched", clients, 1)]
    for runtime in runtimes:
        replies: dict[str, list[Any]] = {}
        section: dict[str, Any] = {}
        for name, n_clients, batch_rows in plan:
            # A model per run: its own batching queue and prompt cache (nothing warm carries over).
            student = load_chat_model(f"bundled:smollm2-135m?runtime={runtime}", max_batch_rows=batch_rows)
            app = create_app(student, settings=ServeSettings(model_name="student"))
            with background_server(app) as url:
                _load(url, bodies[:2], 1)  # warm-up: first-call allocations, the tool prompt's template
                student.clear_prompt_cache()
                before = student._batcher.batches
                section[name], replies[name] = _load(url, bodies, n_clients)
                section[name] |= {"max_batch_rows": batch_rows, "batches": student._batcher.batches - before}
            print(runtime, name, json.dumps(section[name]), flush=True)
        rate = {name: section[name]["tokens_per_second"] for name, _, _ in plan}
        section["concurrent_over_one_client"] = round(rate["concurrent"] / rate["one_client"], 2)
        section["batched_over_unbatched"] = round(rate["concurrent"] / rate["concurrent_unbatched"], 2)
        section["identical_across_batching"] = replies["one_client"] == replies["concurrent"] == \
            replies["concurrent_unbatched"]
        section["every_request_answered"] = all(section[name]["answered"] == requests for name, _, _ in plan)
        results[runtime] = section
    if len(runtimes) == 2:
        a, b = (results[r]["concurrent"]["tokens_per_second"] for r in runtimes)
        results[f"{runtimes[1]}_over_{runtimes[0]}_concurrent"] = round(b / a, 2)
        a, b = (results[r]["one_client"]["tokens_per_second"] for r in runtimes)
        results[f"{runtimes[1]}_over_{runtimes[0]}_one_client"] = round(b / a, 2)
    return results


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=32)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--max-tokens", type=int, default=48)
    parser.add_argument("--runtimes", default="transformers,llama.cpp", help="Comma-separated, compared in one run.")
    parser.add_argument("--out", default=None, help="Also write the results here (JSON).")
    args = parser.parse_args()
    results = run(args.requests, args.clients, args.max_tokens, tuple(args.runtimes.split(",")))
    text = json.dumps(results, indent=2)
    if args.out:
        from pathlib import Path

        Path(args.out).write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
