"""Which layer the PostgreSQL store stands on: psycopg 3 with a small dialect module (what fcagent uses), or
SQLAlchemy Core 2 (on the same psycopg driver), doing the same work on the same server.

Writing: episodes as the store writes them, 64 to a transaction: each episode's row on its own (whether it
was new decides what follows), then its messages, calls and labels in bulk, `ON CONFLICT DO NOTHING`.
Reading: every call joined to its episode, streamed from a server-side cursor (what an export reads).
Also the import time of each layer (the CLI imports it when a command opens a server's store).

    python -m benchmarks.postgres_layer [--episodes 3000] [--url postgresql://...]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

from benchmarks.export_scale import synthetic_episode
from fcagent.tracing.store import TraceStore
from fcagent.tracing.store.rows import trace_rows
from fcagent.tracing.store.schema import COMPLETION_COLUMNS, EPISODE_COLUMNS, LABEL_COLUMNS

BATCH = 64
READ = ("SELECT c.id, c.context_hash, c.message_hashes, c.candidates, e.task, e.started_at "
        "FROM completions c JOIN episodes e ON e.id = c.episode_id ORDER BY c.context_hash, e.started_at")


def _fresh(url: str, schema: str) -> str:
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
        conn.execute(f"CREATE SCHEMA {schema}")
    return f"{url}{'&' if '?' in url else '?'}options=-c%20search_path%3D{schema}"


def psycopg_layer(url: str, rows: list) -> dict:
    store = TraceStore(_fresh(url, "layer_psycopg"))
    started = time.perf_counter()
    for i in range(0, len(rows), BATCH):
        store.write_rows(rows[i:i + BATCH])
    write_s = time.perf_counter() - started
    store.count()  # a reading connection open, as SQLAlchemy's pool has one by now
    started = time.perf_counter()
    n = sum(1 for _ in store._query(READ, stream=True))
    read_s = time.perf_counter() - started
    store.close()
    return {"episodes_per_second": round(len(rows) / write_s), "read_rows_per_second": round(n / read_s)}


def sqlalchemy_layer(url: str, rows: list) -> dict:
    from sqlalchemy import MetaData, create_engine, text
    from sqlalchemy.dialects.postgresql import insert

    schema_url = _fresh(url, "layer_sqlalchemy")
    TraceStore(schema_url).close()  # the same tables, made by fcagent's migrations
    engine = create_engine(schema_url.replace("postgresql://", "postgresql+psycopg://", 1))
    meta = MetaData()
    meta.reflect(engine, only=["episodes", "completions", "labels", "message_blobs"])
    t = meta.tables
    episode = insert(t["episodes"]).on_conflict_do_nothing()
    blob = insert(t["message_blobs"]).on_conflict_do_nothing()
    completion = insert(t["completions"]).on_conflict_do_nothing()
    label = insert(t["labels"]).on_conflict_do_nothing()
    started = time.perf_counter()
    for i in range(0, len(rows), BATCH):
        batch = sorted(rows[i:i + BATCH], key=lambda r: r.episode["id"])
        with engine.begin() as conn:
            new = [r for r in batch if conn.execute(episode, {c: r.episode[c] for c in EPISODE_COLUMNS}).rowcount]
            blobs = {b["hash"]: b for r in new for b in r.blobs}
            if blobs:
                conn.execute(blob, [blobs[h] for h in sorted(blobs)])
            comps = [{k: c[k] for k in COMPLETION_COLUMNS} for r in new for c in r.completions]
            if comps:
                conn.execute(completion, comps)
            labels = [{k: lb[k] for k in LABEL_COLUMNS} for r in new for lb in r.labels]
            if labels:
                conn.execute(label, labels)
    write_s = time.perf_counter() - started
    started = time.perf_counter()
    with engine.connect() as conn:
        result = conn.execution_options(stream_results=True, yield_per=500).execute(text(READ))
        n = sum(1 for _ in result.mappings())
    read_s = time.perf_counter() - started
    engine.dispose()
    return {"episodes_per_second": round(len(rows) / write_s), "read_rows_per_second": round(n / read_s)}


def _import_ms(module: str) -> float:
    code = f"import time; t = time.perf_counter(); import {module}; print((time.perf_counter() - t) * 1000)"
    runs = [float(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout)
            for _ in range(5)]
    return round(sorted(runs)[2], 1)


def run(url: str, episodes: int = 3000, rounds: int = 3) -> dict:
    out: dict = {"episodes": episodes, "batch": BATCH, "rounds": rounds}
    results: dict[str, list[dict]] = {"psycopg": [], "sqlalchemy_core": []}
    for _ in range(rounds):  # interleaved, so load on the machine hits both alike; the median is kept
        for name, layer in (("psycopg", psycopg_layer), ("sqlalchemy_core", sqlalchemy_layer)):
            rows = [trace_rows(synthetic_episode(i)) for i in range(episodes)]
            results[name].append(layer(url, rows))
    for name, runs in results.items():
        out[name] = {k: sorted(r[k] for r in runs)[len(runs) // 2] for k in runs[0]}
    out["psycopg"]["import_ms"] = _import_ms("psycopg")
    out["sqlalchemy_core"]["import_ms"] = _import_ms("sqlalchemy")
    out["psycopg_over_sqlalchemy"] = {k: round(out["psycopg"][k] / out["sqlalchemy_core"][k], 2)
                                      for k in ("episodes_per_second", "read_rows_per_second")}
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--episodes", type=int, default=3000)
    parser.add_argument("--url", help="A PostgreSQL server (default: a throwaway cluster with default settings).")
    args = parser.parse_args()
    if args.url:
        print(json.dumps(run(args.url, args.episodes), indent=2))
        return
    from benchmarks.postgres_server import throwaway_cluster

    with throwaway_cluster(durable=True) as url:
        print(json.dumps(run(url, args.episodes), indent=2))


if __name__ == "__main__":
    main()
