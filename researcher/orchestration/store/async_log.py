"""What asynchronous training tasks record: each model version and each update's fate.

Two tables beside the store's others (:mod:`researcher.orchestration.store.database`)::

    async_versions  each published version: metrics, the updates it applied, their nodes
                    and staleness, seconds since training started
    async_updates   each training request: node, base version, status (in_flight, applied,
                    stale, lost, cancelled, unapplied), reason, staleness, weight, the version
                    that applied it, times, sample size, metrics

A version is also a row of ``rounds`` (round = version) with its model in ``models``, so
``researcher output metrics`` and ``output model`` show versions as they show rounds; a
version, its model and its applied updates commit in one transaction. A request is written
``in_flight`` before it is sent: after a crash, those are the requests to resume.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from researcher.jobs.buffered_records import UpdateRecord, UpdateStatus, VersionRecord
from researcher.orchestration.store.database import StoreDatabase
from researcher.orchestration.store.records import now_text

_SCHEMA = """
CREATE TABLE IF NOT EXISTS async_versions (
    job_id TEXT NOT NULL, task TEXT NOT NULL, attempt INTEGER NOT NULL, version INTEGER NOT NULL,
    metrics TEXT NOT NULL, updates TEXT NOT NULL, nodes TEXT NOT NULL, staleness TEXT NOT NULL,
    elapsed REAL NOT NULL, ended_at TEXT NOT NULL,
    PRIMARY KEY (job_id, task, attempt, version)
);
CREATE TABLE IF NOT EXISTS async_updates (
    job_id TEXT NOT NULL, task TEXT NOT NULL, attempt INTEGER NOT NULL,
    request_id TEXT PRIMARY KEY, node_id TEXT NOT NULL, base_version INTEGER NOT NULL,
    status TEXT NOT NULL, reason TEXT NOT NULL, staleness INTEGER, weight REAL,
    applied_in INTEGER, sent_at TEXT, round_trip REAL, sample_size INTEGER, metrics TEXT,
    updated_at TEXT NOT NULL
);
"""

_UPDATE_KEYS = (
    "request_id", "node_id", "base_version", "status", "reason", "staleness", "weight",
    "applied_in", "sent_at", "round_trip", "sample_size", "metrics", "updated_at",
)  # fmt: skip


class AsyncLog(StoreDatabase):
    """Versions and updates of asynchronous training tasks, by task attempt."""

    def __init__(self, data_dir: Path) -> None:
        super().__init__(data_dir)
        with self._transaction() as conn:
            for statement in _SCHEMA.split(";"):
                if statement.strip():
                    conn.execute(statement)

    def record_update_sent(
        self, job_id: str, task: str, attempt: int, request_id: str, node: str, version: int
    ) -> None:
        """A request is about to go to ``node`` with ``version``: in flight until settled."""
        with self._transaction() as conn:
            conn.execute(
                "INSERT OR IGNORE INTO async_updates (job_id, task, attempt, request_id, "
                "node_id, base_version, status, reason, updated_at) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, '', ?)",
                (job_id, task, attempt, request_id, node, version,
                 UpdateStatus.IN_FLIGHT.value, now_text()),
            )  # fmt: skip

    def settle_update(self, job_id: str, task: str, attempt: int, update: UpdateRecord) -> None:
        """Record what became of one update (stale, lost, cancelled, unapplied)."""
        with self._transaction() as conn:
            self._settle(conn, job_id, task, attempt, update)

    def commit_version(
        self, job_id: str, task: str, attempt: int, version: VersionRecord,
        applied: Sequence[UpdateRecord], model_path: Path, progress: str,
    ) -> None:  # fmt: skip
        """Store a published version at once: its row, its model, its applied updates."""
        at = now_text()
        request_id = version.updates[-1] if version.updates else ""
        with self._transaction() as conn:
            conn.execute(
                "INSERT INTO async_versions VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (job_id, task, attempt, version.version, json.dumps(version.metrics),
                 json.dumps(version.updates), json.dumps(version.nodes),
                 json.dumps(version.staleness), version.elapsed, at),
            )  # fmt: skip
            conn.execute(
                "INSERT INTO rounds VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (job_id, task, attempt, version.version, request_id,
                 json.dumps(version.metrics), "{}", version.elapsed, at),
            )  # fmt: skip
            conn.execute(
                "INSERT OR REPLACE INTO models VALUES (?, ?, ?, ?, ?)",
                (job_id, task, attempt, version.version, self._relative(model_path)),
            )
            for update in applied:
                self._settle(conn, job_id, task, attempt, update)
            conn.execute(
                "UPDATE tasks SET progress = ?, reason = ? WHERE job_id = ? AND name = ?",
                (json.dumps({"version": version.version}), progress, job_id, task),
            )

    def versions(self, job_id: str, task: str, attempt: int) -> list[dict[str, Any]]:
        """The versions a task attempt published, oldest first."""
        rows = self._query(
            "SELECT version, metrics, updates, nodes, staleness, elapsed, ended_at "
            "FROM async_versions WHERE job_id = ? AND task = ? AND attempt = ? ORDER BY version",
            (job_id, task, attempt),
        )
        return [
            {"version": row[0], "metrics": json.loads(row[1]), "updates": json.loads(row[2]),
             "nodes": json.loads(row[3]), "staleness": json.loads(row[4]), "elapsed": row[5],
             "ended_at": row[6]}
            for row in rows
        ]  # fmt: skip

    def async_updates(
        self, job_id: str, task: str, attempt: int, status: UpdateStatus | None = None
    ) -> list[dict[str, Any]]:
        """The updates of a task attempt (or those with ``status``), in the order sent."""
        rows = self._query(
            f"SELECT {', '.join(_UPDATE_KEYS)} FROM async_updates "
            "WHERE job_id = ? AND task = ? AND attempt = ? AND (? IS NULL OR status = ?) "
            "ORDER BY rowid",
            (job_id, task, attempt, status and status.value, status and status.value),
        )
        found = []
        for row in rows:
            entry = dict(zip(_UPDATE_KEYS, row, strict=True))
            entry["metrics"] = json.loads(entry["metrics"]) if entry["metrics"] else None
            found.append(entry)
        return found

    @staticmethod
    def _settle(conn: Any, job_id: str, task: str, attempt: int, update: UpdateRecord) -> None:
        conn.execute(
            "INSERT INTO async_updates VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
            "ON CONFLICT (request_id) DO UPDATE SET status = excluded.status, "
            "reason = excluded.reason, staleness = excluded.staleness, "
            "weight = excluded.weight, applied_in = excluded.applied_in, "
            "sent_at = excluded.sent_at, round_trip = excluded.round_trip, "
            "sample_size = excluded.sample_size, metrics = excluded.metrics, "
            "updated_at = excluded.updated_at",
            (job_id, task, attempt, update.request_id, update.node_id, update.base_version,
             update.status.value, update.reason, update.staleness, update.weight,
             update.applied_in, update.sent_at.isoformat() if update.sent_at else None,
             update.round_trip, update.sample_size,
             json.dumps(update.metrics) if update.metrics else None, now_text()),
        )  # fmt: skip
