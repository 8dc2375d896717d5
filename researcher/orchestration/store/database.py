"""The job store's SQLite file: its tables, and what every part of the store shares.

``<data_dir>/jobs.sqlite`` holds the tables below; models are ``.npz`` files under
``<data_dir>/jobs/<job id>/``::

    jobs          one row per job: spec, state and why, priority, owner process, nodes
    tasks         one row per task: state and why, attempt, outputs, inherited from
    history       every state change of a job or a task, with its reason
    requests      each request a task sent (or is about to send), by task, attempt and slot
    request_nodes when the request went to each node, and whether the node answered
    node_results  each node's answer to each request: status, reason, times, metrics
    rounds        each training round: request, aggregated metrics, failed nodes
    models        the model file of each round
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

from broker_net.sqlite import SqliteStore
from researcher.orchestration.lifecycle import State

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    job_id TEXT PRIMARY KEY, name TEXT NOT NULL, state TEXT NOT NULL, reason TEXT NOT NULL,
    priority INTEGER NOT NULL, spec TEXT NOT NULL, researcher_id TEXT NOT NULL,
    created_at TEXT NOT NULL, updated_at TEXT NOT NULL, owner TEXT, heartbeat_at TEXT,
    stop_requested INTEGER NOT NULL DEFAULT 0, nodes TEXT, datasets TEXT
);
CREATE TABLE IF NOT EXISTS tasks (
    job_id TEXT NOT NULL, name TEXT NOT NULL, kind TEXT NOT NULL, position INTEGER NOT NULL,
    state TEXT NOT NULL, reason TEXT NOT NULL, attempt INTEGER NOT NULL DEFAULT 0,
    started_at TEXT, ended_at TEXT, outputs TEXT, inherited_from TEXT, progress TEXT,
    PRIMARY KEY (job_id, name)
);
CREATE TABLE IF NOT EXISTS history (
    id INTEGER PRIMARY KEY AUTOINCREMENT, job_id TEXT NOT NULL, task TEXT,
    from_state TEXT, to_state TEXT NOT NULL, reason TEXT NOT NULL, at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS requests (
    job_id TEXT NOT NULL, task TEXT NOT NULL, attempt INTEGER NOT NULL, slot TEXT NOT NULL,
    request_id TEXT NOT NULL UNIQUE, created_at TEXT NOT NULL,
    PRIMARY KEY (job_id, task, attempt, slot)
);
CREATE TABLE IF NOT EXISTS request_nodes (
    request_id TEXT NOT NULL, node_id TEXT NOT NULL, sent_at TEXT, answered_at TEXT,
    PRIMARY KEY (request_id, node_id)
);
CREATE TABLE IF NOT EXISTS node_results (
    job_id TEXT NOT NULL, task TEXT NOT NULL, attempt INTEGER NOT NULL, slot TEXT NOT NULL,
    round INTEGER NOT NULL, node_id TEXT NOT NULL, request_id TEXT NOT NULL,
    status TEXT NOT NULL, reason TEXT NOT NULL, sent_at TEXT, round_trip REAL,
    processing REAL, queue_and_transit REAL, sample_size INTEGER, metrics TEXT,
    UNIQUE (job_id, task, attempt, slot, node_id)
);
CREATE TABLE IF NOT EXISTS rounds (
    job_id TEXT NOT NULL, task TEXT NOT NULL, attempt INTEGER NOT NULL, round INTEGER NOT NULL,
    request_id TEXT NOT NULL, metrics TEXT NOT NULL, failed TEXT NOT NULL,
    duration REAL NOT NULL, ended_at TEXT NOT NULL,
    PRIMARY KEY (job_id, task, attempt, round)
);
CREATE TABLE IF NOT EXISTS models (
    job_id TEXT NOT NULL, task TEXT NOT NULL, attempt INTEGER NOT NULL, round INTEGER NOT NULL,
    path TEXT NOT NULL,
    PRIMARY KEY (job_id, task, attempt, round)
);
"""


class StoreDatabase(SqliteStore):
    """The store's file in ``<data_dir>/jobs.sqlite``: the base of each part of the store.

    Use it as a context manager, or call :meth:`close`.
    """

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        super().__init__(data_dir / "jobs.sqlite", _SCHEMA.split(";"), timeout=30.0)

    @staticmethod
    def _history(
        conn: sqlite3.Connection, job_id: str, task: str | None, from_state: State | None,
        to_state: State, reason: str, at: str,
    ) -> None:  # fmt: skip
        conn.execute(
            "INSERT INTO history (job_id, task, from_state, to_state, reason, at) "
            "VALUES (?, ?, ?, ?, ?, ?)",
            (job_id, task, from_state.value if from_state else None, to_state.value, reason, at),
        )

    def _relative(self, path: Path) -> str:
        try:
            return str(path.relative_to(self.data_dir))
        except ValueError:
            return str(path)
