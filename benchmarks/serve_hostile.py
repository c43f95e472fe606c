"""Does one hostile client slow another client's replies from `fcagent serve`?

A well-behaved client sends BFCL simple_python questions one after another (the bundled student,
greedy); its latency per request is measured alone, then while a hostile client sends, as fast as the
server answers, requests built to cost the most before they are refused: 129 tools, a schema nested
past the depth limit, a prompt past the token limit, a 2 MB body, broken JSON, an unknown field, an
out-of-range number. Every hostile request must get its 4xx; the limits are checked before any model
work (`fcagent.serving.wire`), so the well-behaved client's latency should not move. Rounds alternate
(alone, under attack) so load from elsewhere hits both alike.

    python -m benchmarks.serve_hostile [--rounds 3 --requests 8 --max-tokens 32]
"""

from __future__ import annotations

import argparse
import json
import statistics
import threading
import time
from typing import Any


def _hostile_bodies() -> list[tuple[str, bytes]]:
    def tool(i: int, params: dict[str, Any] | None = None) -> dict[str, Any]:
        return {"type": "function", "function": {"name": f"f{i}", "description": "x" * 200,
                                                 "parameters": params or {"type": "object", "properties": {}}}}

    deep: dict[str, Any] = {"type": "string"}
    for _ in range(40):
        deep = {"type": "object", "properties": {"x": deep}}
    user = [{"role": "user", "content": "hello"}]
    bodies = {
        "129 tools": {"model": "student", "messages": user, "tools": [tool(i) for i in range(129)]},
        "schema 40 deep": {"model": "student", "messages": user, "tools": [tool(0, deep)]},
        "prompt past the token limit": {"model": "student", "messages": [
            {"role": "user", "content": "word " * 20_000}]},
        "unknown field": {"model": "student", "messages": user, "frobnicate": True},
        "max_tokens out of range": {"model": "student", "messages": user, "max_tokens": 10**12},
    }
    out = [(name, json.dumps(body).encode()) for name, body in bodies.items()]
    out.append(("2 MB body", b'{"model": "student", "messages": [{"role": "user", "content": "' + b"a" * 2_000_000 + b'"}]}'))
    out.append(("broken JSON", b'{"model": "student", "messages": [{"role": '))
    return out


def _polite(url: str, bodies: list[dict[str, Any]]) -> list[float]:
    import httpx

    latencies = []
    with httpx.Client(timeout=600) as client:
        for body in bodies:
            started = time.perf_counter()
            client.post(f"{url}/v1/chat/completions", json=body).raise_for_status()
            latencies.append(time.perf_counter() - started)
    return latencies


def run(rounds: int = 3, requests: int = 8, max_tokens: int = 32) -> dict[str, Any]:
    import httpx

    from benchmarks.serve import _requests
    from fcagent.models.loading import load_chat_model
    from fcagent.serving.app import ServeSettings, background_server, create_app

    bodies = _requests(requests, max_tokens)
    hostile = _hostile_bodies()
    student = load_chat_model("bundled:smollm2-135m", max_new_tokens=max_tokens)
    app = create_app(student, settings=ServeSettings(model_name="student"))
    alone: list[float] = []
    attacked: list[float] = []
    statuses: dict[str, set[int]] = {name: set() for name, _ in hostile}
    sent = 0
    with background_server(app) as url:
        _polite(url, bodies[:2])  # warm-up
        for _ in range(rounds):
            alone += _polite(url, bodies)
            stop = threading.Event()

            def attack() -> None:
                nonlocal sent
                with httpx.Client(timeout=60) as client:
                    while not stop.is_set():
                        for name, raw in hostile:
                            reply = client.post(f"{url}/v1/chat/completions", content=raw,
                                                headers={"content-type": "application/json"})
                            statuses[name].add(reply.status_code)
                            sent += 1

            attacker = threading.Thread(target=attack, daemon=True)
            attacker.start()
            attacked += _polite(url, bodies)
            stop.set()
            attacker.join(timeout=60)
    p50_alone, p50_attacked = statistics.median(alone), statistics.median(attacked)
    return {"rounds": rounds, "requests_per_round": requests, "max_tokens": max_tokens,
            "model": "bundled:smollm2-135m", "hostile_requests_sent": sent,
            "hostile_statuses": {k: sorted(v) for k, v in statuses.items()},
            "every_hostile_request_refused": all(v and all(400 <= s < 500 for s in v) for v in statuses.values()),
            "alone": {"p50_s": round(p50_alone, 3), "max_s": round(max(alone), 3)},
            "under_attack": {"p50_s": round(p50_attacked, 3), "max_s": round(max(attacked), 3)},
            "p50_ratio_under_attack": round(p50_attacked / p50_alone, 3)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--requests", type=int, default=8)
    parser.add_argument("--max-tokens", type=int, default=32)
    args = parser.parse_args()
    print(json.dumps(run(args.rounds, args.requests, args.max_tokens), indent=2))


if __name__ == "__main__":
    main()
