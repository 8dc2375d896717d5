"""The requests tasks send, recorded so that a new process can resume them."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime

from researcher.orchestration.store.database import StoreDatabase
from researcher.orchestration.store.records import InFlight, now_text


class RequestLog(StoreDatabase):
    """Each request a task sent (or is about to send), when it reached each node, and which
    nodes answered: what :meth:`researcher.orchestration.tasks.TaskContext.hooks` records
    and reads back."""

    def record_request(
        self, job_id: str, task: str, attempt: int, slot: str, request_id: str,
        nodes: Sequence[str],
    ) -> None:  # fmt: skip
        """Record a request before it is sent, so a new process can resume it."""
        with self._transaction() as conn:
            conn.execute(
                "INSERT OR IGNORE INTO requests VALUES (?, ?, ?, ?, ?, ?)",
                (job_id, task, attempt, slot, request_id, now_text()),
            )
            for node in nodes:
                conn.execute(
                    "INSERT OR IGNORE INTO request_nodes (request_id, node_id) VALUES (?, ?)",
                    (request_id, node),
                )

    def record_sent(self, request_id: str, sent_at: Mapping[str, datetime]) -> None:
        """Record when the request went to each node."""
        with self._transaction() as conn:
            for node, at in sent_at.items():
                conn.execute(
                    "INSERT INTO request_nodes (request_id, node_id, sent_at) VALUES (?, ?, ?) "
                    "ON CONFLICT (request_id, node_id) DO UPDATE SET "
                    "sent_at = COALESCE(request_nodes.sent_at, excluded.sent_at)",
                    (request_id, node, at.isoformat()),
                )

    def record_answer(self, request_id: str, node: str) -> None:
        """Record that a node's answer to the request arrived."""
        with self._transaction() as conn:
            conn.execute(
                "UPDATE request_nodes SET answered_at = COALESCE(answered_at, ?) "
                "WHERE request_id = ? AND node_id = ?",
                (now_text(), request_id, node),
            )

    def in_flight(self, job_id: str, task: str, attempt: int, slot: str) -> InFlight | None:
        """The request a task recorded for ``slot`` in ``attempt``, if any."""
        rows = self._query(
            "SELECT request_id FROM requests WHERE job_id = ? AND task = ? AND attempt = ? "
            "AND slot = ?",
            (job_id, task, attempt, slot),
        )
        if not rows:
            return None
        request_id = rows[0][0]
        nodes = self._query(
            "SELECT node_id, sent_at, answered_at FROM request_nodes WHERE request_id = ?",
            (request_id,),
        )
        return InFlight(
            request_id=request_id,
            nodes=[row[0] for row in nodes],
            sent_at={row[0]: datetime.fromisoformat(row[1]) for row in nodes if row[1]},
            answered={row[0] for row in nodes if row[2]},
        )
