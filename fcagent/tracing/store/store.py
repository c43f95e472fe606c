"""`TraceStore`: the embedded trace store, one SQLite file.

WAL journal (readers never block the writer, a crash loses no committed episode), one transaction
per episode, schema changes as named migrations (`schema.py`). A store written by a newer fcagent
is refused with its version, untouched. Episodes recorders queue are written by the store's writer
thread (`writer.py`); every read waits for what this process queued on the same file first.

Why this is one module over ~450 lines: `TraceStore` is one class whose writes and reads share one
connection, its locks and its writer queue; its schema, rows and writer thread are modules of their own.
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import threading
import time
import urllib.parse
import weakref
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from pydantic import ValidationError

try:
    import fcntl
except ImportError:  # Windows: SQLite's own busy handler alone
    fcntl = None  # type: ignore[assignment]

from fcagent.core import keys
from fcagent.core.errors import StoreError, StoreWriteError, UserError
from fcagent.core.files import write_jsonl_atomic
from fcagent.core.records import Episode, EpisodeTrace, Label
from fcagent.tracing.store.rows import (
    CallRow,
    EpisodeSummary,
    TraceRows,
    completion_of,
    episode_of,
    label_of,
    label_row,
    tool_run_of,
    trace_rows,
)
from fcagent.tracing.store.schema import (
    COMPLETION_COLUMNS,
    EPISODE_COLUMNS,
    LABEL_COLUMNS,
    MIGRATIONS,
    SCHEMA_VERSION,
    TOOL_RUN_COLUMNS,
    insert_sql,
)
from fcagent.tracing.store.writer import QUEUED_ON, EpisodeWriter, QueuedEpisode

__all__ = ["TraceStore", "DEFAULT_STORE", "open_store"]

DEFAULT_STORE = "fcagent-traces.db"
_INSERT_LABEL = insert_sql("INSERT OR IGNORE", "labels", LABEL_COLUMNS)
# The columns a `CallRow` is made of, named as its fields.
_CALL_COLUMNS = ("c.id, c.episode_id, c.context_hash, c.protocol, c.messages AS inline_messages, c.message_hashes, "
                 "c.tools, c.candidates, c.prompt, e.task, e.problem_id, e.split, e.request_key")


class TraceStore:
    """Episodes, candidate completions, tool runs and labels in one SQLite file."""

    def __init__(self, path: str | os.PathLike[str] = DEFAULT_STORE, *, timeout: float = 60.0,
                 read_only: bool = False):
        """`timeout`: seconds a write waits for another writer's lock before it fails (and is reported).
        `read_only`: open an existing store for reading only: nothing is created or migrated, and it reads
        on a read-only file system too (what listing and exporting commands open)."""
        self.path = Path(path)
        self.timeout = timeout
        self.read_only = read_only
        if self.path.is_dir():
            raise UserError(f"`store` must be a file path, {self.path} is a folder")
        if read_only:
            _check_store_file(self.path)
        else:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.RLock()
        self._writer_fd: tuple[int, int] | None = None  # (pid, fd) of the writer-queue lock file
        self._writer: EpisodeWriter | None = None  # started by the first `write_episode_soon`
        # Guards `_writer` only: queueing an episode must not wait for the connection's lock, which the
        # writer thread holds through each transaction.
        self._writer_lock = threading.Lock()
        self._file_key = os.path.realpath(self.path)  # the stores of this process on one file share queues
        self._read_uri: str | None = None  # read-only: the URI that opened the file (`mode=ro`, or `immutable`)
        try:
            self._conn = self._connect_read_only() if read_only else \
                sqlite3.connect(self.path, timeout=timeout, check_same_thread=False, isolation_level=None)
        except sqlite3.DatabaseError as exc:
            raise StoreError(f"{self.path} is not a readable fcagent store: {exc}") from exc
        try:
            self._refuse_newer_schema()  # before anything writes: a newer store is left exactly as it was
            if read_only:
                self._refuse_unmigrated()
            else:
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

    def _connect_read_only(self) -> sqlite3.Connection:
        """A connection that never writes: `mode=ro`, or where even that cannot open the file (a read-only
        file system without the WAL's shared-memory file), `immutable=1`."""
        if self._read_uri is None:
            base = "file:" + urllib.parse.quote(os.path.abspath(self.path))
            for uri in (f"{base}?mode=ro", f"{base}?immutable=1"):
                try:
                    conn = sqlite3.connect(uri, uri=True, timeout=self.timeout, check_same_thread=False,
                                           isolation_level=None)
                    conn.execute("SELECT COUNT(*) FROM sqlite_master").fetchone()
                except sqlite3.OperationalError:
                    continue
                self._read_uri = uri
                return conn
            raise StoreError(f"{self.path} cannot be opened for reading")
        return sqlite3.connect(self._read_uri, uri=True, timeout=self.timeout, check_same_thread=False,
                               isolation_level=None)

    def _refuse_unmigrated(self) -> None:
        exists = self._conn.execute("SELECT 1 FROM sqlite_master WHERE type='table' AND name='_migrations'").fetchone()
        applied = {r[0] for r in self._conn.execute("SELECT name FROM _migrations")} if exists else set()
        missing = [name for name, _ in MIGRATIONS if name not in applied]
        if not exists:
            raise StoreError(f"{self.path} is not an fcagent trace store (it has no fcagent tables)")
        if missing:
            raise StoreError(f"{self.path} has schema version {len(applied)} and must be migrated to {SCHEMA_VERSION} "
                             "before it can be read: open it once with a command that writes (e.g. `fcagent traces "
                             "label`), where the file is writable")

    def _refuse_writes(self) -> None:
        if self.read_only:
            raise StoreError(f"{self.path} was opened read-only; open it without `read_only` to write")

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
        self._refuse_writes()
        rows = [trace_rows(trace) for trace in traces]
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

    def _insert(self, rows: TraceRows, replace: bool) -> bool:
        verb = "INSERT OR REPLACE" if replace else "INSERT OR IGNORE"
        cur = self._conn.execute(insert_sql(verb, "episodes", EPISODE_COLUMNS), rows.episode)
        if cur.rowcount == 0:
            # The id is known: merge its labels. Else its dedupe key was (another harvest stored
            # this problem first): nothing of it is written.
            if self._conn.execute("SELECT 1 FROM episodes WHERE id=?", (rows.episode["id"],)).fetchone():
                self._conn.executemany(_INSERT_LABEL, rows.labels)
            return False
        self._conn.executemany("INSERT OR IGNORE INTO message_blobs (hash, body) VALUES (:hash, :body)", rows.blobs)
        self._conn.executemany(insert_sql(verb, "completions", COMPLETION_COLUMNS), rows.completions)
        self._conn.executemany(insert_sql(verb, "tool_runs", TOOL_RUN_COLUMNS), rows.tool_runs)
        self._conn.executemany(_INSERT_LABEL, rows.labels)
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
                self._writer = EpisodeWriter(self)
                QUEUED_ON.setdefault(self._file_key, weakref.WeakSet()).add(self)
            self._writer.queue.put(QueuedEpisode(episode_id, build, replace, done))

    def flush(self) -> None:
        """Wait until every episode queued on this store is written (or its failure reported)."""
        writer = self._writer
        if writer is not None and writer.pid == os.getpid() and threading.get_ident() != writer.ident:
            with writer.hurried():
                writer.queue.join()

    def _settle(self) -> None:
        # Every store of this process on this file: a read sees what was queued before it.
        for store in list(QUEUED_ON.get(self._file_key, ())):
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
        self._refuse_writes()
        resolved = [lab.model_copy(update={"target_id": self.resolve_id(lab.target_id),
                                           "created_at": lab.created_at or time.time()}) for lab in labels]
        rows = [label_row(lab.model_dump()) for lab in resolved]
        with self._lock, self._writer_queue():
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                self._conn.executemany(_INSERT_LABEL, rows)
                self._conn.execute("COMMIT")
            except BaseException:
                self._rollback()
                raise
        return resolved

    def has_episode(self, episode_id: str) -> bool:
        """Whether an episode with exactly this id is stored (no prefix matching)."""
        return any(True for _ in self._query("SELECT 1 FROM episodes WHERE id=?", (episode_id,)))

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
        conn = self._connect_read_only() if self.read_only else \
            sqlite3.connect(self.path, timeout=self.timeout, check_same_thread=False)
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
            yield episode_of(row)

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
        return self._trace(episode_of(rows[0]))

    def latest_episode_id(self) -> str | None:
        rows = list(self._query("SELECT id FROM episodes ORDER BY started_at DESC LIMIT 1"))
        return rows[0]["id"] if rows else None

    def _messages(self, rows: list[Any]) -> list[list[dict[str, Any]]]:
        """The messages of completion rows (SQL rows with `messages` and `message_hashes`), one query for all."""
        return self._resolve([(r["message_hashes"], r["messages"]) for r in rows])

    def messages_of(self, rows: list[CallRow]) -> list[list[dict[str, Any]]]:
        """The messages of `CallRow`s, one query for all."""
        return self._resolve([(r.message_hashes, r.inline_messages) for r in rows])

    def _resolve(self, refs: list[tuple[str | None, str]]) -> list[list[dict[str, Any]]]:
        wanted = {h for hashes, _ in refs if hashes for h in json.loads(hashes)}
        bodies: dict[str, Any] = {}
        ordered = sorted(wanted)
        for start in range(0, len(ordered), 500):
            chunk = ordered[start:start + 500]
            bodies |= {b["hash"]: json.loads(b["body"]) for b in self._query(
                f"SELECT hash, body FROM message_blobs WHERE hash IN ({_marks(len(chunk))})", tuple(chunk))}
        return [[bodies[h] for h in json.loads(hashes)] if hashes else json.loads(inline) for hashes, inline in refs]

    def _trace(self, ep: Episode) -> EpisodeTrace:
        rows = list(self._query("SELECT * FROM completions WHERE episode_id=? ORDER BY seq", (ep.id,)))
        comps = [completion_of(r, m) for r, m in zip(rows, self._messages(rows))]
        tools = [tool_run_of(r) for r in self._query("SELECT * FROM tool_runs WHERE episode_id=? ORDER BY seq", (ep.id,))]
        ids = (ep.id, *(c.id for c in comps))
        labels = [label_of(r) for r in self._query(
            f"SELECT * FROM labels WHERE target_id IN ({_marks(len(ids))}) ORDER BY id", ids)]
        return EpisodeTrace(episode=ep, completions=comps, tool_runs=tools, labels=labels)

    def label_watermark(self) -> tuple[int, float | None]:
        """How many labels the store holds, and when the newest was written: what a training run saw."""
        row = next(self._query("SELECT COUNT(*) AS n, MAX(created_at) AS newest FROM labels"))
        return row["n"], row["newest"]

    def verdict_counts(self, *, unlabelled: str = "skip") -> dict[str, int]:
        """Complete episodes by their newest episode label (what the exporter's policy sees)."""
        names = {1: "labelled good", 0: "labelled bad",
                 None: "unlabelled (skipped)" if unlabelled == "skip" else "unlabelled (taken as good)"}
        return {names[r["v"]]: r["n"] for r in self._query(
            "SELECT (SELECT l.success FROM labels l WHERE l.target_id = e.id ORDER BY l.id DESC LIMIT 1) AS v, "
            "COUNT(*) AS n FROM episodes e WHERE e.status = 'complete' GROUP BY v")}

    def summaries(self, *, limit: int = 20, task: str | None = None) -> list[EpisodeSummary]:
        """The newest episodes for a listing: id, question (the first user message), verdict (the newest
        episode label), model, status, steps."""
        where, params = _filters(task=task)
        rows = list(self._query(
            f"SELECT e.*, (SELECT l.success FROM labels l WHERE l.target_id = e.id ORDER BY l.id DESC LIMIT 1) AS v, "
            f"(SELECT l.source FROM labels l WHERE l.target_id = e.id ORDER BY l.id DESC LIMIT 1) AS v_source, "
            f"(SELECT c.id FROM completions c WHERE c.episode_id = e.id ORDER BY c.seq LIMIT 1) AS first_call "
            f"FROM episodes e {where} ORDER BY e.started_at DESC, e.id DESC LIMIT ?", (*params, limit)))
        calls = {r["id"]: r for r in self._query(
            f"SELECT id, messages, message_hashes FROM completions WHERE id IN ({_marks(len(rows))})",
            tuple(r["first_call"] for r in rows))} if rows else {}
        firsts = dict(zip(calls, self._messages(list(calls.values()))))
        out = []
        for r in reversed(rows):
            messages = firsts.get(r["first_call"], [])
            question = next((m.get("content", "") for m in messages if m.get("role") == "user"), "")
            out.append(EpisodeSummary(id=r["id"], question=question, model=r["model"], status=r["status"],
                                      task=r["task"], problem_id=r["problem_id"],
                                      verdict=None if r["v"] is None else bool(r["v"]), verdict_source=r["v_source"],
                                      steps=json.loads(r["outputs"]).get("steps")))
        return out

    def calls_by_context(self, *, task: str | None = None) -> Iterator[CallRow]:
        """Every model call of a complete episode, ordered by context (then episode start, step), with
        what the exporter judges it by: its labels, its episode's newest label and role, and whether it
        is the episode's last call. Messages are left as references (`messages_of` resolves them)."""
        yield from self._calls(task, order="c.context_hash, e.started_at, c.seq")

    def calls_by_episode(self, *, task: str | None = None) -> Iterator[CallRow]:
        """The same rows as `calls_by_context`, episode by episode, each episode's calls in order."""
        yield from self._calls(task, order="e.started_at, e.id, c.seq")

    def _calls(self, task: str | None, *, order: str) -> Iterator[CallRow]:
        where, params = ("AND e.task = ?", (task,)) if task else ("", ())
        sql = f"""
            SELECT {_CALL_COLUMNS}, json_extract(e.metadata, '$.{keys.ROLE}') AS role,
                   c.seq = (SELECT MAX(c2.seq) FROM completions c2 WHERE c2.episode_id = c.episode_id) AS is_last,
                   (SELECT l.success FROM labels l WHERE l.target_id = e.id ORDER BY l.id DESC LIMIT 1)
                       AS episode_success,
                   (SELECT json_group_array(json_object('candidate', l.candidate, 'success', l.success,
                                                        'reason', l.reason, 'source', l.source, 'kind', l.kind))
                      FROM (SELECT * FROM labels WHERE target_id = c.id ORDER BY id) l) AS labels
            FROM completions c JOIN episodes e ON e.id = c.episode_id
            WHERE e.status = 'complete' {where}
            ORDER BY {order}"""
        for r in self._query(sql, params):
            yield CallRow.of(r)

    def good_teacher_calls(self, *, task: str | None = None) -> list[CallRow]:
        """Model calls of non-student episodes labelled good, outside the test split, in episode order:
        the contexts `fcagent replay` gives the student."""
        where, params = ("AND e.task = ?", (task,)) if task else ("", ())
        return [CallRow.of(r) for r in self._query(f"""
            SELECT {_CALL_COLUMNS}
            FROM completions c JOIN episodes e ON e.id = c.episode_id
            WHERE e.status = 'complete'
              AND COALESCE(json_extract(e.metadata, '$.{keys.ROLE}'), '') NOT IN {keys.sql_list(keys.STUDENT_ROLES)}
              AND (SELECT l.success FROM labels l WHERE l.target_id = e.id ORDER BY l.id DESC LIMIT 1) = 1
              AND COALESCE(e.split, '') != 'test' {where}
            ORDER BY e.started_at, c.seq""", params)]

    def contexts_answered_by(self, model: str, role: str) -> set[str]:
        """Context hashes of the calls `model` made in episodes of `role` (what replay skips)."""
        return {r["context_hash"] for r in self._query(
            f"SELECT c.context_hash FROM completions c JOIN episodes e ON e.id = c.episode_id "
            f"WHERE json_extract(e.metadata, '$.{keys.ROLE}') = ? AND e.model = ?", (role, model))}

    def labels(self, target_id: str) -> list[Label]:
        return [label_of(r) for r in self._query("SELECT * FROM labels WHERE target_id=? ORDER BY id", (target_id,))]

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
        added = present = 0
        for done, trace in enumerate(traces):
            try:
                stored = self.write_episode(trace)  # one transaction each: what was written stays written
            except (sqlite3.Error, OSError) as exc:
                raise StoreWriteError(
                    trace.episode.id,
                    RuntimeError(f"{exc}; {done} of {len(traces)} episodes of {path} were imported before it "
                                 f"({added} new, {present} already present). Run the same import again once the "
                                 "cause is fixed: it skips what is there and adds the rest")) from exc
            added += stored
            present += not stored
        return added, present


def _check_store_file(path: Path) -> None:
    """An existing SQLite file, for a reader: a missing, empty or other file is named, never turned into a store."""
    if not path.exists():
        raise UserError(f"`--store` {path} does not exist; record or harvest into it first")
    if path.stat().st_size == 0:
        raise StoreError(f"{path} is an empty file, not a trace store; nothing was written to it")
    with path.open("rb") as f:
        if f.read(16) != b"SQLite format 3\x00":
            raise StoreError(f"{path} is not an SQLite trace store (a JSONL export? `fcagent traces import {path}` "
                             "adds one to a store)")


def open_store(store: str | os.PathLike[str] | TraceStore) -> TraceStore:
    if isinstance(store, TraceStore):
        return store
    if isinstance(store, str | os.PathLike):
        return TraceStore(store)
    raise UserError(f"`store` must be a path or a TraceStore, got {type(store).__name__}")


def _marks(n: int) -> str:
    return ",".join("?" * n)


def _filters(**kw: Any) -> tuple[str, tuple]:
    parts, params = [], []
    for col, val in kw.items():
        if val is not None:
            parts.append(f"{col}=?")
            params.append(val)
    return ("WHERE " + " AND ".join(parts)) if parts else "", tuple(params)


