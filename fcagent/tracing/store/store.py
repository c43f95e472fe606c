"""`TraceStore`: the trace store, one SQLite file or a PostgreSQL database.

`TraceStore("traces.db")` keeps everything in one SQLite file (`sqlite.py`); `TraceStore("postgresql://
user@host:5432/db")` in a PostgreSQL server's database (`postgres.py`), for many machines writing into
one store. Both hold the same schema, made by one list of named migrations (`schema.py`), and answer
the same queries, written once here. A store written by a newer fcagent is refused with its version,
untouched. Episodes recorders queue are written by the store's writer thread (`writer.py`), the ones
that arrive together in one transaction; every read waits for what this process queued on the same
store first.

Why this is one module over ~450 lines: `TraceStore` is one class whose writes and reads share one
connection, its locks and its writer queue; its schema, rows, writer thread and the two databases'
connections are modules of their own.
"""

from __future__ import annotations

import json
import os
import threading
import time
import weakref
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from itertools import islice
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from fcagent.core import keys
from fcagent.core.errors import StoreError, StoreWriteError, UserError
from fcagent.core.files import write_jsonl_atomic
from fcagent.core.records import Episode, EpisodeTrace, Label
from fcagent.tracing.store.postgres import URL_PREFIXES, PostgresDB, is_postgres_url
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
)
from fcagent.tracing.store.sqlite import SQLITE_MAGIC, SQLiteDB
from fcagent.tracing.store.writer import QUEUED_ON, EpisodeWriter, QueuedEpisode

__all__ = ["TraceStore", "DEFAULT_STORE", "open_store", "is_postgres_url"]

DEFAULT_STORE = "fcagent-traces.db"
# The columns a `CallRow` is made of, named as its fields.
_CALL_COLUMNS = ("c.id, c.episode_id, c.context_hash, c.protocol, c.messages AS inline_messages, c.message_hashes, "
                 "c.tools, c.candidates, c.prompt, e.task, e.problem_id, e.split, e.request_key")


class TraceStore:
    """Episodes, candidate completions, tool runs and labels in one SQLite file or a PostgreSQL database."""

    def __init__(self, path: str | os.PathLike[str] = DEFAULT_STORE, *, timeout: float = 60.0,
                 read_only: bool = False):
        """`path`: an SQLite file, or a PostgreSQL server's database as a URL string,
        `postgresql://user@host:5432/dbname` (libpq's URL: `?sslmode=require`, `PGPASSWORD` and
        `~/.pgpass` work as in psql). `timeout`: seconds a write waits for another writer's lock before it
        fails (and is reported). `read_only`: open an existing store for reading only: nothing is created
        or migrated, and an SQLite file reads on a read-only file system too (what listing and exporting
        commands open)."""
        if not isinstance(path, str) and str(path).startswith(tuple(p[:-1] for p in URL_PREFIXES)):
            # Path() has already merged the URL's `//`: what is left is no longer the URL that was meant.
            raise UserError(f"`store` {path} looks like a PostgreSQL URL made into a file path: pass the URL as a "
                            "string, `TraceStore('postgresql://user@host:5432/db')`")
        self.timeout = timeout
        self.read_only = read_only
        self._db: SQLiteDB | PostgresDB = PostgresDB(path, timeout=timeout, read_only=read_only) \
            if is_postgres_url(path) else SQLiteDB(Path(path), timeout=timeout, read_only=read_only)
        self.path: Path | None = self._db.path  # the SQLite file; None for a server's database
        self.location = self._db.location  # how messages name the store (a URL without its password)
        self.name = self._db.name  # a file's name, or the URL
        self._lock = threading.RLock()  # the writing connection is shared by this store's threads
        self._writer: EpisodeWriter | None = None  # started by the first `write_episode_soon`
        # Guards `_writer` only: queueing an episode must not wait for the connection's lock, which the
        # writer thread holds through each transaction.
        self._writer_lock = threading.Lock()
        self._key = self._db.key  # the stores of this process on one file (or database) share queues
        try:
            self._refuse_newer_schema()  # before anything writes: a newer store is left exactly as it was
            if read_only:
                self._refuse_unmigrated()
            else:
                self._db.prepare()
                with self._lock:
                    self._db.migrate(MIGRATIONS)
        except self._db.errors as exc:
            self._db.close()
            raise StoreError(f"{self.location} is not a readable fcagent store: {exc}") from exc
        except StoreError:
            self._db.close()
            raise
        self._sql = {  # the inserts, in the backend's words
            (table, replace): self._db.insert(table, columns, replace=replace)
            for table, columns in (("episodes", EPISODE_COLUMNS), ("completions", COMPLETION_COLUMNS),
                                   ("tool_runs", TOOL_RUN_COLUMNS), ("labels", LABEL_COLUMNS),
                                   ("message_blobs", ("hash", "body")))
            for replace in (False, True)}

    @property
    def backend(self) -> str:
        """`sqlite` or `postgresql`."""
        return "postgresql" if isinstance(self._db, PostgresDB) else "sqlite"

    def _refuse_unmigrated(self) -> None:
        applied = self._db.applied()
        if applied is None:
            raise StoreError(f"{self.location} is not an fcagent trace store (it has no fcagent tables)")
        if any(name not in applied for name, _ in MIGRATIONS):
            raise StoreError(f"{self.location} has schema version {len(applied)} and must be migrated to "
                             f"{SCHEMA_VERSION} before it can be read: open it once with a command that writes "
                             "(e.g. `fcagent traces label`), where the store is writable")

    def _refuse_writes(self) -> None:
        if self.read_only:
            raise StoreError(f"{self.location} was opened read-only; open it without `read_only` to write")

    # --- schema --------------------------------------------------------------------------------

    def _refuse_newer_schema(self) -> None:
        applied = self._db.applied()
        newer = sorted((applied or set()) - {name for name, _ in MIGRATIONS})
        if newer:
            raise StoreError(f"{self.location} has schema version {len(applied or ())} (migrations {', '.join(newer)} "
                             f"are unknown here); this fcagent reads version {SCHEMA_VERSION}. Upgrade fcagent; "
                             "the store was not changed.")

    @property
    def schema_version(self) -> int:
        return next(self._query("SELECT COUNT(*) AS n FROM _migrations"))["n"]

    def close(self) -> None:
        self.flush()
        with self._writer_lock:
            writer, self._writer = self._writer, None
        if writer is not None and writer.pid == os.getpid() and writer.thread.is_alive():
            writer.stop()
        with self._lock:
            self._db.close()

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
        return self.write_rows([trace_rows(trace) for trace in traces], replace=replace)

    def write_rows(self, rows: list[TraceRows], *, replace: bool | list[bool] = False) -> list[bool]:
        """`write_episodes` of episodes as rows: `trace_rows(trace)`, or another store's `episode_rows()`
        (a copy, column for column)."""
        self._refuse_writes()
        replaces = replace if isinstance(replace, list) else [replace] * len(rows)
        if len(replaces) != len(rows):
            raise UserError(f"`replace` has {len(replaces)} flags for {len(rows)} episodes")
        with self._lock:
            return self._db.write(lambda: self._insert_all(rows, replaces))

    def _insert_all(self, rows: list[TraceRows], replaces: list[bool]) -> list[bool]:
        # Every writer takes its rows in one order (episodes by id, then messages by hash), so writers
        # that meet on the same rows (a shared system prompt, one episode imported twice) wait for each
        # other instead of deadlocking (on PostgreSQL, where writers run side by side).
        order = sorted(range(len(rows)), key=lambda i: rows[i].episode["id"])
        stored = [False] * len(rows)
        for i in order:
            stored[i] = self._insert(rows[i], replaces[i])
        new = [i for i in order if stored[i]]
        blobs = {b["hash"]: b for i in new for b in rows[i].blobs}
        self._db.executemany(self._sql["message_blobs", False], [blobs[h] for h in sorted(blobs)])
        for again in (False, True):
            mine = [rows[i] for i in new if replaces[i] == again]
            self._db.executemany(self._sql["completions", again], [c for r in mine for c in r.completions])
            self._db.executemany(self._sql["tool_runs", again], [t for r in mine for t in r.tool_runs])
        self._db.executemany(self._sql["labels", False], [lb for i in new for lb in rows[i].labels])
        return stored

    def _insert(self, rows: TraceRows, replace: bool) -> bool:
        """The episode's own row; True if it is new (the rest of its rows follow, for the whole batch)."""
        if self._db.execute(self._sql["episodes", replace], rows.episode).rowcount:
            return True
        # The id is known: merge its labels. Else its dedupe key was (another harvest stored this
        # problem first): nothing of it is written.
        if self._db.execute("SELECT 1 FROM episodes WHERE id=?", (rows.episode["id"],)).fetchone():
            self._db.executemany(self._sql["labels", False], rows.labels)
        return False

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
                QUEUED_ON.setdefault(self._key, weakref.WeakSet()).add(self)
            self._writer.queue.put(QueuedEpisode(episode_id, build, replace, done))

    def flush(self) -> None:
        """Wait until every episode queued on this store is written (or its failure reported)."""
        writer = self._writer
        if writer is not None and writer.pid == os.getpid() and threading.get_ident() != writer.ident:
            with writer.hurried():
                writer.queue.join()

    def _settle(self) -> None:
        # Every store of this process on this file: a read sees what was queued before it.
        for store in list(QUEUED_ON.get(self._key, ())):
            store.flush()

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
        with self._lock:
            self._db.write(lambda: self._db.executemany(self._sql["labels", False], rows))
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
            # A range scan on the primary key: fast whatever the store's size (ids compare byte by byte
            # on both backends).
            matches += [r["id"] for r in self._query(f"SELECT id FROM {table} WHERE id >= ? AND id < ? LIMIT 6",
                                                     (prefix, prefix + "\U0010ffff"))]
        if prefix in matches:
            return prefix
        if len(matches) == 1:
            return matches[0]
        if not matches:
            raise UserError(f"no episode or completion with id {prefix!r} in {self.location} "
                            "(`fcagent traces ls` lists them)")
        raise UserError(f"id prefix {prefix!r} matches several ids in {self.location} "
                        f"({', '.join(m[:13] + '…' for m in matches[:5])}); give more of it")

    # --- reading -------------------------------------------------------------------------------

    def _query(self, sql: str, params: tuple = (), batch: int = 500, *, stream: bool = False
               ) -> Iterator[Mapping[str, Any]]:
        """Rows by column name. `stream`: a read over the whole store, fetched `batch` rows at a time
        (a server-side cursor on PostgreSQL; every SQLite read is fetched so)."""
        self._settle()
        yield from self._db.query(sql, params, batch=batch, stream=stream)

    def episodes(self, *, task: str | None = None, status: str | None = None) -> Iterator[Episode]:
        where, params = _filters(task=task, status=status)
        for row in self._query(f"SELECT * FROM episodes {where} ORDER BY started_at, id", params, stream=True):
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
            raise UserError(f"{full} is a model call, not an episode, in {self.location}")
        return self._trace(episode_of(rows[0]))

    def latest_episode_id(self) -> str | None:
        rows = list(self._query("SELECT id FROM episodes ORDER BY started_at DESC, id DESC LIMIT 1"))
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

    def episode_rows(self, batch: int = 200) -> Iterator[list[TraceRows]]:
        """Every episode's rows as stored (encoded columns untouched: a copy is exact), `batch` episodes at a
        time in start order, streamed: what `write_rows` of another store takes."""
        episodes = self._query("SELECT * FROM episodes ORDER BY started_at, id", stream=True)
        while chunk := list(islice(episodes, batch)):
            ids = [e["id"] for e in chunk]
            comps = list(self._present_rows("completions", "episode_id", ids))
            tools = list(self._present_rows("tool_runs", "episode_id", ids))
            owner = {c["id"]: c["episode_id"] for c in comps} | {i: i for i in ids}
            labels = list(self._present_rows("labels", "target_id", list(owner)))
            hashes = sorted({h for c in comps if c["message_hashes"] for h in json.loads(c["message_hashes"])})
            bodies = {b["hash"]: b["body"] for b in self._present_rows("message_blobs", "hash", hashes)}
            out = {i: TraceRows(episode={}, completions=[], tool_runs=[], labels=[], blobs=[]) for i in ids}
            for e in chunk:
                out[e["id"]].episode = {k: e[k] for k in EPISODE_COLUMNS}
            for c in sorted(comps, key=lambda c: c["seq"]):
                out[c["episode_id"]].completions.append({k: c[k] for k in COMPLETION_COLUMNS})
                out[c["episode_id"]].blobs += [{"hash": h, "body": bodies[h]}
                                               for h in json.loads(c["message_hashes"] or "[]")]
            for t in sorted(tools, key=lambda t: t["seq"]):
                out[t["episode_id"]].tool_runs.append({k: t[k] for k in TOOL_RUN_COLUMNS})
            for lb in sorted(labels, key=lambda lb: lb["id"]):  # oldest first: the newest label stays the newest
                out[owner[lb["target_id"]]].labels.append({k: lb[k] for k in LABEL_COLUMNS})
            yield [out[i] for i in ids]

    def missing(self, rows: list[TraceRows]) -> list[str]:
        """What of these episodes' rows this store lacks: an episode, call or tool run, or a label (by its
        unique key). A copy checks each batch so, in a few queries for the whole batch."""
        out = []
        for table, ids in (("episodes", [r.episode["id"] for r in rows]),
                           ("completions", [c["id"] for r in rows for c in r.completions]),
                           ("tool_runs", [t["id"] for r in rows for t in r.tool_runs])):
            have = self.present_ids(table, ids)
            out += [f"{table[:-1]} {i}" for i in ids if i not in have]

        def key(lb: Mapping[str, Any]) -> tuple:
            return lb["target_id"], lb["candidate"], lb["source"], lb["reason"], bool(lb["success"])

        wanted = [lb for r in rows for lb in r.labels]
        have_labels = {key(lb) for lb in self._present_rows("labels", "target_id", sorted({lb["target_id"]
                                                                                        for lb in wanted}))}
        out += [f"label {lb['source']}:{'good' if lb['success'] else 'bad'} on {lb['target_id']}" for lb in wanted
                if key(lb) not in have_labels]
        return out

    def present_ids(self, table: str, ids: list[str]) -> set[str]:
        """Which of `ids` this store holds in `table` (episodes, completions or tool_runs)."""
        if table not in ("episodes", "completions", "tool_runs"):
            raise UserError(f"`table` must be episodes, completions or tool_runs, got {table!r}")
        return {r["id"] for r in self._present_rows(table, "id", ids)}

    def _present_rows(self, table: str, column: str, values: list[str]) -> Iterator[Mapping[str, Any]]:
        for start in range(0, len(values), 500):
            chunk = tuple(values[start:start + 500])
            yield from self._query(f"SELECT * FROM {table} WHERE {column} IN ({_marks(len(chunk))})", chunk)

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
        # (e.id breaks ties of episodes started at one time, so every backend gives one order)
        yield from self._calls(task, order="c.context_hash, e.started_at, e.id, c.seq")

    def calls_by_episode(self, *, task: str | None = None) -> Iterator[CallRow]:
        """The same rows as `calls_by_context`, episode by episode, each episode's calls in order."""
        yield from self._calls(task, order="e.started_at, e.id, c.seq")

    def _calls(self, task: str | None, *, order: str) -> Iterator[CallRow]:
        where, params = ("AND e.task = ?", (task,)) if task else ("", ())
        sql = f"""
            SELECT {_CALL_COLUMNS}, {self._db.json_text("e.metadata", keys.ROLE)} AS role,
                   c.seq = (SELECT MAX(c2.seq) FROM completions c2 WHERE c2.episode_id = c.episode_id) AS is_last,
                   (SELECT l.success FROM labels l WHERE l.target_id = e.id ORDER BY l.id DESC LIMIT 1)
                       AS episode_success,
                   {self._db.labels_json("c.id")} AS labels
            FROM completions c JOIN episodes e ON e.id = c.episode_id
            WHERE e.status = 'complete' {where}
            ORDER BY {order}"""
        for r in self._query(sql, params, stream=True):
            yield CallRow.of(r)

    def good_teacher_calls(self, *, task: str | None = None) -> list[CallRow]:
        """Model calls of non-student episodes labelled good, outside the test split, in episode order:
        the contexts `fcagent replay` gives the student."""
        where, params = ("AND e.task = ?", (task,)) if task else ("", ())
        return [CallRow.of(r) for r in self._query(f"""
            SELECT {_CALL_COLUMNS}
            FROM completions c JOIN episodes e ON e.id = c.episode_id
            WHERE e.status = 'complete'
              AND COALESCE({self._db.json_text("e.metadata", keys.ROLE)}, '') NOT IN {keys.sql_list(keys.STUDENT_ROLES)}
              AND (SELECT l.success FROM labels l WHERE l.target_id = e.id ORDER BY l.id DESC LIMIT 1) = 1
              AND COALESCE(e.split, '') != 'test' {where}
            ORDER BY e.started_at, e.id, c.seq""", params, stream=True)]

    def contexts_answered_by(self, model: str, role: str) -> set[str]:
        """Context hashes of the calls `model` made in episodes of `role` (what replay skips)."""
        return {r["context_hash"] for r in self._query(
            f"SELECT c.context_hash FROM completions c JOIN episodes e ON e.id = c.episode_id "
            f"WHERE {self._db.json_text('e.metadata', keys.ROLE)} = ? AND e.model = ?", (role, model), stream=True)}

    def labels(self, target_id: str) -> list[Label]:
        return [label_of(r) for r in self._query("SELECT * FROM labels WHERE target_id=? ORDER BY id", (target_id,))]

    def completed_problems(self, *, task: str | None = None, model: str | None = None) -> set[str]:
        """Problem ids with a complete episode (what `harvest --resume` skips)."""
        where, params = _filters(task=task, status="complete", model=model)
        return {r["problem_id"] for r in self._query(f"SELECT problem_id FROM episodes {where}", params, stream=True)
                if r["problem_id"]}

    def count(self, table: str = "episodes") -> int:
        if table not in ("episodes", "completions", "tool_runs", "labels"):
            raise UserError(f"`table` must be episodes, completions, tool_runs or labels, got {table!r}")
        return next(self._query(f"SELECT COUNT(*) AS n FROM {table}"))["n"]

    def stats(self) -> dict[str, Any]:
        out: dict[str, Any] = {"store": self.location, "schema_version": self.schema_version}
        for table in ("episodes", "completions", "tool_runs", "labels"):
            out[table] = self.count(table)
        for key, col in (("episodes_by_task", "task"), ("episodes_by_model", "model"), ("episodes_by_status", "status")):
            out[key] = {r["k"] or "-": r["n"] for r in self._query(
                f"SELECT {col} AS k, COUNT(*) AS n FROM episodes GROUP BY {col} ORDER BY n DESC, COALESCE({col}, '')")}
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
                if f.read(16) == SQLITE_MAGIC:
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
            except (*self._db.errors, OSError) as exc:
                raise StoreWriteError(
                    trace.episode.id,
                    RuntimeError(f"{exc}; {done} of {len(traces)} episodes of {path} were imported before it "
                                 f"({added} new, {present} already present). Run the same import again once the "
                                 "cause is fixed: it skips what is there and adds the rest")) from exc
            added += stored
            present += not stored
        return added, present


def open_store(store: str | os.PathLike[str] | TraceStore) -> TraceStore:
    """A store given by its path or URL, or the store itself."""
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


