"""The node's memory of the replies it sent, so a redelivered request is answered again
without being run again.

Recent replies are kept in memory; replies to heavy requests (training, analytics,
preprocessing, plan approval) are also written to the data folder, so they survive an agent
restart: small ones as rows of an SQLite file, large ones (from :data:`FILE_BODY_SIZE` bytes)
each in a file of its own beside it, written straight from the buffers the reply was sent
from (never joined into one object, never copied through SQLite's pages and log).
"""

from __future__ import annotations

import hashlib
import os
import sqlite3
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

from broker_net.sqlite import SqliteStore
from broker_net.transport import Body, body_size, joined_body

FILE_BODY_SIZE = 1024**2
"""Persisted replies of this many bytes or more are kept in files of their own."""
ORPHAN_AGE = 3600.0
"""Seconds after which a body file that no row names is removed when the store opens."""


@dataclass(frozen=True, slots=True)
class StoredReply:
    """A sealed reply and where it went."""

    body: Body
    """The sealed envelope: bytes, or the buffers it was sent from."""
    reply_to: str
    message_type: str
    message_id: str


class ReplyStore(SqliteStore):
    """Sealed replies by request id.

    Args:
        path: the SQLite file for persisted replies.
        memory_limit: total bytes of light replies kept in memory.
        memory_entries: most light replies kept in memory.
        keep_seconds: how long persisted replies are kept.
    """

    def __init__(
        self,
        path: Path,
        *,
        memory_limit: int = 16 * 1024**2,
        memory_entries: int = 4096,
        keep_seconds: float = 7 * 86400,
    ) -> None:
        self._recent: OrderedDict[str, StoredReply] = OrderedDict()
        self._recent_bytes = 0
        self._memory_limit = memory_limit
        self._memory_entries = memory_entries
        self._keep_seconds = keep_seconds
        self._files = path.parent / f"{path.stem}-bodies"
        super().__init__(
            path,
            [
                "CREATE TABLE IF NOT EXISTS replies (request_id TEXT PRIMARY KEY, reply_to TEXT, "
                "message_type TEXT, message_id TEXT, body BLOB, stored_at REAL, body_file TEXT)"
            ],
        )

    def _prepare(self, conn: sqlite3.Connection) -> None:
        columns = {row[1] for row in conn.execute("PRAGMA table_info(replies)")}
        if "body_file" not in columns:  # a file written before large bodies had files
            conn.execute("ALTER TABLE replies ADD COLUMN body_file TEXT")
        # Replies past their keeping time go when the file is first opened.
        expired = time.time() - self._keep_seconds
        for (name,) in conn.execute(
            "SELECT body_file FROM replies WHERE stored_at < ? AND body_file IS NOT NULL",
            (expired,),
        ).fetchall():
            (self._files / name).unlink(missing_ok=True)
        conn.execute("DELETE FROM replies WHERE stored_at < ?", (expired,))
        self._remove_orphans(conn)

    def _remove_orphans(self, conn: sqlite3.Connection) -> None:
        """Remove body files no row names (a crash between a file and its row, or a partial
        file): only those an hour old, so a file being written by another process stays."""
        if not self._files.is_dir():
            return
        named = {row[0] for row in conn.execute("SELECT body_file FROM replies")}
        old = time.time() - ORPHAN_AGE
        for file in self._files.iterdir():
            try:
                if file.name not in named and file.stat().st_mtime < old:
                    file.unlink()
            except FileNotFoundError:
                pass

    def remember(self, request_id: str, reply: StoredReply) -> None:
        """Keep ``reply`` in memory."""
        with self._lock:
            previous = self._recent.pop(request_id, None)
            if previous is not None:
                self._recent_bytes -= len(previous.body)
            self._recent[request_id] = reply
            self._recent_bytes += body_size(reply.body)
            while len(self._recent) > 1 and (
                self._recent_bytes > self._memory_limit or len(self._recent) > self._memory_entries
            ):
                _, dropped = self._recent.popitem(last=False)
                self._recent_bytes -= body_size(dropped.body)

    def persist(self, request_id: str, reply: StoredReply) -> None:
        """Keep ``reply`` on disk only (blocking: call from a worker thread); memory holds the
        light replies, so a long-running agent's memory stays flat.

        A body of :data:`FILE_BODY_SIZE` bytes or more is written to a file of its own first
        (under a temporary name, renamed once complete), then its row; a crash in between
        leaves no row, so the request is run again on redelivery.
        """
        blob: bytes | None = None
        name: str | None = None
        if body_size(reply.body) >= FILE_BODY_SIZE:
            name = hashlib.sha256(request_id.encode()).hexdigest()[:32] + ".reply"
            self._write_file(name, reply.body)
        else:
            blob = joined_body(reply.body)
        with self._transaction() as db:
            before = db.execute(
                "SELECT body_file FROM replies WHERE request_id = ?", (request_id,)
            ).fetchall()
            db.execute(
                "INSERT OR REPLACE INTO replies VALUES (?, ?, ?, ?, ?, ?, ?)",
                (request_id, reply.reply_to, reply.message_type, reply.message_id,
                 blob, time.time(), name),
            )  # fmt: skip
        if before and before[0][0] is not None and before[0][0] != name:
            (self._files / before[0][0]).unlink(missing_ok=True)

    def recent(self, request_id: str) -> StoredReply | None:
        """The reply for ``request_id`` if it is still in memory (never blocks on disk)."""
        with self._lock:
            return self._recent.get(request_id)

    def get(self, request_id: str) -> StoredReply | None:
        """The reply sent for ``request_id``, if any (blocking on a memory miss)."""
        with self._lock:
            found = self._recent.get(request_id)
            if found is not None or not self.file_exists():
                return found
            rows = self._query(
                "SELECT body, reply_to, message_type, message_id, body_file FROM replies "
                "WHERE request_id = ?",
                (request_id,),
            )
        if not rows:
            return None
        body, reply_to, message_type, message_id, name = rows[0]
        if name is not None:
            try:
                body = (self._files / name).read_bytes()
            except FileNotFoundError:  # removed by hand: the request runs again
                return None
        return StoredReply(
            body=body, reply_to=reply_to, message_type=message_type, message_id=message_id
        )

    def _write_file(self, name: str, body: Body) -> None:
        self._files.mkdir(parents=True, exist_ok=True)
        partial = self._files / f"{name}.partial"
        with open(partial, "wb", buffering=0) as out:
            for part in (body,) if isinstance(body, bytes) else body:
                view = memoryview(part).cast("B")
                while view:
                    view = view[out.write(view) :]
        os.replace(partial, self._files / name)
