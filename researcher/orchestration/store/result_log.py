"""What the store's tasks produced: each node's answers, training rounds and model files."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from researcher.orchestration.store.records import NodeResult, RoundRow
from researcher.orchestration.store.task_table import TaskTable


class ResultLog(TaskTable):
    """Node answers, rounds and models, by task attempt (a task's latest attempt unless
    asked otherwise)."""

    def add_node_results(
        self, job_id: str, task: str, attempt: int, slot: str, round_number: int,
        results: Sequence[NodeResult],
    ) -> None:  # fmt: skip
        """Store each node's answer to one request; a resumed request's answers replace the
        ones stored before, so each node keeps one."""
        with self._transaction() as conn:
            self._insert_results(
                conn, job_id, task, attempt, slot, round_number, results, replace=True
            )

    def commit_round(
        self, job_id: str, task: str, attempt: int, round_row: RoundRow,
        results: Sequence[NodeResult], model_path: Path, total_rounds: int,
    ) -> None:  # fmt: skip
        """Store a finished round at once: node answers, metrics, model file and progress."""
        slot = f"round-{round_row.round}"
        with self._transaction() as conn:
            self._insert_results(conn, job_id, task, attempt, slot, round_row.round, results)
            conn.execute(
                "INSERT INTO rounds VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (job_id, task, attempt, round_row.round, round_row.request_id,
                 json.dumps(round_row.metrics), json.dumps(round_row.failed),
                 round_row.duration, round_row.ended_at),
            )  # fmt: skip
            conn.execute(
                "INSERT OR REPLACE INTO models VALUES (?, ?, ?, ?, ?)",
                (job_id, task, attempt, round_row.round, self._relative(model_path)),
            )
            conn.execute(
                "UPDATE tasks SET progress = ?, reason = ? WHERE job_id = ? AND name = ?",
                (json.dumps({"round": round_row.round, "rounds": total_rounds}),
                 f"round {round_row.round} of {total_rounds} done", job_id, task),
            )  # fmt: skip

    def add_model(
        self, job_id: str, task: str, attempt: int, round_number: int, path: Path
    ) -> None:
        """Record a model file (e.g. the initial model, round 0)."""
        with self._transaction() as conn:
            conn.execute(
                "INSERT OR REPLACE INTO models VALUES (?, ?, ?, ?, ?)",
                (job_id, task, attempt, round_number, self._relative(path)),
            )

    def _insert_results(
        self, conn: sqlite3.Connection, job_id: str, task: str, attempt: int, slot: str,
        round_number: int, results: Sequence[NodeResult], *, replace: bool = False,
    ) -> None:  # fmt: skip
        verb = "INSERT OR REPLACE" if replace else "INSERT"
        for r in results:
            conn.execute(
                f"{verb} INTO node_results VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (job_id, task, attempt, slot, round_number, r.node_id, r.request_id, r.status,
                 r.reason, r.sent_at.isoformat() if r.sent_at else None, r.round_trip,
                 r.processing, r.queue_and_transit, r.sample_size,
                 json.dumps(r.metrics) if r.metrics is not None else None),
            )  # fmt: skip

    def rounds(self, job_id: str, task: str, attempt: int | None = None) -> list[RoundRow]:
        """The stored rounds of a training task (its latest attempt by default)."""
        attempt = self.task(job_id, task).attempt if attempt is None else attempt
        rows = self._query(
            "SELECT task, attempt, round, request_id, metrics, failed, duration, ended_at "
            "FROM rounds WHERE job_id = ? AND task = ? AND attempt = ? ORDER BY round",
            (job_id, task, attempt),
        )
        return [
            RoundRow(row[0], row[1], row[2], row[3], json.loads(row[4]), json.loads(row[5]),
                     row[6], row[7])
            for row in rows
        ]  # fmt: skip

    def node_results(
        self, job_id: str, task: str | None = None, *, all_attempts: bool = False
    ) -> list[dict[str, Any]]:
        """Stored node answers, as plain data (each task's latest attempt by default)."""
        rows = self._query(
            "SELECT r.task, r.attempt, r.slot, r.round, r.node_id, r.request_id, r.status, "
            "r.reason, r.sent_at, r.round_trip, r.processing, r.queue_and_transit, "
            "r.sample_size, r.metrics, t.attempt FROM node_results r JOIN tasks t "
            "ON t.job_id = r.job_id AND t.name = r.task WHERE r.job_id = ? "
            "ORDER BY t.position, r.attempt, r.round, r.slot, r.node_id",
            (job_id,),
        )
        keys = ("task", "attempt", "slot", "round", "node_id", "request_id", "status", "reason",
                "sent_at", "round_trip", "processing", "queue_and_transit", "sample_size",
                "metrics")  # fmt: skip
        found = []
        for row in rows:
            if task is not None and row[0] != task:
                continue
            if not all_attempts and row[1] != row[14]:
                continue
            entry = dict(zip(keys, row[:14], strict=True))
            entry["metrics"] = json.loads(entry["metrics"]) if entry["metrics"] else None
            found.append(entry)
        return found

    def models(self, job_id: str, task: str) -> dict[int, Path]:
        """Model files of a task's latest attempt, by round (0 is the initial model)."""
        attempt = self.task(job_id, task).attempt
        rows = self._query(
            "SELECT round, path FROM models WHERE job_id = ? AND task = ? AND attempt = ? "
            "ORDER BY round",
            (job_id, task, attempt),
        )
        return {row[0]: self.data_dir / row[1] for row in rows}

    def model_dir(self, job_id: str, task: str, attempt: int) -> Path:
        """The folder for a task attempt's model files (created)."""
        folder = self.data_dir / "jobs" / job_id / task / f"attempt-{attempt}"
        folder.mkdir(parents=True, exist_ok=True)
        return folder
