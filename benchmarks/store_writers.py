"""Trace-store write throughput: 1 writer vs 8 threads vs 8 processes into one SQLite store.

Each episode is one transaction (3 completions, labels). SQLite allows one writer at a time, so
concurrent writers queue on the WAL lock (`busy_timeout`); this measures what that costs and
checks that every episode arrived exactly once.

    python -m benchmarks.store_writers [--episodes 4000]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import tempfile
import threading
import time
from pathlib import Path

from benchmarks.export_scale import synthetic_episode
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


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--episodes", type=int, default=4000)
    args = parser.parse_args()
    print(json.dumps(run(args.episodes), indent=2))


if __name__ == "__main__":
    main()
