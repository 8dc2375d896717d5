"""A small base for the SQLite files a party keeps in its data folder."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Self


class SqliteStore:
    """One SQLite file in WAL mode, shared safely between threads; a context manager.

    The file is opened on first use, not when the store is made: a node agent has four of
    these, and one that never uses some of them (a node without datasets, an agent answering
    pings) keeps no file open for them; a SQLite file in WAL mode holds three descriptors
    (the database, its log and its shared memory), so a thousand agents in one process would
    otherwise need twelve thousand. :meth:`release_file` closes the file until its next use.

    Other processes (an operator's CLI next to a running agent) may use the same file.

    Args:
        path: the database file (its folder is created).
        schema: statements run once, at the first opening (``CREATE TABLE IF NOT EXISTS ...``).
        timeout: seconds to wait for another process's lock.
    """

    def __init__(self, path: Path, schema: Iterable[str], *, timeout: float = 10.0) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._path = path
        self._schema = [statement for statement in schema if statement.strip()]
        self._timeout = timeout
        self._lock = threading.RLock()
        self._depth = 0
        self._db: sqlite3.Connection | None = None
        self._prepared = False
        self._closed = False

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @property
    def is_open(self) -> bool:
        """True while the file is open (it opens on first use)."""
        return self._db is not None

    def file_exists(self) -> bool:
        """True when the database file exists (it is created on first use)."""
        return self._db is not None or self._path.exists()

    def close(self) -> None:
        """Close the database; it cannot be used afterwards."""
        with self._lock:
            self._closed = True
            if self._db is not None:
                self._db.close()
                self._db = None

    def release_file(self) -> None:
        """Close the file until its next use (outside a transaction; a no-op inside one)."""
        with self._lock:
            if self._db is not None and not self._depth:
                self._db.close()
                self._db = None

    def _prepare(self, conn: sqlite3.Connection) -> None:
        """Run once, in the transaction that creates the schema at the first opening."""

    @property
    def _conn(self) -> sqlite3.Connection:
        db = self._db
        return db if db is not None else self._open()

    def _open(self) -> sqlite3.Connection:
        with self._lock:
            if self._db is not None:
                return self._db
            if self._closed:
                raise sqlite3.ProgrammingError("Cannot operate on a closed database.")
            conn = sqlite3.connect(
                self._path, check_same_thread=False, timeout=self._timeout, isolation_level=None
            )
            try:
                conn.execute("PRAGMA journal_mode=WAL")
                conn.execute("PRAGMA synchronous=NORMAL")
                conn.execute("PRAGMA cache_size=-512")  # KiB: small, these files are small
                if not self._prepared:
                    conn.execute("BEGIN IMMEDIATE")
                    try:
                        for statement in self._schema:
                            conn.execute(statement)
                        self._prepare(conn)
                    except BaseException:
                        conn.execute("ROLLBACK")
                        raise
                    conn.execute("COMMIT")
                    self._prepared = True
            except BaseException:
                conn.close()
                raise
            self._db = conn
            return conn

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        """The connection inside one write transaction (nested uses join the outer one),
        committed on success and rolled back on error."""
        with self._lock:
            conn = self._conn
            if self._depth:
                self._depth += 1
                try:
                    yield conn
                finally:
                    self._depth -= 1
                return
            conn.execute("BEGIN IMMEDIATE")
            self._depth = 1
            try:
                yield conn
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            else:
                conn.execute("COMMIT")
            finally:
                self._depth = 0

    def _query(self, sql: str, args: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        with self._lock:
            return self._conn.execute(sql, args).fetchall()
