"""Trace-store write throughput: 1 writer vs 8 threads vs 8 processes into one SQLite store; then 8
processes recording through `TraceRecorder` into SQLite and into PostgreSQL, side by side.

The first part writes each episode in one transaction (3 completions, labels). SQLite allows one writer
at a time, so concurrent writers queue on the WAL lock (`busy_timeout`); this measures what that costs
and checks that every episode arrived exactly once.

The second (`recorders`) is what a fleet of agents does: 8 processes each record `--recorded` episodes
(2 model calls and a tool run each, one system prompt shared by all: the same message rows, written by
every process) through `TraceRecorder`, whose writer thread batches them, into one store. The clock
runs from the start signal until every process has flushed. Then: is every episode there exactly once,
and how fast does `export_jsonl` (what `fcagent traces export` runs) read the whole store back.
PostgreSQL is a throwaway cluster with the server's default settings (fsync and synchronous commit on),
or `--postgres URL`.

    python -m benchmarks.store_writers [--episodes 4000] [--recorded 2000] [--postgres URL]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import multiprocessing as mp
import os
import tempfile
import threading
import time
import uuid
from pathlib import Path

from benchmarks.export_scale import synthetic_episode
from fcagent.core import keys
from fcagent.tracing.store import TraceStore


def _write(path: str, start: int, count: int) -> None:
    store = TraceStore(path)
    for i in range(start, start + count):
        store.write_episode(synthetic_episode(i))
    store.close()


def _process_writer(path: str, start: int, count: int, ready: mp.Queue, go: mp.Event) -> None:
    ready.put(start)  # imports are done by now (spawn imports this module first)
    go.wait()
    _write(path, start, count)


def _check(path: Path, episodes: int) -> bool:
    store = TraceStore(path)
    try:
        return store.count("episodes") == episodes and store.count("completions") == 3 * episodes
    finally:
        store.close()


def run(episodes: int = 4000, writers: int = 8) -> dict:
    work = Path(tempfile.mkdtemp(prefix="fcagent-store-bench-"))
    share = episodes // writers
    total = share * writers
    out: dict = {"episodes": total, "writers": writers}

    db = work / "single.db"
    started = time.perf_counter()
    _write(str(db), 0, total)
    seconds = time.perf_counter() - started
    out["single"] = {"episodes_per_second": round(total / seconds), "complete": _check(db, total)}

    db = work / "threads.db"
    TraceStore(db).close()  # schema made once, before the race
    threads = [threading.Thread(target=_write, args=(str(db), w * share, share)) for w in range(writers)]
    started = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    seconds = time.perf_counter() - started
    out["threads"] = {"episodes_per_second": round(total / seconds), "complete": _check(db, total)}

    db = work / "processes.db"
    TraceStore(db).close()
    ctx = mp.get_context("spawn")  # no fork of a process that may hold torch threads
    go, ready = ctx.Event(), ctx.Queue()
    procs = [ctx.Process(target=_process_writer, args=(str(db), w * share, share, ready, go)) for w in range(writers)]
    for p in procs:
        p.start()
    for _ in procs:
        ready.get(timeout=120)  # the clock starts once every interpreter is up
    started = time.perf_counter()
    go.set()
    for p in procs:
        p.join()
    seconds = time.perf_counter() - started
    out["processes"] = {"episodes_per_second": round(total / seconds), "complete": _check(db, total),
                        "exit_codes": sorted({p.exitcode for p in procs})}
    for mode in ("threads", "processes"):
        out[f"{mode}_over_single"] = round(out[mode]["episodes_per_second"] / out["single"]["episodes_per_second"], 2)
    return out


# --- 8 recording processes, SQLite and PostgreSQL ----------------------------------------------------

_TOOLS = [{"type": "function", "function": {"name": "add", "description": "a + b", "parameters": {
    "type": "object", "properties": {"a": {"type": "number"}, "b": {"type": "number"}}, "required": ["a", "b"]}}}]


def _record(store: str, worker: int, count: int) -> dict:
    """`count` episodes through a TraceRecorder's callbacks, as LangChain calls them for an agent that asks
    a model, runs the tool it calls, and asks again (no graph: the recorder and its store are measured)."""
    from langchain_core.messages import AIMessage, HumanMessage, SystemMessage, ToolMessage
    from langchain_core.outputs import ChatGeneration, LLMResult

    from fcagent.tracing.recorder import TraceRecorder

    recorder = TraceRecorder(store, fleet="bench")
    system = SystemMessage("Answer with the calculator. Call `add` for sums, then give the number.")
    params = {"model": "bench-model", "tools": _TOOLS}
    for i in range(count):
        root, first, tool, second = (uuid.uuid4() for _ in range(4))
        question = HumanMessage(f"Worker {worker}, request {i}: what is {i} + 2?")
        call = AIMessage(content="", tool_calls=[{"name": "add", "args": {"a": i, "b": 2}, "id": f"call-{i}"}])
        result = ToolMessage(content=str(i + 2), tool_call_id=f"call-{i}")
        recorder.on_chain_start({"name": "agent"}, {"messages": [question]}, run_id=root,
                                metadata={keys.TASK: "bench", keys.PROBLEM_ID: f"w{worker}-{i}"})
        recorder.on_chat_model_start({"name": "bench"}, [[system, question]], run_id=first, parent_run_id=root,
                                     invocation_params=params)
        recorder.on_llm_end(LLMResult(generations=[[ChatGeneration(message=call)]]), run_id=first)
        recorder.on_tool_start({"name": "add"}, json.dumps({"a": i, "b": 2}), run_id=tool, parent_run_id=root,
                               inputs={"a": i, "b": 2}, tool_call_id=f"call-{i}")
        recorder.on_tool_end(result, run_id=tool)
        recorder.on_chat_model_start({"name": "bench"}, [[system, question, call, result]], run_id=second,
                                     parent_run_id=root, invocation_params=params)
        recorder.on_llm_end(LLMResult(generations=[[ChatGeneration(message=AIMessage(content=str(i + 2)))]]),
                            run_id=second)
        recorder.on_chain_end({"messages": [question, call, result]}, run_id=root)
    recorder.flush()
    return {"written": recorder.episodes_written, "errors": [str(e) for e in recorder.write_errors[:3]]}


def _recording_process(store: str, worker: int, count: int, ready: mp.Queue, go: mp.Event, out: mp.Queue) -> None:
    from fcagent.tracing.recorder import TraceRecorder  # noqa: F401 - imported before the clock starts

    ready.put(worker)
    go.wait()
    out.put(_record(store, worker, count))


def recorders(store: str, *, writers: int = 8, per_writer: int = 2000) -> dict:
    """`writers` processes × `per_writer` episodes into `store`; throughput, exactly-once, export speed."""
    TraceStore(store).close()  # schema made once, before the race
    ctx = mp.get_context("spawn")
    go, ready, out = ctx.Event(), ctx.Queue(), ctx.Queue()
    procs = [ctx.Process(target=_recording_process, args=(store, w, per_writer, ready, go, out))
             for w in range(writers)]
    for p in procs:
        p.start()
    for _ in procs:
        ready.get(timeout=300)
    started = time.perf_counter()
    go.set()
    reports = [out.get(timeout=3600) for _ in procs]
    for p in procs:
        p.join()
    seconds = time.perf_counter() - started
    total = writers * per_writer
    reader = TraceStore(store, read_only=True)
    problems = reader.completed_problems(task="bench")
    exported = Path(tempfile.mkdtemp(prefix="fcagent-store-bench-")) / "export.jsonl"
    export_started = time.perf_counter()
    lines = reader.export_jsonl(exported)
    export_seconds = time.perf_counter() - export_started
    exported.unlink()
    return {"episodes": total, "seconds": round(seconds, 1), "episodes_per_second": round(total / seconds),
            "exactly_once": reader.count() == total == len(problems)
            and problems == {f"w{w}-{i}" for w in range(writers) for i in range(per_writer)}
            and reader.count("completions") == 2 * total and reader.count("tool_runs") == total,
            "written_by_recorders": sum(r["written"] for r in reports),
            "write_errors": [e for r in reports for e in r["errors"]],
            "export_episodes_per_second": round(lines / export_seconds),
            "exit_codes": sorted({p.exitcode for p in procs})}


def run_recorders(per_writer: int = 2000, writers: int = 8, postgres: str | None = None) -> dict:
    """The same recording into SQLite and PostgreSQL, side by side."""
    out: dict = {"writers": writers, "episodes_per_writer": per_writer}
    out["sqlite"] = recorders(str(Path(tempfile.mkdtemp(prefix="fcagent-store-bench-")) / "fleet.db"),
                              writers=writers, per_writer=per_writer)
    try:
        import psycopg  # noqa: F401

        from benchmarks.postgres_server import throwaway_cluster
        server = contextlib.nullcontext(postgres) if postgres else throwaway_cluster(durable=True)
        with server as url:
            import psycopg

            with psycopg.connect(url, autocommit=True) as conn:
                out["postgresql_server"] = conn.execute("SELECT version()").fetchone()[0].split(" on ")[0]
                conn.execute("DROP SCHEMA IF EXISTS fcagent_bench CASCADE")
                conn.execute("CREATE SCHEMA fcagent_bench")
            out["postgresql"] = recorders(f"{url}{'&' if '?' in url else '?'}options=-c%20search_path%3Dfcagent_bench",
                                          writers=writers, per_writer=per_writer)
    except (ImportError, FileNotFoundError) as exc:
        out["postgresql"] = {"skipped": str(exc)}
        return out
    for key in ("episodes_per_second", "export_episodes_per_second"):
        out[f"postgresql_over_sqlite_{key}"] = round(out["postgresql"][key] / out["sqlite"][key], 2)
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--episodes", type=int, default=4000)
    parser.add_argument("--recorded", type=int, default=2000, help="Episodes each of the 8 recording processes writes.")
    parser.add_argument("--postgres", default=os.environ.get("FCAGENT_TEST_POSTGRES"),
                        help="A PostgreSQL server's URL (default: $FCAGENT_TEST_POSTGRES, else a throwaway cluster).")
    parser.add_argument("--only-recorders", action="store_true", help="Skip the single/threads/processes part.")
    args = parser.parse_args()
    out = {} if args.only_recorders else run(args.episodes)
    out["recorders"] = run_recorders(args.recorded, postgres=args.postgres)
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
