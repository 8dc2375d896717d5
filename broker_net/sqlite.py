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

    Other processes (an operator's CLI next to a running agent) may use the same file.

    Args:
        path: the database file (its folder is created).
        schema: statements run once at opening (``CREATE TABLE IF NOT EXISTS ...``).
        timeout: seconds to wait for another process's lock.
    """

    def __init__(self, path: Path, schema: Iterable[str], *, timeout: float = 10.0) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.RLock()
        self._depth = 0
        self._conn = sqlite3.connect(
            path, check_same_thread=False, timeout=timeout, isolation_level=None
        )
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute("PRAGMA synchronous=NORMAL")
        self._conn.execute("PRAGMA cache_size=-512")  # KiB: small, these files are small
        with self._transaction() as conn:
            for statement in schema:
                if statement.strip():
                    conn.execute(statement)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the database."""
        with self._lock:
            self._conn.close()

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        """The connection inside one write transaction (nested uses join the outer one),
        committed on success and rolled back on error."""
        with self._lock:
            if self._depth:
                self._depth += 1
                try:
                    yield self._conn
                finally:
                    self._depth -= 1
                return
            self._conn.execute("BEGIN IMMEDIATE")
            self._depth = 1
            try:
                yield self._conn
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            else:
                self._conn.execute("COMMIT")
            finally:
                self._depth = 0

    def _query(self, sql: str, args: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        with self._lock:
            return self._conn.execute(sql, args).fetchall()
