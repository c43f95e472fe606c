"""`TraceStore`: the embedded trace store, one SQLite file.

WAL journal (readers never block the writer, a crash loses no committed episode), one transaction
per episode, and schema changes as an append-only list of named migrations recorded in a table
(simonw/llm's habit). A store written by a newer fcagent is refused with its version, untouched.
"""

from __future__ import annotations

import contextlib
import hashlib
import atexit
import json
import os
import queue
import sqlite3
import tempfile
import threading
import time
import weakref
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, NamedTuple

from pydantic import ValidationError

try:
    import fcntl
except ImportError:  # Windows: SQLite's own busy handler alone
    fcntl = None  # type: ignore[assignment]

from fcagent import keys
from fcagent.errors import UserError
from fcagent.records import Completion, Episode, EpisodeTrace, Label, ToolRun, bounded

__all__ = ["TraceStore", "StoreError", "StoreWriteError", "DEFAULT_STORE", "open_store", "write_jsonl_atomic", "SCHEMA_VERSION"]

DEFAULT_STORE = "fcagent-traces.db"


class StoreError(RuntimeError):
    """The store cannot be used as asked (newer schema, corrupt import); nothing stored was changed."""


class StoreWriteError(RuntimeError):
    """An episode could not be written (disk full, store locked, ...): it is not in the store."""

    def __init__(self, episode_id: str, cause: BaseException):
        super().__init__(f"episode {episode_id} was not stored: {type(cause).__name__}: {cause}")
        self.episode_id = episode_id
        self.cause = cause


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
]
SCHEMA_VERSION = len(MIGRATIONS)

_EPISODE_COLS = 15
_COMPLETION_COLS = 17
_TOOL_COLS = 10


# One encoder for every stored value: `json.dumps` with these options builds a new one per call,
# which was a third of the writer thread's encoding time (~19 values per episode).
_ENCODER = json.JSONEncoder(ensure_ascii=False, default=str, separators=(",", ":"))


def _dumps(value: Any) -> str:
    try:
        return _ENCODER.encode(value)
    except RecursionError:  # nested deeper than JSON encoding goes: stored cut, with a marker, not dropped
        return _ENCODER.encode(bounded(value))


class TraceStore:
    """Episodes, candidate completions, tool runs and labels in one SQLite file."""

    def __init__(self, path: str | os.PathLike[str] = DEFAULT_STORE, *, timeout: float = 60.0):
        """`timeout`: seconds a write waits for another writer's lock before it fails (and is reported)."""
        self.path = Path(path)
        self.timeout = timeout
        if self.path.is_dir():
            raise UserError(f"`store` must be a file path, {self.path} is a folder")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.RLock()
        self._writer_fd: tuple[int, int] | None = None  # (pid, fd) of the writer-queue lock file
        self._writer: _EpisodeWriter | None = None  # started by the first `write_episode_soon`
        # Guards `_writer` only: queueing an episode must not wait for the connection's lock, which the
        # writer thread holds through each transaction.
        self._writer_lock = threading.Lock()
        self._file_key = os.path.realpath(self.path)  # the stores of this process on one file share queues
        self._conn = sqlite3.connect(self.path, timeout=timeout, check_same_thread=False, isolation_level=None)
        try:
            self._refuse_newer_schema()  # before anything writes: a newer store is left exactly as it was
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.execute("PRAGMA synchronous=NORMAL")
            self._conn.execute(f"PRAGMA busy_timeout={int(timeout * 1000)}")
            self._migrate()
        except sqlite3.DatabaseError as exc:
            self._conn.close()
            raise StoreError(f"{self.path} is not a readable fcagent store: {exc}") from exc
        except StoreError:
            self._conn.close()
            raise

    # --- schema --------------------------------------------------------------------------------

    def _refuse_newer_schema(self) -> None:
        exists = self._conn.execute("SELECT 1 FROM sqlite_master WHERE type='table' AND name='_migrations'").fetchone()
        if not exists:
            return
        applied = {r[0] for r in self._conn.execute("SELECT name FROM _migrations")}
        newer = sorted(applied - {name for name, _ in MIGRATIONS})
        if newer:
            raise StoreError(f"{self.path} has schema version {len(applied)} (migrations {', '.join(newer)} are "
                             f"unknown here); this fcagent reads version {SCHEMA_VERSION}. Upgrade fcagent; "
                             "the store was not changed.")

    def _migrate(self) -> None:
        with self._lock:
            self._conn.execute("CREATE TABLE IF NOT EXISTS _migrations (name TEXT PRIMARY KEY, applied_at REAL)")
            applied = {r[0] for r in self._conn.execute("SELECT name FROM _migrations")}
            for name, sql in MIGRATIONS:
                if name in applied:
                    continue
                self._conn.execute("BEGIN IMMEDIATE")
                try:
                    # Another process may have migrated between our read and taking the lock.
                    if not self._conn.execute("SELECT 1 FROM _migrations WHERE name=?", (name,)).fetchone():
                        for statement in sql.split(";"):
                            if statement.strip():
                                self._conn.execute(statement)
                        self._conn.execute("INSERT INTO _migrations VALUES (?, ?)", (name, time.time()))
                    self._conn.execute("COMMIT")
                except BaseException:
                    self._rollback()
                    raise

    @property
    def schema_version(self) -> int:
        with self._lock:
            return self._conn.execute("SELECT COUNT(*) FROM _migrations").fetchone()[0]

    def close(self) -> None:
        self.flush()
        with self._writer_lock:
            writer, self._writer = self._writer, None
        if writer is not None and writer.pid == os.getpid() and writer.thread.is_alive():
            writer.stop()
        with self._lock:
            self._conn.close()
            if self._writer_fd is not None and self._writer_fd[0] == os.getpid():
                os.close(self._writer_fd[1])
            self._writer_fd = None

    @contextlib.contextmanager
    def _writer_queue(self) -> Iterator[None]:
        """Writers wait in a blocking `flock` on a sidecar file before taking SQLite's write lock.

        SQLite's busy handler polls with sleeps of up to 100 ms, so with several processes writing,
        the write lock mostly sits free while they sleep; a blocked `flock` wakes the next writer as
        soon as the lock is released (measured by benchmarks/store_writers.py).
        """
        if fcntl is None:
            yield
            return
        if self._writer_fd is None or self._writer_fd[0] != os.getpid():  # opened per process (not across fork)
            self._writer_fd = (os.getpid(), os.open(f"{self.path}-writer.lock", os.O_RDWR | os.O_CREAT, 0o644))
        fd = self._writer_fd[1]
        fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)

    def __enter__(self) -> TraceStore:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # --- writing -------------------------------------------------------------------------------

    def write_episode(self, trace: EpisodeTrace | dict[str, Any], *, replace: bool = False) -> bool:
        """Store one episode and everything under it in one transaction; False if it was there (its
        labels are merged in all the same: importing feedback on a known episode adds the feedback)."""
        (stored,) = self.write_episodes([trace], replace=replace)
        return stored

    def write_episodes(self, traces: list[EpisodeTrace | dict[str, Any]], *, replace: bool | list[bool] = False
                       ) -> list[bool]:
        """Store several episodes in one transaction (all or none); per episode, False if it was there."""
        rows = [_trace_rows(trace) for trace in traces]
        replaces = replace if isinstance(replace, list) else [replace] * len(rows)
        with self._lock, self._writer_queue():
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                stored = [self._insert(r, again) for r, again in zip(rows, replaces, strict=True)]
                self._conn.execute("COMMIT")
            except BaseException:
                self._rollback()
                raise
        return stored

    def _insert(self, rows: dict[str, Any], replace: bool) -> bool:
        verb = "INSERT OR REPLACE" if replace else "INSERT OR IGNORE"
        cur = self._conn.execute(f"{verb} INTO episodes VALUES ({_marks(_EPISODE_COLS)})", rows["episode"])
        if cur.rowcount == 0:
            # The id is known: merge its labels. Else its dedupe key was (another harvest stored
            # this problem first): nothing of it is written.
            if self._conn.execute("SELECT 1 FROM episodes WHERE id=?", (rows["episode"][0],)).fetchone():
                self._conn.executemany(_INSERT_LABEL, rows["labels"])
            return False
        self._conn.executemany("INSERT OR IGNORE INTO message_blobs VALUES (?, ?)", rows["blobs"])
        self._conn.executemany(f"{verb} INTO completions VALUES ({_marks(_COMPLETION_COLS)})", rows["completions"])
        self._conn.executemany(f"{verb} INTO tool_runs VALUES ({_marks(_TOOL_COLS)})", rows["tool_runs"])
        self._conn.executemany(_INSERT_LABEL, rows["labels"])
        return True

    # --- writing off the caller's thread -------------------------------------------------------

    def write_episode_soon(self, episode_id: str, build: Callable[[], EpisodeTrace | dict[str, Any]], *,
                           replace: bool = False, done: Callable[[bool | None, StoreWriteError | None], None]) -> None:
        """Queue an episode for this store's writer thread and return at once: `build()` makes the trace
        there, and episodes queued together are written in one transaction (falling back to one each when
        it fails, so a failure names only its own episode). `done(stored, error)` is called on the writer
        thread; `error` is a `StoreWriteError` naming the episode.

        Reads through any store of this process on the same file wait for its queued episodes first
        (read-your-writes, as with `write_episode`); `flush()` waits for them, `close()` and interpreter
        exit write them."""
        with self._writer_lock:
            if self._writer is None or self._writer.pid != os.getpid():  # a forked child starts its own
                self._writer = _EpisodeWriter(self)
                _QUEUED_ON.setdefault(self._file_key, weakref.WeakSet()).add(self)
            self._writer.queue.put(_QueuedEpisode(episode_id, build, replace, done))

    def flush(self) -> None:
        """Wait until every episode queued on this store is written (or its failure reported)."""
        writer = self._writer
        if writer is not None and writer.pid == os.getpid() and threading.get_ident() != writer.ident:
            with writer.hurried():
                writer.queue.join()

    def _settle(self) -> None:
        # Every store of this process on this file: a read sees what was queued before it.
        for store in list(_QUEUED_ON.get(self._file_key, ())):
            store.flush()

    def _rollback(self) -> None:
        # SQLite may have rolled back already (a failed COMMIT on a full disk): a second ROLLBACK would
        # raise "no transaction is active" and hide the real error.
        if self._conn.in_transaction:
            with contextlib.suppress(sqlite3.Error):
                self._conn.execute("ROLLBACK")

    def label(self, target_id: str, success: bool, reason: str = "", source: str = "user", *,
              candidate: int | None = None, kind: str | None = None) -> Label:
        """Attach a verdict to an episode or a completion (or one candidate of a completion).
        `target_id` may be a unique prefix of the id."""
        (lab,) = self.label_many([Label(target_id=target_id, candidate=candidate, success=bool(success), reason=reason,
                                        source=source, kind=kind)])
        return lab

    def label_many(self, labels: list[Label]) -> list[Label]:
        """Attach many labels in one transaction (feedback arriving in bulk); every target is resolved
        (unique prefixes allowed) before anything is written, so a bad id writes nothing."""
        resolved = [lab.model_copy(update={"target_id": self.resolve_id(lab.target_id),
                                           "created_at": lab.created_at or time.time()}) for lab in labels]
        rows = [_label_row(lab.model_dump()) for lab in resolved]
        with self._lock, self._writer_queue():
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                self._conn.executemany(_INSERT_LABEL, rows)
                self._conn.execute("COMMIT")
            except BaseException:
                self._rollback()
                raise
        return resolved

    def resolve_id(self, id_or_prefix: str) -> str:
        """The full id of the one episode or completion whose id is, or starts with, `id_or_prefix`."""
        if not isinstance(id_or_prefix, str) or not id_or_prefix.strip():
            raise UserError("an episode or completion id must be a non-empty string")
        prefix = id_or_prefix.strip()
        matches: list[str] = []
        for table in ("episodes", "completions"):
            # A range scan on the primary key: fast whatever the store's size.
            matches += [r["id"] for r in self._query(f"SELECT id FROM {table} WHERE id >= ? AND id < ? LIMIT 6",
                                                     (prefix, prefix + "\U0010ffff"))]
        if prefix in matches:
            return prefix
        if len(matches) == 1:
            return matches[0]
        if not matches:
            raise UserError(f"no episode or completion with id {prefix!r} in {self.path} (`fcagent traces ls` lists them)")
        raise UserError(f"id prefix {prefix!r} matches several ids in {self.path} "
                        f"({', '.join(m[:13] + '…' for m in matches[:5])}); give more of it")

    # --- reading -------------------------------------------------------------------------------

    def _query(self, sql: str, params: tuple = (), batch: int = 500) -> Iterator[sqlite3.Row]:
        # A connection of its own per query, fetched in batches: memory stays flat with store size,
        # and a long read never holds the writer's lock.
        self._settle()
        conn = sqlite3.connect(self.path, timeout=self.timeout, check_same_thread=False)
        conn.row_factory = sqlite3.Row
        try:
            cur = conn.execute(sql, params)
            while rows := cur.fetchmany(batch):
                yield from rows
        except sqlite3.DatabaseError as exc:
            if isinstance(exc, sqlite3.OperationalError) and "locked" in str(exc):
                raise StoreError(f"{self.path} stayed locked by another writer for {self.timeout:g} s") from None
            raise StoreError(f"{self.path} cannot be read: {exc}. The file is damaged; `sqlite3 {self.path} "
                             "\".recover\"` may save what is left into a new store") from None
        finally:
            conn.close()

    def episodes(self, *, task: str | None = None, status: str | None = None) -> Iterator[Episode]:
        where, params = _filters(task=task, status=status)
        for row in self._query(f"SELECT * FROM episodes {where} ORDER BY started_at, id", params):
            yield _episode(row)

    def traces(self, *, task: str | None = None, status: str | None = None) -> Iterator[EpisodeTrace]:
        """Every episode with its completions, tool runs and labels, streamed in start order."""
        for ep in self.episodes(task=task, status=status):
            yield self._trace(ep)

    def trace(self, episode_id: str) -> EpisodeTrace:
        """One episode by its id or a unique prefix of it."""
        full = self.resolve_id(episode_id)
        rows = list(self._query("SELECT * FROM episodes WHERE id=?", (full,)))
        if not rows:
            raise UserError(f"{full} is a model call, not an episode, in {self.path}")
        return self._trace(_episode(rows[0]))

    def latest_episode_id(self) -> str | None:
        rows = list(self._query("SELECT id FROM episodes ORDER BY started_at DESC LIMIT 1"))
        return rows[0]["id"] if rows else None

    def messages_of(self, rows: list[Any]) -> list[list[dict[str, Any]]]:
        """The messages of completion rows (`messages` and `message_hashes` columns), one query for all."""
        wanted = {h for r in rows if r["message_hashes"] for h in json.loads(r["message_hashes"])}
        bodies: dict[str, Any] = {}
        ordered = sorted(wanted)
        for start in range(0, len(ordered), 500):
            chunk = ordered[start:start + 500]
            bodies |= {b["hash"]: json.loads(b["body"]) for b in self._query(
                f"SELECT hash, body FROM message_blobs WHERE hash IN ({_marks(len(chunk))})", tuple(chunk))}
        out = []
        for r in rows:
            if r["message_hashes"]:
                out.append([bodies[h] for h in json.loads(r["message_hashes"])])
            else:
                out.append(json.loads(r["messages"]))
        return out

    def _trace(self, ep: Episode) -> EpisodeTrace:
        rows = list(self._query("SELECT * FROM completions WHERE episode_id=? ORDER BY seq", (ep.id,)))
        comps = [_completion(r, m) for r, m in zip(rows, self.messages_of(rows))]
        tools = [_tool_run(r) for r in self._query("SELECT * FROM tool_runs WHERE episode_id=? ORDER BY seq", (ep.id,))]
        ids = (ep.id, *(c.id for c in comps))
        labels = [_label(r) for r in self._query(
            f"SELECT * FROM labels WHERE target_id IN ({_marks(len(ids))}) ORDER BY id", ids)]
        return EpisodeTrace(episode=ep, completions=comps, tool_runs=tools, labels=labels)

    def verdict_counts(self, *, unlabelled: str = "skip") -> dict[str, int]:
        """Complete episodes by their newest episode label (what the exporter's policy sees)."""
        names = {1: "labelled good", 0: "labelled bad",
                 None: "unlabelled (skipped)" if unlabelled == "skip" else "unlabelled (taken as good)"}
        return {names[r["v"]]: r["n"] for r in self._query(
            "SELECT (SELECT l.success FROM labels l WHERE l.target_id = e.id ORDER BY l.id DESC LIMIT 1) AS v, "
            "COUNT(*) AS n FROM episodes e WHERE e.status = 'complete' GROUP BY v")}

    def summaries(self, *, limit: int = 20, task: str | None = None) -> list[dict[str, Any]]:
        """The newest episodes for a listing: id, question (the first user message), verdict (the newest
        episode label, else the task verifier's), model, status, steps."""
        where, params = _filters(task=task)
        rows = list(self._query(
            f"SELECT e.*, (SELECT l.success FROM labels l WHERE l.target_id = e.id ORDER BY l.id DESC LIMIT 1) AS v, "
            f"(SELECT l.source FROM labels l WHERE l.target_id = e.id ORDER BY l.id DESC LIMIT 1) AS v_source, "
            f"(SELECT c.id FROM completions c WHERE c.episode_id = e.id ORDER BY c.seq LIMIT 1) AS first_call "
            f"FROM episodes e {where} ORDER BY e.started_at DESC, e.id DESC LIMIT ?", (*params, limit)))
        calls = {r["id"]: r for r in self._query(
            f"SELECT id, messages, message_hashes FROM completions WHERE id IN ({_marks(len(rows))})",
            tuple(r["first_call"] for r in rows))} if rows else {}
        firsts = dict(zip(calls, self.messages_of(list(calls.values()))))
        out = []
        for r in reversed(rows):
            messages = firsts.get(r["first_call"], [])
            question = next((m.get("content", "") for m in messages if m.get("role") == "user"), "")
            out.append({"id": r["id"], "question": question, "model": r["model"], "status": r["status"],
                        "task": r["task"], "problem_id": r["problem_id"],
                        "verdict": None if r["v"] is None else bool(r["v"]), "verdict_source": r["v_source"],
                        "steps": json.loads(r["outputs"]).get("steps")})
        return out

    def calls_by_context(self, *, task: str | None = None) -> Iterator[dict[str, Any]]:
        """Every model call of a complete episode, ordered by context (then episode start, step), with
        what the exporter judges it by: its labels, its episode's newest label and role, and whether it
        is the episode's last call. Messages are left as references (`messages_of` resolves them)."""
        yield from self._calls(task, order="c.context_hash, e.started_at, c.seq")

    def calls_by_episode(self, *, task: str | None = None) -> Iterator[dict[str, Any]]:
        """The same rows as `calls_by_context`, episode by episode, each episode's calls in order."""
        yield from self._calls(task, order="e.started_at, e.id, c.seq")

    def _calls(self, task: str | None, *, order: str) -> Iterator[dict[str, Any]]:
        where, params = ("AND e.task = ?", (task,)) if task else ("", ())
        sql = f"""
            SELECT c.id, c.episode_id, c.context_hash, c.protocol, c.messages, c.message_hashes, c.tools, c.candidates,
                   c.prompt, e.task, e.problem_id, e.split, json_extract(e.metadata, '$.{keys.ROLE}') AS role,
                   c.seq = (SELECT MAX(c2.seq) FROM completions c2 WHERE c2.episode_id = c.episode_id) AS is_last,
                   (SELECT l.success FROM labels l WHERE l.target_id = e.id ORDER BY l.id DESC LIMIT 1) AS ep_success,
                   (SELECT json_group_array(json_object('candidate', l.candidate, 'success', l.success,
                                                        'reason', l.reason, 'source', l.source, 'kind', l.kind))
                      FROM (SELECT * FROM labels WHERE target_id = c.id ORDER BY id) l) AS labels
            FROM completions c JOIN episodes e ON e.id = c.episode_id
            WHERE e.status = 'complete' {where}
            ORDER BY {order}"""
        for r in self._query(sql, params):
            yield dict(r)

    def good_teacher_calls(self, *, task: str | None = None) -> list[dict[str, Any]]:
        """Model calls of non-student episodes labelled good, outside the test split, in episode order,
        with their messages resolved: the contexts `fcagent replay` gives the student."""
        where, params = ("AND e.task = ?", (task,)) if task else ("", ())
        rows = list(self._query(f"""
            SELECT c.id, c.context_hash, c.protocol, c.messages, c.message_hashes, c.tools, c.candidates,
                   c.prompt, c.episode_id, e.task, e.problem_id, e.split
            FROM completions c JOIN episodes e ON e.id = c.episode_id
            WHERE e.status = 'complete'
              AND COALESCE(json_extract(e.metadata, '$.{keys.ROLE}'), '') NOT IN {keys.sql_list(keys.STUDENT_ROLES)}
              AND (SELECT l.success FROM labels l WHERE l.target_id = e.id ORDER BY l.id DESC LIMIT 1) = 1
              AND COALESCE(e.split, '') != 'test' {where}
            ORDER BY e.started_at, c.seq""", params))
        return [{**dict(r), "messages": m} for r, m in zip(rows, self.messages_of(rows))]

    def contexts_answered_by(self, model: str, role: str) -> set[str]:
        """Context hashes of the calls `model` made in episodes of `role` (what replay skips)."""
        return {r["context_hash"] for r in self._query(
            f"SELECT c.context_hash FROM completions c JOIN episodes e ON e.id = c.episode_id "
            f"WHERE json_extract(e.metadata, '$.{keys.ROLE}') = ? AND e.model = ?", (role, model))}

    def labels(self, target_id: str) -> list[Label]:
        return [_label(r) for r in self._query("SELECT * FROM labels WHERE target_id=? ORDER BY id", (target_id,))]

    def completed_problems(self, *, task: str | None = None, model: str | None = None) -> set[str]:
        """Problem ids with a complete episode (what `harvest --resume` skips)."""
        where, params = _filters(task=task, status="complete", model=model)
        return {r["problem_id"] for r in self._query(f"SELECT problem_id FROM episodes {where}", params)
                if r["problem_id"]}

    def count(self, table: str = "episodes") -> int:
        if table not in ("episodes", "completions", "tool_runs", "labels"):
            raise UserError(f"`table` must be episodes, completions, tool_runs or labels, got {table!r}")
        return next(self._query(f"SELECT COUNT(*) AS n FROM {table}"))["n"]

    def stats(self) -> dict[str, Any]:
        out: dict[str, Any] = {"store": str(self.path), "schema_version": self.schema_version}
        for table in ("episodes", "completions", "tool_runs", "labels"):
            out[table] = self.count(table)
        for key, col in (("episodes_by_task", "task"), ("episodes_by_model", "model"), ("episodes_by_status", "status")):
            out[key] = {r["k"] or "-": r["n"] for r in self._query(
                f"SELECT {col} AS k, COUNT(*) AS n FROM episodes GROUP BY {col} ORDER BY n DESC")}
        by_label: Counter[str] = Counter()
        for r in self._query("SELECT source, success, COUNT(*) AS n FROM labels GROUP BY source, success"):
            by_label[f"{r['source']}:{'good' if r['success'] else 'bad'}"] = r["n"]
        out["labels_by_source"] = dict(by_label)
        out["episode_verdicts"] = {("good" if r["success"] else "bad"): r["n"] for r in self._query(
            "SELECT success, COUNT(DISTINCT target_id) AS n FROM labels WHERE target_id IN (SELECT id FROM episodes) "
            "GROUP BY success")}
        out["unlabelled_episodes"] = next(self._query(
            "SELECT COUNT(*) AS n FROM episodes WHERE id NOT IN (SELECT target_id FROM labels)"))["n"]
        return out

    # --- JSONL ---------------------------------------------------------------------------------

    def export_jsonl(self, path: str | os.PathLike[str], *, redactor: Any = None) -> int:
        """One episode per line; written to a temp file and renamed, so never half-written."""

        def rows() -> Iterator[dict[str, Any]]:
            for trace in self.traces():
                data = trace.model_dump(mode="json")
                yield redactor.redact_value(data) if redactor is not None else data

        return write_jsonl_atomic(path, rows())

    def import_jsonl(self, path: str | os.PathLike[str]) -> tuple[int, int]:
        """Validate every line first, then add the new episodes; returns (added, already present)."""
        path = Path(path)
        traces = []
        if path.is_dir():
            raise StoreError(f"{path} is a folder; import takes a JSONL file written by `fcagent traces export`")
        try:
            with path.open("rb") as f:
                if f.read(16) == b"SQLite format 3\x00":
                    raise StoreError(f"{path} is an SQLite store, not a JSONL export; use it with `--store {path}`")
            with path.open(encoding="utf-8") as f:
                for lineno, line in enumerate(f, 1):
                    if not line.strip():
                        continue
                    try:
                        traces.append(EpisodeTrace.model_validate_json(line))
                    except ValidationError as exc:
                        err = exc.errors()[0]
                        field = ".".join(str(p) for p in err["loc"]) or "line"
                        raise StoreError(f"{path}:{lineno}: `{field}`: {err['msg']}; nothing was imported") from None
        except FileNotFoundError:
            raise StoreError(f"{path}: no such file") from None
        except UnicodeDecodeError as exc:
            raise StoreError(f"{path}: not UTF-8 text (byte {exc.start}); import takes a JSONL export") from None
        added = sum(self.write_episode(t) for t in traces)
        return added, len(traces) - added


def write_jsonl_atomic(path: str | os.PathLike[str], rows: Iterator[dict[str, Any]]) -> int:
    """Write rows as JSON Lines to a temp file beside `path`, then rename: readers (and a process
    killed mid-write) never see a half-written file. Returns the number of rows."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    n = 0
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            for row in rows:
                f.write(_dumps(row) + "\n")
                n += 1
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return n


class _QueuedEpisode(NamedTuple):
    episode_id: str
    build: Callable[[], Any]
    replace: bool
    done: Callable[..., None]


class _EpisodeWriter:
    """A store's writer thread: takes what is queued, builds the traces, writes them in one transaction.

    A daemon thread, so a program that forgets `close()` still exits; what it had queued is written
    by the `atexit` hook below before the interpreter goes. A `TraceStore` is used from many threads
    already (its connection is shared under its lock), so the writer uses the caller's store object."""

    BATCH = 64  # episodes per transaction at most: a long queue still commits (and is readable) often
    # While episodes keep coming (the last batch was written under LINGER_S ago), wait this long after
    # the first of a batch for more: a commit costs more than building and inserting an episode, so
    # episodes arriving close together share one, and queueing them meanwhile does not wake this thread
    # (benchmarks/tracing.py). An episode after a quiet spell is written at once, as is everything while
    # anyone waits for the queue (`flush()`, `close()`, a read through any store on the file).
    LINGER_S = 0.05
    IDLE_S = 1.0  # an idle writer ends (a store no longer used is freed); the next episode starts another

    def __init__(self, store: TraceStore) -> None:
        self.store = store
        self.pid = os.getpid()
        self.queue: queue.Queue[_QueuedEpisode | None] = queue.Queue()
        self._hurry = threading.Event()  # set while someone waits for the queue: no lingering
        self._last_write = -float("inf")  # time.monotonic() when the last batch was written
        self._waiting = 0
        self._waiting_lock = threading.Lock()
        self.thread = threading.Thread(target=self._run, name=f"fcagent-writer:{store.path.name}", daemon=True)
        self.thread.start()
        self.ident = self.thread.ident

    def stop(self) -> None:
        self.queue.put(None)
        with self.hurried():
            self.thread.join()

    @contextlib.contextmanager
    def hurried(self) -> Iterator[None]:
        """While inside, the writer writes what is queued at once (a lingering writer is woken)."""
        with self._waiting_lock:
            self._waiting += 1
            self._hurry.set()
        try:
            yield
        finally:
            with self._waiting_lock:
                self._waiting -= 1
                if not self._waiting:
                    self._hurry.clear()

    def _run(self) -> None:
        while True:
            try:
                first = self.queue.get(timeout=self.IDLE_S)
            except queue.Empty:
                with self.store._writer_lock:  # `write_episode_soon` queues under this lock: nothing slips in
                    if self.queue.empty():
                        if self.store._writer is self:
                            self.store._writer = None
                        return
                continue
            if first is not None and time.monotonic() - self._last_write < self.LINGER_S:
                self._hurry.wait(self.LINGER_S)
            batch = [first]  # what is queued now, up to BATCH, or up to a stop (None)
            while len(batch) < self.BATCH and batch[-1] is not None:
                try:
                    batch.append(self.queue.get_nowait())
                except queue.Empty:
                    break
            try:
                self._write([job for job in batch if job is not None])
            finally:
                self._last_write = time.monotonic()
                for _ in batch:
                    self.queue.task_done()
            if batch[-1] is None:
                return

    def _write(self, batch: list[_QueuedEpisode]) -> None:
        built: list[tuple[_QueuedEpisode, Any]] = []
        for job in batch:
            try:
                built.append((job, job.build()))
            except Exception as exc:  # noqa: BLE001 - reported naming the episode, never lost silently
                _report(job, None, exc)
        if not built:
            return
        try:
            stored = self.store.write_episodes([trace for _, trace in built], replace=[job.replace for job, _ in built])
        except Exception:  # noqa: BLE001 - one bad episode must not take its batch with it: one at a time
            for job, trace in built:
                try:
                    _report(job, self.store.write_episode(trace, replace=job.replace), None)
                except Exception as exc:  # noqa: BLE001
                    _report(job, None, exc)
            return
        for (job, _), ok in zip(built, stored):
            _report(job, ok, None)


def _report(job: _QueuedEpisode, stored: bool | None, exc: BaseException | None) -> None:
    try:
        job.done(stored, StoreWriteError(job.episode_id, exc) if exc is not None else None)
    except Exception:  # noqa: BLE001 - a broken callback must not stop the writer
        import logging

        logging.getLogger("fcagent").exception("fcagent: write callback of episode %s failed", job.episode_id)


# Stores with a writer thread, by file: a read through any store on a file waits for their queues.
_QUEUED_ON: dict[str, weakref.WeakSet[TraceStore]] = {}


@atexit.register
def _write_queued_at_exit() -> None:
    for stores in list(_QUEUED_ON.values()):
        for store in list(stores):
            store.flush()


def open_store(store: str | os.PathLike[str] | TraceStore) -> TraceStore:
    if isinstance(store, TraceStore):
        return store
    if isinstance(store, str | os.PathLike):
        return TraceStore(store)
    raise UserError(f"`store` must be a path or a TraceStore, got {type(store).__name__}")


_INSERT_LABEL = ("INSERT OR IGNORE INTO labels (target_id, candidate, success, reason, source, created_at, kind) "
                 "VALUES (?,?,?,?,?,?,?)")


def _marks(n: int) -> str:
    return ",".join("?" * n)


def _filters(**kw: Any) -> tuple[str, tuple]:
    parts, params = [], []
    for col, val in kw.items():
        if val is not None:
            parts.append(f"{col}=?")
            params.append(val)
    return ("WHERE " + " AND ".join(parts)) if parts else "", tuple(params)


def _label_row(lb: dict[str, Any]) -> tuple:
    return (lb["target_id"], lb.get("candidate"), int(bool(lb["success"])), lb.get("reason") or "",
            lb.get("source") or "user", lb.get("created_at") or time.time(), lb.get("kind"))


def _trace_rows(trace: EpisodeTrace | dict[str, Any]) -> dict[str, Any]:
    """Rows from a validated EpisodeTrace, or from the recorder's plain dicts (built well-formed)."""
    if isinstance(trace, EpisodeTrace):
        trace = trace.model_dump(mode="json")
    e = trace["episode"]
    episode = (e["id"], e.get("thread_id"), e.get("name"), e["started_at"], e.get("ended_at"),
               e.get("status", "complete"), e.get("task"), e.get("problem_id"), e.get("split"), e.get("model"),
               _dumps(e.get("metadata") or {}), _dumps(e.get("tags") or []), _dumps(e.get("outputs") or {}),
               e.get("error"), (e.get("metadata") or {}).get(keys.DEDUPE))
    blobs: dict[str, str] = {}
    digests: dict[int, str] = {}  # by record object: a message record shared by several calls is encoded once
    comps = []
    for c in trace.get("completions", []):
        hashes = []
        for m in c["messages"]:
            digest = digests.get(id(m))
            if digest is None:
                body = _dumps(m)
                digest = digests[id(m)] = hashlib.blake2b(body.encode(), digest_size=16).hexdigest()
                blobs[digest] = body
            hashes.append(digest)
        comps.append((c["id"], c["episode_id"], c.get("parent_run_id"), c.get("seq", 0), c.get("model"),
                      c.get("protocol"), c.get("step"), c["context_hash"], "[]", _dumps(c.get("tools") or []),
                      _dumps(c.get("params") or {}), _dumps(c.get("candidates") or []), _dumps(c.get("usage") or {}),
                      c.get("latency_ms"), c.get("error"), _dumps(hashes),
                      _dumps(c["prompt"]) if c.get("prompt") else None))
    tools = [(t["id"], t["episode_id"], t.get("parent_run_id"), t.get("seq", 0), t["name"], _dumps(t.get("args")),
              t.get("output"), t.get("error"), t.get("latency_ms"), t.get("tool_call_id"))
             for t in trace.get("tool_runs", [])]
    labels = [_label_row(lb) for lb in trace.get("labels", [])]
    return {"episode": episode, "completions": comps, "tool_runs": tools, "labels": labels,
            "blobs": list(blobs.items())}


def _episode(r: sqlite3.Row) -> Episode:
    return Episode(id=r["id"], thread_id=r["thread_id"], name=r["name"], started_at=r["started_at"],
                   ended_at=r["ended_at"], status=r["status"], task=r["task"], problem_id=r["problem_id"],
                   split=r["split"], model=r["model"], metadata=json.loads(r["metadata"]), tags=json.loads(r["tags"]),
                   outputs=json.loads(r["outputs"]), error=r["error"])


def _completion(r: sqlite3.Row, messages: list[Any]) -> Completion:
    return Completion(id=r["id"], episode_id=r["episode_id"], parent_run_id=r["parent_run_id"], seq=r["seq"],
                      model=r["model"], protocol=r["protocol"], step=r["step"], context_hash=r["context_hash"],
                      messages=messages, tools=json.loads(r["tools"]), params=json.loads(r["params"]),
                      candidates=json.loads(r["candidates"]), usage=json.loads(r["usage"]), latency_ms=r["latency_ms"],
                      error=r["error"], prompt=json.loads(r["prompt"]) if r["prompt"] else None)


def _tool_run(r: sqlite3.Row) -> ToolRun:
    return ToolRun(id=r["id"], episode_id=r["episode_id"], parent_run_id=r["parent_run_id"], seq=r["seq"],
                   name=r["name"], args=json.loads(r["args"]) if r["args"] else None, output=r["output"],
                   error=r["error"], latency_ms=r["latency_ms"], tool_call_id=r["tool_call_id"])


def _label(r: sqlite3.Row) -> Label:
    return Label(target_id=r["target_id"], candidate=r["candidate"], success=bool(r["success"]), reason=r["reason"],
                 source=r["source"], created_at=r["created_at"], kind=r["kind"])
