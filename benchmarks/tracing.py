"""Tracing overhead per run and per captured event, side by side in one process.

The same LangGraph agent (fcagent's graph, a scripted native tool-calling model: 2 model calls and
1 tool call per run) with: no callbacks, a do-nothing handler, fcagent's TraceRecorder (SQLite; by
default each episode is queued for the store's writer thread, `fcagent-in-run` writes it in the run,
as before 2026-11-26; `fcagent-callbacks-only` drops each finished episode, to split the cost), LangSmith's LangChainTracer (its client pointed at a local HTTP sink on
127.0.0.1) and Langfuse's LangChain CallbackHandler (its host the same sink); both of those send from
background threads too, and neither is waited for. fcagent's queue is: `fcagent_writes_waited` adds,
per run, the time `flush()` then takes at the end of each round (what a program that waits for every
episode on disk pays). Handlers are interleaved round by round and the medians compared, so machine
load hits every handler alike.

    python -m benchmarks.tracing [--rounds 12 --runs 40]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from langchain_core.callbacks import BaseCallbackHandler
from langchain_core.messages import AIMessage, HumanMessage
from langchain_core.tools import tool

from fcagent import TraceRecorder, TraceStore, build_agent_graph
from fcagent.agent.testing import ScriptedChatModel

EVENTS_PER_RUN = 3  # captured events: 2 model calls + 1 tool call


class _Sink(BaseHTTPRequestHandler):
    def _ok(self) -> None:
        length = int(self.headers.get("content-length") or 0)
        if length:
            self.rfile.read(length)
        body = b"{}"
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_POST = do_PATCH = do_PUT = do_GET = _ok

    def log_message(self, *args: Any) -> None:
        pass


def local_sink() -> str:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Sink)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return f"http://127.0.0.1:{server.server_address[1]}"


@tool
def add(a: int, b: int) -> int:
    """Add two integers."""
    return a + b


def make_graph():
    model = ScriptedChatModel(responses=[
        AIMessage(content="", tool_calls=[{"name": "add", "args": {"a": 2, "b": 3}, "id": "c1"}]),
        AIMessage(content="5"),
    ])

    class Cycling(ScriptedChatModel):
        def _generate(self, messages, stop=None, run_manager=None, **kwargs):
            self._i = 0 if not any(isinstance(m, AIMessage) for m in messages) else 1
            return super()._generate(messages, stop, run_manager, **kwargs)

    model = Cycling(responses=model.responses)
    return build_agent_graph(model, [add], protocol="native")


def handlers(sink: str, tmp: Path) -> dict[str, Any]:
    callbacks_only = TraceRecorder(TraceStore(tmp / "bench-callbacks-only.db"))
    # Its finished episodes are dropped, not queued: what the recorder's callbacks cost on the agent's
    # path alone, so fcagent's overhead splits into LangChain's dispatch (`noop`), the callbacks, and
    # the writer thread's share of the interpreter (`fcagent` minus this).
    callbacks_only.writes.submit = lambda episode_id, build, **kw: None
    out: dict[str, Any] = {"none": None, "noop": BaseCallbackHandler(), "fcagent": TraceRecorder(TraceStore(tmp / "bench.db")),
                           "fcagent-in-run": TraceRecorder(TraceStore(tmp / "bench-in-run.db"), background=False),
                           "fcagent-callbacks-only": callbacks_only}
    try:
        from langchain_core.tracers.langchain import LangChainTracer
        from langsmith import Client

        out["langsmith"] = LangChainTracer(client=Client(api_url=sink, api_key="lsv2_pt_bench"), project_name="bench")
    except Exception as exc:  # noqa: BLE001
        print(f"langsmith skipped: {exc}")
    try:
        os.environ.update(LANGFUSE_PUBLIC_KEY="pk-lf-bench", LANGFUSE_SECRET_KEY="sk-lf-bench", LANGFUSE_HOST=sink,
                          LANGFUSE_BASE_URL=sink)
        from langfuse.langchain import CallbackHandler

        out["langfuse"] = CallbackHandler()
    except Exception as exc:  # noqa: BLE001
        print(f"langfuse skipped: {exc}")
    return out


def _wait_for_sends(name: str, handler: Any) -> None:
    """Wait for what a handler's background threads still do for this round (fcagent's writes, the
    others' sends), so its CPU time is counted in its own round, not the next handler's."""
    try:
        if name.startswith("fcagent"):
            handler.flush()
        elif name == "langsmith":
            handler.wait_for_futures()
            handler.client.flush()
        elif name == "langfuse":
            from langfuse import get_client

            get_client().flush()
    except Exception as exc:  # noqa: BLE001 - a peer's API changed: its CPU spills over, say so
        print(f"{name}: could not wait for its background sends ({exc})")


def run(rounds: int = 12, runs: int = 40) -> dict[str, Any]:
    sink = local_sink()
    tmp = Path(tempfile.mkdtemp(prefix="fcagent-bench-"))
    graph = make_graph()
    hs = handlers(sink, tmp)
    inputs = {"messages": [HumanMessage("what is 2+3?")]}
    for h in hs.values():  # warm up every path
        for _ in range(5):
            graph.invoke(inputs, {"callbacks": [h] if h else []})
    samples: dict[str, list[float]] = {k: [] for k in [*hs, "fcagent_writes_waited"]}
    cpu: dict[str, list[float]] = {k: [] for k in hs}  # the process's CPU time, every thread, writes waited for
    for _ in range(rounds):
        for name, h in hs.items():
            cfg = {"callbacks": [h] if h else []}
            cpu_started, started = time.process_time(), time.perf_counter()
            for _ in range(runs):
                graph.invoke(inputs, cfg)
            samples[name].append((time.perf_counter() - started) / runs * 1000)
            _wait_for_sends(name, h)
            if name == "fcagent":  # its writes on disk: what a program that waits for each one pays
                samples["fcagent_writes_waited"].append((time.perf_counter() - started) / runs * 1000)
            cpu[name].append((time.process_time() - cpu_started) / runs * 1000)
    med = {k: statistics.median(v) for k, v in samples.items()}
    cpu_med = {k: statistics.median(v) for k, v in cpu.items()}
    base = med["none"]
    result: dict[str, Any] = {"ms_per_run": med, "overhead_ms_per_run": {k: v - base for k, v in med.items()},
                              "overhead_ms_per_event": {k: (v - base) / EVENTS_PER_RUN for k, v in med.items()},
                              # CPU, not wall: what tracing costs the machine, steadier than wall time on a
                              # loaded one (the other handlers' own background threads count too).
                              "cpu_overhead_ms_per_event": {k: (v - cpu_med["none"]) / EVENTS_PER_RUN
                                                            for k, v in cpu_med.items()},
                              "rounds": rounds, "runs_per_round": runs}
    fc = max(med["fcagent"] - base, 1e-6)
    for peer in ("langsmith", "langfuse", "fcagent-in-run"):
        if peer in med:
            result[f"fcagent_overhead_as_fraction_of_{peer}"] = fc / max(med[peer] - base, 1e-6)
    result["fcagent_writes_waited_as_fraction_of_fcagent-in-run"] = (
        max(med["fcagent_writes_waited"] - base, 1e-6) / max(med["fcagent-in-run"] - base, 1e-6))
    # Where fcagent's overhead per event goes (medians, so the parts need not sum exactly).
    result["fcagent_parts_ms_per_event"] = {
        "langchain_dispatch (noop)": (med["noop"] - base) / EVENTS_PER_RUN,
        "recorder_callbacks": (med["fcagent-callbacks-only"] - med["noop"]) / EVENTS_PER_RUN,
        "writer_thread": (med["fcagent"] - med["fcagent-callbacks-only"]) / EVENTS_PER_RUN}
    result["episodes_recorded"] = {name: TraceStore(tmp / db).count()
                                   for name, db in (("fcagent", "bench.db"), ("fcagent-in-run", "bench-in-run.db"),
                                                   ("fcagent-callbacks-only", "bench-callbacks-only.db"))}
    return result


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=12)
    parser.add_argument("--runs", type=int, default=40)
    args = parser.parse_args()
    print(json.dumps(run(args.rounds, args.runs), indent=2))


if __name__ == "__main__":
    main()
