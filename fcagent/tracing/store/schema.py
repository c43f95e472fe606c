"""The trace store's schema: one append-only list of named migrations (simonw/llm's habit), and the
columns every insert names.

A migration is never edited once released: a store records the names it has applied, and a store
with a name this list lacks (written by a newer fcagent) is refused untouched.
"""

from __future__ import annotations

__all__ = ["MIGRATIONS", "SCHEMA_VERSION", "EPISODE_COLUMNS", "COMPLETION_COLUMNS", "TOOL_RUN_COLUMNS",
           "LABEL_COLUMNS"]

MIGRATIONS: list[tuple[str, str]] = [
    ("001_initial", """
        CREATE TABLE episodes (
            id TEXT PRIMARY KEY, thread_id TEXT, name TEXT, started_at REAL NOT NULL, ended_at REAL,
            status TEXT NOT NULL, task TEXT, problem_id TEXT, split TEXT, model TEXT,
            metadata TEXT NOT NULL DEFAULT '{}', tags TEXT NOT NULL DEFAULT '[]',
            outputs TEXT NOT NULL DEFAULT '{}', error TEXT);
        CREATE INDEX episodes_problem ON episodes(task, problem_id);
        CREATE TABLE completions (
            id TEXT PRIMARY KEY, episode_id TEXT NOT NULL REFERENCES episodes(id), parent_run_id TEXT,
            seq INTEGER NOT NULL, model TEXT, protocol TEXT, step INTEGER, context_hash TEXT NOT NULL,
            messages TEXT NOT NULL, tools TEXT NOT NULL, params TEXT NOT NULL, candidates TEXT NOT NULL,
            usage TEXT NOT NULL, latency_ms REAL, error TEXT);
        CREATE INDEX completions_episode ON completions(episode_id, seq);
        CREATE INDEX completions_context ON completions(context_hash);
        CREATE TABLE tool_runs (
            id TEXT PRIMARY KEY, episode_id TEXT NOT NULL REFERENCES episodes(id), parent_run_id TEXT,
            seq INTEGER NOT NULL, name TEXT NOT NULL, args TEXT, output TEXT, error TEXT, latency_ms REAL);
        CREATE INDEX tool_runs_episode ON tool_runs(episode_id, seq);
        CREATE TABLE labels (
            id INTEGER PRIMARY KEY AUTOINCREMENT, target_id TEXT NOT NULL, candidate INTEGER,
            success INTEGER NOT NULL, reason TEXT NOT NULL, source TEXT NOT NULL, created_at REAL NOT NULL);
        CREATE INDEX labels_target ON labels(target_id);
        CREATE UNIQUE INDEX labels_unique ON labels(target_id, IFNULL(candidate, -1), source, reason, success)
    """),
    # Typed step errors: what failed (a label's `kind`), and which model call a tool run answers.
    ("002_label_kind_tool_call_id", """
        ALTER TABLE labels ADD COLUMN kind TEXT;
        ALTER TABLE tool_runs ADD COLUMN tool_call_id TEXT
    """),
    # Each message stored once: a completion lists its messages' hashes (every call of an episode
    # repeats the history before it, so inline copies grew with the square of the episode's length).
    # `messages` stays for rows written before; new rows leave it '[]'.
    ("003_message_blobs", """
        CREATE TABLE message_blobs (hash TEXT PRIMARY KEY, body TEXT NOT NULL);
        ALTER TABLE completions ADD COLUMN message_hashes TEXT;
        ALTER TABLE episodes ADD COLUMN dedupe_key TEXT;
        CREATE UNIQUE INDEX episodes_dedupe ON episodes(dedupe_key) WHERE dedupe_key IS NOT NULL
    """),
    ("004_completion_prompt_parts", """
        ALTER TABLE completions ADD COLUMN prompt TEXT
    """),
    # The request an episode answers (`fcagent.core.records.request_key`): recorded traffic is split by it.
    ("005_episode_request_key", """
        ALTER TABLE episodes ADD COLUMN request_key TEXT
    """),
    # A target's newest label (an episode's verdict, read for every call the exporter judges) is found by
    # (target_id, id). SQLite's index on target_id held the rowid (= id) already; PostgreSQL's did not,
    # and without the id in it a fresh store's planner scanned every label for each call.
    ("006_labels_target_newest", """
        DROP INDEX labels_target;
        CREATE INDEX labels_target ON labels(target_id, id)
    """),
]
SCHEMA_VERSION = len(MIGRATIONS)

# Every column an insert writes, by name: rows are dicts keyed by these, so a column added by a
# migration cannot shift the others (inserts used to be positional tuples in migration order).
EPISODE_COLUMNS = ("id", "thread_id", "name", "started_at", "ended_at", "status", "task", "problem_id", "split",
                   "model", "metadata", "tags", "outputs", "error", "dedupe_key", "request_key")
COMPLETION_COLUMNS = ("id", "episode_id", "parent_run_id", "seq", "model", "protocol", "step", "context_hash",
                      "messages", "tools", "params", "candidates", "usage", "latency_ms", "error", "message_hashes",
                      "prompt")
TOOL_RUN_COLUMNS = ("id", "episode_id", "parent_run_id", "seq", "name", "args", "output", "error", "latency_ms",
                    "tool_call_id")
LABEL_COLUMNS = ("target_id", "candidate", "success", "reason", "source", "created_at", "kind")

