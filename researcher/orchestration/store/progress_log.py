"""The progress nodes report while a task's rounds run: one row per progress message kept."""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from typing import Any

from researcher.orchestration.store.database import StoreDatabase
from researcher.orchestration.store.records import ProgressRecord

_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS progress (
    id INTEGER PRIMARY KEY AUTOINCREMENT, job_id TEXT NOT NULL, task TEXT NOT NULL,
    round INTEGER NOT NULL, node_id TEXT NOT NULL, request_id TEXT NOT NULL, at TEXT NOT NULL,
    progress_values TEXT NOT NULL
)""",
    "CREATE INDEX IF NOT EXISTS progress_by_job ON progress (job_id, id)",
)


class ProgressLog(StoreDatabase):
    """The ``progress`` table: each progress update stored, in arrival order (its ``id``)."""

    def __init__(self, data_dir: Path) -> None:
        super().__init__(data_dir)
        with self._transaction() as conn:
            for statement in _SCHEMA:
                conn.execute(statement)

    def add_progress(self, job_id: str, task: str, record: ProgressRecord) -> None:
        """Store one progress update of ``task`` (the record's own ``id``, ``job_id`` and
        ``task`` are not used)."""
        with self._transaction() as conn:
            conn.execute(
                "INSERT INTO progress (job_id, task, round, node_id, request_id, at, "
                "progress_values) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (job_id, task, record.round, record.node_id, record.request_id,
                 record.at.isoformat(), json.dumps(record.values)),
            )  # fmt: skip

    def progress(self, job_id: str, *, after: int = 0, limit: int = 1000) -> list[ProgressRecord]:
        """The job's progress updates with an id above ``after`` (the last one seen), oldest
        first, at most ``limit`` of them."""
        rows = self._query(
            "SELECT id, job_id, task, round, node_id, request_id, at, progress_values "
            "FROM progress WHERE job_id = ? AND id > ? ORDER BY id LIMIT ?",
            (job_id, after, max(0, limit)),
        )
        return [_record(row) for row in rows]


def _record(row: tuple[Any, ...]) -> ProgressRecord:
    return ProgressRecord(
        id=row[0], job_id=row[1], task=row[2], round=row[3], node_id=row[4], request_id=row[5],
        at=datetime.fromisoformat(row[6]), values=json.loads(row[7]),
    )  # fmt: skip
