"""The tasks of the store's jobs, and the history of every state change."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from researcher.orchestration.lifecycle import State, check_transition
from researcher.orchestration.store.database import StoreDatabase
from researcher.orchestration.store.records import (
    TASK_COLUMNS,
    HistoryEntry,
    JobNotFoundError,
    TaskRecord,
    now_text,
    task_from_row,
)


class TaskTable(StoreDatabase):
    """Tasks: their state and why, attempts, outputs and progress; and the history of the
    state changes of jobs and tasks."""

    def tasks(self, job_id: str) -> list[TaskRecord]:
        """The job's tasks, upstream first."""
        rows = self._query(
            f"SELECT {TASK_COLUMNS} FROM tasks WHERE job_id = ? ORDER BY position", (job_id,)
        )
        return [task_from_row(row) for row in rows]

    def task(self, job_id: str, name: str) -> TaskRecord:
        """One task of a job.

        Raises:
            JobNotFoundError: no such job or task.
        """
        rows = self._query(
            f"SELECT {TASK_COLUMNS} FROM tasks WHERE job_id = ? AND name = ?", (job_id, name)
        )
        if not rows:
            raise JobNotFoundError(job_id, name)
        return task_from_row(rows[0])

    def set_task_state(
        self,
        job_id: str,
        name: str,
        state: State,
        reason: str,
        *,
        inherited_from: str | None = None,
        outputs: Mapping[str, Any] | None = None,
    ) -> TaskRecord:
        """Move a task to ``state``, recording why; going to running starts a new attempt.

        Raises:
            JobNotFoundError: no such task.
            TransitionError: the state machine forbids the move.
        """
        at = now_text()
        with self._transaction() as conn:
            row = conn.execute(
                "SELECT state FROM tasks WHERE job_id = ? AND name = ?", (job_id, name)
            ).fetchone()
            if row is None:
                raise JobNotFoundError(job_id, name)
            current = State(row[0])
            check_transition(f"task {name} of job {job_id}", current, state)
            conn.execute(
                "UPDATE tasks SET state = ?, reason = ? WHERE job_id = ? AND name = ?",
                (state.value, reason, job_id, name),
            )
            if state is State.RUNNING:
                conn.execute(
                    "UPDATE tasks SET attempt = attempt + 1, started_at = ?, ended_at = NULL, "
                    "progress = NULL WHERE job_id = ? AND name = ?",
                    (at, job_id, name),
                )
            elif state.finished:
                conn.execute(
                    "UPDATE tasks SET ended_at = ? WHERE job_id = ? AND name = ?",
                    (at, job_id, name),
                )
            if inherited_from is not None:
                conn.execute(
                    "UPDATE tasks SET inherited_from = ? WHERE job_id = ? AND name = ?",
                    (inherited_from, job_id, name),
                )
            if outputs is not None:
                conn.execute(
                    "UPDATE tasks SET outputs = ? WHERE job_id = ? AND name = ?",
                    (json.dumps(dict(outputs)), job_id, name),
                )
            self._history(conn, job_id, name, current, state, reason, at)
        return self.task(job_id, name)

    def set_task_progress(
        self, job_id: str, name: str, progress: Mapping[str, Any], reason: str | None = None
    ) -> None:
        """Record how far a running task is, and optionally say so in its reason."""
        with self._transaction() as conn:
            conn.execute(
                "UPDATE tasks SET progress = ? WHERE job_id = ? AND name = ?",
                (json.dumps(dict(progress)), job_id, name),
            )
            if reason is not None:
                conn.execute(
                    "UPDATE tasks SET reason = ? WHERE job_id = ? AND name = ?",
                    (reason, job_id, name),
                )

    def history(self, job_id: str) -> list[HistoryEntry]:
        """Every state change of the job and its tasks, oldest first."""
        rows = self._query(
            "SELECT job_id, task, from_state, to_state, reason, at FROM history "
            "WHERE job_id = ? ORDER BY id",
            (job_id,),
        )
        return [
            HistoryEntry(row[0], row[1], State(row[2]) if row[2] else None, State(row[3]),
                         row[4], row[5])
            for row in rows
        ]  # fmt: skip
