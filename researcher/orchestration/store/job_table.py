"""The jobs of the store: each job's spec, state and why, its nodes, and its owner process."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Mapping, Sequence

from broker_net.message_base import new_id
from researcher.orchestration.lifecycle import State, check_transition
from researcher.orchestration.spec import JobSpec
from researcher.orchestration.store.database import StoreDatabase
from researcher.orchestration.store.records import (
    JOB_COLUMNS,
    JOB_SUMMARY_COLUMNS,
    JobNotFoundError,
    JobRecord,
    JobSummary,
    job_from_row,
    now_text,
    owner_alive,
    summary_from_row,
    this_process,
)


class JobTable(StoreDatabase):
    """Jobs: created with their tasks waiting, moved through their states, owned by one
    process at a time (which refreshes a heartbeat and reads stop requests here)."""

    def create_job(self, spec: JobSpec, *, researcher_id: str, reason: str = "") -> JobRecord:
        """Store a new job, waiting, with every task waiting."""
        job_id = new_id("job")
        at = now_text()
        reason = reason or "submitted; waiting for a scheduler to start it"
        order = {name: index for index, name in enumerate(spec.order())}
        with self._transaction() as conn:
            conn.execute(
                "INSERT INTO jobs (job_id, name, state, reason, priority, spec, researcher_id, "
                "created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (job_id, spec.name, State.WAITING.value, reason, spec.conf.priority,
                 spec.to_yaml(), researcher_id, at, at),
            )  # fmt: skip
            self._history(conn, job_id, None, None, State.WAITING, "submitted", at)
            for task in spec.tasks:
                conn.execute(
                    "INSERT INTO tasks (job_id, name, kind, position, state, reason) "
                    "VALUES (?, ?, ?, ?, ?, ?)",
                    (job_id, task.name, task.kind, order[task.name], State.WAITING.value,
                     "waiting for the job to start"),
                )  # fmt: skip
                self._history(conn, job_id, task.name, None, State.WAITING, "submitted", at)
        return self.job(job_id)

    def job(self, job_id: str) -> JobRecord:
        """The job ``job_id``.

        Raises:
            JobNotFoundError: there is none.
        """
        rows = self._query(f"SELECT {JOB_COLUMNS} FROM jobs WHERE job_id = ?", (job_id,))
        if not rows:
            raise JobNotFoundError(job_id)
        return job_from_row(rows[0])

    def jobs(self, states: Sequence[State] | None = None) -> list[JobRecord]:
        """Every job (or those in ``states``), newest first."""
        rows = self._query(f"SELECT {JOB_COLUMNS} FROM jobs ORDER BY created_at DESC, rowid DESC")
        found = [job_from_row(row) for row in rows]
        return [job for job in found if states is None or job.state in states]

    def recent_jobs(
        self, limit: int | None = None, states: Sequence[State] | None = None
    ) -> list[JobSummary]:
        """The newest ``limit`` jobs (every one by default; only those in ``states`` if given)
        without their specs, newest first: a cheap listing."""
        where = f"WHERE state IN ({', '.join('?' * len(states))}) " if states else ""
        rows = self._query(
            f"SELECT {JOB_SUMMARY_COLUMNS} FROM jobs {where}"
            "ORDER BY created_at DESC, rowid DESC LIMIT ?",
            (*(state.value for state in states or ()), -1 if limit is None else max(0, limit)),
        )
        return [summary_from_row(row) for row in rows]

    def waiting_jobs(self) -> list[JobRecord]:
        """Waiting jobs, highest priority first, then oldest first."""
        rows = self._query(
            f"SELECT {JOB_COLUMNS} FROM jobs WHERE state = ? "
            "ORDER BY priority DESC, created_at ASC, rowid ASC",
            (State.WAITING.value,),
        )
        return [job_from_row(row) for row in rows]

    def set_job_state(self, job_id: str, state: State, reason: str) -> JobRecord:
        """Move a job to ``state``, recording why.

        Raises:
            JobNotFoundError: no such job.
            TransitionError: the state machine forbids the move.
        """
        at = now_text()
        with self._transaction() as conn:
            current = self._job_state(conn, job_id)
            check_transition(f"job {job_id}", current, state)
            conn.execute(
                "UPDATE jobs SET state = ?, reason = ?, updated_at = ? WHERE job_id = ?",
                (state.value, reason, at, job_id),
            )
            self._history(conn, job_id, None, current, state, reason, at)
        return self.job(job_id)

    def set_job_reason(self, job_id: str, reason: str) -> None:
        """Say what a job is doing or waiting for, without changing its state."""
        with self._transaction() as conn:
            conn.execute(
                "UPDATE jobs SET reason = ?, updated_at = ? WHERE job_id = ?",
                (reason, now_text(), job_id),
            )

    def set_job_nodes(self, job_id: str, nodes: Sequence[str], datasets: Mapping[str, str]) -> None:
        """Record the nodes a job runs on and each one's dataset."""
        with self._transaction() as conn:
            conn.execute(
                "UPDATE jobs SET nodes = ?, datasets = ? WHERE job_id = ?",
                (json.dumps(list(nodes)), json.dumps(dict(datasets)), job_id),
            )

    def claim(self, job_id: str, owner: str | None = None) -> bool:
        """Make this process the job's owner, unless another live process is.

        Returns:
            True when the job is now this process's to run.
        """
        owner = owner or this_process()
        with self._transaction() as conn:
            job = self._job_in(conn, job_id)
            if job.owner not in (None, owner) and owner_alive(job):
                return False
            conn.execute(
                "UPDATE jobs SET owner = ?, heartbeat_at = ?, stop_requested = 0 WHERE job_id = ?",
                (owner, now_text(), job_id),
            )
        return True

    def beat(self, job_id: str) -> bool:
        """Refresh the owner's heartbeat; return whether a stop was requested."""
        with self._transaction() as conn:
            conn.execute("UPDATE jobs SET heartbeat_at = ? WHERE job_id = ?", (now_text(), job_id))
            row = conn.execute(
                "SELECT stop_requested FROM jobs WHERE job_id = ?", (job_id,)
            ).fetchone()
        return bool(row and row[0])

    def release(self, job_id: str) -> None:
        """The owner is done with the job."""
        with self._transaction() as conn:
            conn.execute("UPDATE jobs SET owner = NULL WHERE job_id = ?", (job_id,))

    def request_stop(self, job_id: str) -> None:
        """Ask the process running the job to stop it."""
        with self._transaction() as conn:
            self._job_state(conn, job_id)
            conn.execute("UPDATE jobs SET stop_requested = 1 WHERE job_id = ?", (job_id,))

    def _job_state(self, conn: sqlite3.Connection, job_id: str) -> State:
        row = conn.execute("SELECT state FROM jobs WHERE job_id = ?", (job_id,)).fetchone()
        if row is None:
            raise JobNotFoundError(job_id)
        return State(row[0])

    def _job_in(self, conn: sqlite3.Connection, job_id: str) -> JobRecord:
        row = conn.execute(f"SELECT {JOB_COLUMNS} FROM jobs WHERE job_id = ?", (job_id,)).fetchone()
        if row is None:
            raise JobNotFoundError(job_id)
        return job_from_row(row)
