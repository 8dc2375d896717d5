"""The node's memory of the replies it sent, so a redelivered request is answered again
without being run again.

Recent replies are kept in memory; replies to heavy requests (training, analytics,
preprocessing, plan approval) are also written to SQLite in the data folder, so they survive an
agent restart.
"""

from __future__ import annotations

import sqlite3
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

from broker_net.sqlite import SqliteStore


@dataclass(frozen=True, slots=True)
class StoredReply:
    """A sealed reply and where it went."""

    body: bytes
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
        super().__init__(
            path,
            [
                "CREATE TABLE IF NOT EXISTS replies (request_id TEXT PRIMARY KEY, reply_to TEXT, "
                "message_type TEXT, message_id TEXT, body BLOB, stored_at REAL)"
            ],
        )

    def _prepare(self, conn: sqlite3.Connection) -> None:
        # Replies past their keeping time go when the file is first opened.
        conn.execute("DELETE FROM replies WHERE stored_at < ?", (time.time() - self._keep_seconds,))

    def remember(self, request_id: str, reply: StoredReply) -> None:
        """Keep ``reply`` in memory."""
        with self._lock:
            previous = self._recent.pop(request_id, None)
            if previous is not None:
                self._recent_bytes -= len(previous.body)
            self._recent[request_id] = reply
            self._recent_bytes += len(reply.body)
            while len(self._recent) > 1 and (
                self._recent_bytes > self._memory_limit or len(self._recent) > self._memory_entries
            ):
                _, dropped = self._recent.popitem(last=False)
                self._recent_bytes -= len(dropped.body)

    def persist(self, request_id: str, reply: StoredReply) -> None:
        """Keep ``reply`` on disk only (blocking: call from a worker thread); memory holds the
        light replies, so a long-running agent's memory stays flat."""
        with self._transaction() as db:
            db.execute(
                "INSERT OR REPLACE INTO replies VALUES (?, ?, ?, ?, ?, ?)",
                (request_id, reply.reply_to, reply.message_type, reply.message_id,
                 reply.body, time.time()),
            )  # fmt: skip

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
                "SELECT body, reply_to, message_type, message_id FROM replies WHERE request_id = ?",
                (request_id,),
            )
        if not rows:
            return None
        body, reply_to, message_type, message_id = rows[0]
        return StoredReply(
            body=body, reply_to=reply_to, message_type=message_type, message_id=message_id
        )
