"""The SQLite side of `TraceStore`: one file, its connections, its write lock, and the SQL that differs.

WAL journal (readers never block the writer, a crash loses no committed episode), one transaction per
batch of episodes. Writes share one connection (the caller holds the store's lock); every read opens a
connection of its own, so a long read never holds the writer's lock. `postgres.py` is the other side;
both answer the same calls, so `TraceStore` writes its SQL once.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import time
import urllib.parse
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, TypeVar

try:
    import fcntl
except ImportError:  # Windows: SQLite's own busy handler alone
    fcntl = None  # type: ignore[assignment]

from fcagent.core.errors import StoreError, UserError

__all__ = ["SQLiteDB", "check_store_file", "SQLITE_MAGIC"]

SQLITE_MAGIC = b"SQLite format 3\x00"
T = TypeVar("T")


class SQLiteDB:
    """An fcagent store in one SQLite file."""

    errors: tuple[type[BaseException], ...] = (sqlite3.Error,)

    def __init__(self, path: Path, *, timeout: float, read_only: bool):
        self.path = path
        self.location = str(path)
        self.name = path.name
        self.key = os.path.realpath(path)  # the stores of this process on one file share writer queues
        self.timeout = timeout
        self.read_only = read_only
        if path.is_dir():
            raise UserError(f"`store` must be a file path, {path} is a folder")
        if read_only:
            check_store_file(path)
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
        self._writer_fd: tuple[int, int] | None = None  # (pid, fd) of the writer-queue lock file
        self._read_uri: str | None = None  # read-only: the URI that opened the file (`mode=ro`, or `immutable`)
        try:
            self.conn = self._connect_read_only() if read_only else \
                sqlite3.connect(path, timeout=timeout, check_same_thread=False, isolation_level=None)
        except sqlite3.DatabaseError as exc:
            raise StoreError(f"{path} is not a readable fcagent store: {exc}") from exc

    def prepare(self) -> None:
        """Settings of a writable store's connection (after the schema check: a newer store stays untouched)."""
        self.conn.execute("PRAGMA journal_mode=WAL")
        self.conn.execute("PRAGMA synchronous=NORMAL")
        self.conn.execute(f"PRAGMA busy_timeout={int(self.timeout * 1000)}")

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

    # --- schema --------------------------------------------------------------------------------

    def applied(self) -> set[str] | None:
        """The names of the migrations applied, or None when the file has no fcagent tables."""
        exists = self.conn.execute("SELECT 1 FROM sqlite_master WHERE type='table' AND name='_migrations'").fetchone()
        return {r[0] for r in self.conn.execute("SELECT name FROM _migrations")} if exists else None

    def migrate(self, migrations: list[tuple[str, str]]) -> None:
        self.conn.execute("CREATE TABLE IF NOT EXISTS _migrations (name TEXT PRIMARY KEY, applied_at REAL)")
        applied = self.applied() or set()
        for name, sql in migrations:
            if name in applied:
                continue
            self.conn.execute("BEGIN IMMEDIATE")
            try:
                # Another process may have migrated between our read and taking the lock.
                if not self.conn.execute("SELECT 1 FROM _migrations WHERE name=?", (name,)).fetchone():
                    for statement in sql.split(";"):
                        if statement.strip():
                            self.conn.execute(statement)
                    self.conn.execute("INSERT INTO _migrations VALUES (?, ?)", (name, time.time()))
                self.conn.execute("COMMIT")
            except BaseException:
                self._rollback()
                raise

    # --- writing (the caller holds the store's lock) -------------------------------------------

    def write(self, work: Callable[[], T]) -> T:
        """Run `work` (its `execute`s and `executemany`s) in one transaction: all of it or none."""
        with self._writer_queue():
            self.conn.execute("BEGIN IMMEDIATE")
            try:
                out = work()
                self.conn.execute("COMMIT")
            except BaseException:
                self._rollback()
                raise
        return out

    def execute(self, sql: str, params: Any = ()) -> sqlite3.Cursor:
        return self.conn.execute(sql, params)

    def executemany(self, sql: str, rows: list[Any]) -> None:
        if rows:
            self.conn.executemany(sql, rows)

    def _rollback(self) -> None:
        # SQLite may have rolled back already (a failed COMMIT on a full disk): a second ROLLBACK would
        # raise "no transaction is active" and hide the real error.
        if self.conn.in_transaction:
            with contextlib.suppress(sqlite3.Error):
                self.conn.execute("ROLLBACK")

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

    # --- reading -------------------------------------------------------------------------------

    def query(self, sql: str, params: Any = (), *, batch: int = 500, stream: bool = False
              ) -> Iterator[Mapping[str, Any]]:
        # A connection of its own per query, fetched in batches: memory stays flat with store size,
        # and a long read never holds the writer's lock (so `stream` changes nothing here).
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

    # --- the SQL that differs between the backends -----------------------------------------------

    @staticmethod
    def insert(table: str, columns: tuple[str, ...], *, replace: bool = False) -> str:
        """An insert of named columns from a dict row; a row already there (by any unique key) is kept,
        or with `replace`, replaced."""
        verb = "INSERT OR REPLACE" if replace else "INSERT OR IGNORE"
        return f"{verb} INTO {table} ({', '.join(columns)}) VALUES ({', '.join(':' + c for c in columns)})"

    @staticmethod
    def json_text(column: str, key: str) -> str:
        """The text value of a top-level key of a JSON-encoded TEXT column."""
        return f"json_extract({column}, '$.{key}')"

    @staticmethod
    def labels_json(target: str) -> str:
        """A JSON list of the labels on `target`, oldest first ('[]' when none)."""
        return ("(SELECT json_group_array(json_object('candidate', l.candidate, 'success', l.success, "
                "'reason', l.reason, 'source', l.source, 'kind', l.kind)) "
                f"FROM (SELECT * FROM labels WHERE target_id = {target} ORDER BY id) l)")

    def close(self) -> None:
        self.conn.close()
        if self._writer_fd is not None and self._writer_fd[0] == os.getpid():
            os.close(self._writer_fd[1])
        self._writer_fd = None


def check_store_file(path: Path) -> None:
    """An existing SQLite file, for a reader: a missing, empty or other file is named, never turned into a store."""
    if not path.exists():
        raise UserError(f"`--store` {path} does not exist; record or harvest into it first")
    if path.stat().st_size == 0:
        raise StoreError(f"{path} is an empty file, not a trace store; nothing was written to it")
    with path.open("rb") as f:
        if f.read(16) != SQLITE_MAGIC:
            raise StoreError(f"{path} is not an SQLite trace store (a JSONL export? `fcagent traces import {path}` "
                             "adds one to a store)")
