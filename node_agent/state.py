"""Persistent node state: what the node keeps between requests, under a state id.

A state is a set of named entries, each any value :func:`broker_net.codec.encode` accepts
(numpy arrays included). Small entries live in ``<data_dir>/state.sqlite``; entries whose
encoding exceeds :data:`INLINE_LIMIT` bytes go to a file under ``<data_dir>/state/`` that the
database points to. Everything survives a restart of the node.
"""

from __future__ import annotations

import os
import re
import shutil
import sqlite3
import uuid
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from broker_net.codec import decode, encode
from broker_net.sqlite import SqliteStore

INLINE_LIMIT = 64 * 1024
"""Entries whose encoding is longer than this many bytes are stored in files."""

_STATE_ID = re.compile(r"^state_[0-9a-f]{32}$")

_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS states (
        state_id TEXT PRIMARY KEY,
        created_at TEXT NOT NULL,
        updated_at TEXT NOT NULL
    )""",
    """CREATE TABLE IF NOT EXISTS entries (
        state_id TEXT NOT NULL REFERENCES states(state_id),
        key TEXT NOT NULL,
        blob BLOB,
        file TEXT,
        PRIMARY KEY (state_id, key)
    )""",
)


class StateNotFoundError(KeyError):
    """Raised when a state id, or an entry of a state, does not exist."""

    def __init__(self, state_id: str, key: str | None = None) -> None:
        super().__init__(state_id)
        self.state_id = state_id
        self.key = key

    def __str__(self) -> str:
        if self.key is None:
            return f"no node state with id {self.state_id!r}"
        return f"node state {self.state_id!r} has no entry {self.key!r}"


def _now() -> str:
    return datetime.now(UTC).isoformat()


class NodeStateStore(SqliteStore):
    """States of one node, in ``<data_dir>/state.sqlite`` and ``<data_dir>/state/``.

    Safe to share between threads. Use it as a context manager, or call :meth:`close`.
    """

    def __init__(self, data_dir: Path) -> None:
        self._folder = data_dir / "state"
        self._folder.mkdir(parents=True, exist_ok=True)
        super().__init__(data_dir / "state.sqlite", _SCHEMA)

    def new_state_id(self) -> str:
        """Create an empty state and return its id, ``state_<hex>``."""
        state_id = f"state_{uuid.uuid4().hex}"
        now = _now()
        with self._transaction() as conn:
            conn.execute("INSERT INTO states VALUES (?, ?, ?)", (state_id, now, now))
        return state_id

    def create(self, state_id: str) -> None:
        """Create an empty state under ``state_id`` (``state_<32 hex>``) unless it exists.

        Raises:
            ValueError: ``state_id`` is not a state id.
        """
        if not _STATE_ID.match(state_id):
            raise ValueError(f"not a state id: {state_id!r}")
        now = _now()
        with self._transaction() as conn:
            conn.execute("INSERT OR IGNORE INTO states VALUES (?, ?, ?)", (state_id, now, now))

    def exists(self, state_id: str) -> bool:
        """Whether a state has id ``state_id``."""
        with self._transaction() as conn:
            row = conn.execute("SELECT 1 FROM states WHERE state_id = ?", (state_id,)).fetchone()
        return row is not None

    def list(self) -> list[str]:
        """Ids of every state, oldest first."""
        with self._transaction() as conn:
            rows = conn.execute("SELECT state_id FROM states ORDER BY created_at").fetchall()
        return [state_id for (state_id,) in rows]

    def save(self, state_id: str, entries: Mapping[str, Any]) -> None:
        """Store ``entries`` in the state, replacing entries of the same names.

        Raises:
            StateNotFoundError: no state has that id.
            CodecError: a value cannot be encoded.
        """
        if not _STATE_ID.match(state_id) or not self.exists(state_id):
            raise StateNotFoundError(state_id)
        encoded = {key: encode(value) for key, value in entries.items()}
        written: dict[str, str] = {}
        for key, data in encoded.items():
            if len(data) > INLINE_LIMIT:
                written[key] = self._write_file(state_id, data)
        replaced: list[str] = []
        try:
            with self._transaction() as conn:
                if not _state_exists(conn, state_id):
                    raise StateNotFoundError(state_id)
                for key, data in encoded.items():
                    old = conn.execute(
                        "SELECT file FROM entries WHERE state_id = ? AND key = ?", (state_id, key)
                    ).fetchone()
                    if old is not None and old[0] is not None:
                        replaced.append(old[0])
                    file = written.get(key)
                    conn.execute(
                        "INSERT OR REPLACE INTO entries VALUES (?, ?, ?, ?)",
                        (state_id, key, None if file else data, file),
                    )
                conn.execute(
                    "UPDATE states SET updated_at = ? WHERE state_id = ?", (_now(), state_id)
                )
        except BaseException:
            for file in written.values():
                (self._folder / file).unlink(missing_ok=True)
            raise
        for file in replaced:
            (self._folder / file).unlink(missing_ok=True)

    def load(self, state_id: str) -> dict[str, Any]:
        """Return every entry of the state.

        Raises:
            StateNotFoundError: no state has that id.
            DecodeError: an entry's bytes are corrupt.
        """
        with self._transaction() as conn:
            if not _state_exists(conn, state_id):
                raise StateNotFoundError(state_id)
            rows = conn.execute(
                "SELECT key, blob, file FROM entries WHERE state_id = ?", (state_id,)
            ).fetchall()
        return {key: self._decode(blob, file) for key, blob, file in rows}

    def load_entry(self, state_id: str, key: str) -> Any:
        """Return the entry ``key`` of the state.

        Raises:
            StateNotFoundError: no state has that id, or it has no such entry.
        """
        with self._transaction() as conn:
            row = conn.execute(
                "SELECT blob, file FROM entries WHERE state_id = ? AND key = ?", (state_id, key)
            ).fetchone()
            if row is None:
                raise StateNotFoundError(state_id, key if _state_exists(conn, state_id) else None)
        return self._decode(*row)

    def delete(self, state_id: str) -> None:
        """Delete the state and its files.

        Raises:
            StateNotFoundError: no state has that id.
        """
        with self._transaction() as conn:
            if not _state_exists(conn, state_id):
                raise StateNotFoundError(state_id)
            conn.execute("DELETE FROM entries WHERE state_id = ?", (state_id,))
            conn.execute("DELETE FROM states WHERE state_id = ?", (state_id,))
        shutil.rmtree(self._folder / state_id, ignore_errors=True)

    def _write_file(self, state_id: str, data: bytes) -> str:
        folder = self._folder / state_id
        folder.mkdir(exist_ok=True)
        name = f"{state_id}/{uuid.uuid4().hex}.mpk"
        partial = self._folder / f"{name}.partial"
        with partial.open("wb") as stream:
            stream.write(data)
            stream.flush()
            os.fsync(stream.fileno())
        partial.replace(self._folder / name)
        return name

    def _decode(self, blob: bytes | None, file: str | None) -> Any:
        if file is not None:
            return decode((self._folder / file).read_bytes())
        assert blob is not None
        return decode(blob)


def _state_exists(conn: sqlite3.Connection, state_id: str) -> bool:
    row = conn.execute("SELECT 1 FROM states WHERE state_id = ?", (state_id,)).fetchone()
    return row is not None
