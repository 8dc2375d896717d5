"""A small base for the SQLite files a party keeps in its data folder."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Self


class SqliteStore:
    """One SQLite file, shared safely between threads; a context manager.

    Args:
        path: the database file (its folder is created).
        schema: statements run once at opening (``CREATE TABLE IF NOT EXISTS ...``).
        timeout: seconds to wait for another process's lock.
    """

    def __init__(self, path: Path, schema: Iterable[str], *, timeout: float = 10.0) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._conn = sqlite3.connect(path, check_same_thread=False, timeout=timeout)
        with self._transaction() as conn:
            for statement in schema:
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
        """The connection, under the lock, committed on success and rolled back on error."""
        with self._lock, self._conn:
            yield self._conn
