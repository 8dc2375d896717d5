"""The job store: jobs, tasks, their state history, results and models, in the researcher's
data folder.

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

Every state change goes through :func:`researcher.lifecycle.check_transition` inside a
transaction that reads the current state, so two processes can never both move a job.
Safe to share between threads; several processes may open the same store.
"""

from __future__ import annotations

import json
import os
import socket
import sqlite3
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from broker_net.messages import new_id
from broker_net.sqlite import SqliteStore
from researcher.lifecycle import State, check_transition
from researcher.spec import JobSpec

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

OWNER_STALE_AFTER = 15.0
"""Seconds without a heartbeat after which an owner on another host counts as gone."""


class JobNotFoundError(KeyError):
    """Raised when no job (or task) has the given id."""

    def __init__(self, job_id: str, task: str | None = None) -> None:
        super().__init__(job_id)
        self.job_id = job_id
        self.task = task

    def __str__(self) -> str:
        if self.task is not None:
            return f"job {self.job_id!r} has no task {self.task!r}"
        return f"no job has id {self.job_id!r}"


@dataclass(frozen=True)
class JobRecord:
    """A job as stored.

    Attributes:
        reason: why the job is in its state, in words (what it waits for, why it failed).
        owner: ``host:pid`` of the process running it, if any.
        nodes: the nodes the job runs on, once it started.
        datasets: each node's dataset id, once it started.
    """

    job_id: str
    name: str
    state: State
    reason: str
    priority: int
    spec: JobSpec
    researcher_id: str
    created_at: str
    updated_at: str
    owner: str | None
    heartbeat_at: str | None
    stop_requested: bool
    nodes: list[str] | None
    datasets: dict[str, str] | None

    @property
    def orphaned(self) -> bool:
        """True when the job is waiting or running but the process running it is gone."""
        return not self.state.finished and self.owner is not None and not owner_alive(self)

    def as_dict(self) -> dict[str, Any]:
        """Plain data for JSON (the spec left out)."""
        return {
            "job_id": self.job_id, "name": self.name, "state": self.state.value,
            "reason": self.reason, "priority": self.priority,
            "researcher_id": self.researcher_id, "created_at": self.created_at,
            "updated_at": self.updated_at, "owner": self.owner, "orphaned": self.orphaned,
            "nodes": self.nodes, "datasets": self.datasets,
        }  # fmt: skip


@dataclass(frozen=True)
class TaskRecord:
    """A task as stored."""

    job_id: str
    name: str
    kind: str
    state: State
    reason: str
    attempt: int
    started_at: str | None
    ended_at: str | None
    outputs: dict[str, Any] | None
    inherited_from: str | None
    progress: dict[str, Any] | None

    def as_dict(self) -> dict[str, Any]:
        """Plain data for JSON."""
        return {
            "name": self.name, "kind": self.kind, "state": self.state.value,
            "reason": self.reason, "attempt": self.attempt, "started_at": self.started_at,
            "ended_at": self.ended_at, "inherited_from": self.inherited_from,
            "progress": self.progress,
        }  # fmt: skip


@dataclass(frozen=True)
class HistoryEntry:
    """One state change."""

    job_id: str
    task: str | None
    from_state: State | None
    to_state: State
    reason: str
    at: str

    def as_dict(self) -> dict[str, Any]:
        """Plain data for JSON."""
        return {
            "task": self.task,
            "from": self.from_state.value if self.from_state else None,
            "to": self.to_state.value,
            "reason": self.reason,
            "at": self.at,
        }


@dataclass(frozen=True)
class InFlight:
    """A request a task recorded before sending it: what a new process needs to resume it.

    Attributes:
        sent_at: nodes the request reached, with the send time.
        answered: nodes whose answer arrived (their answers were consumed from the queue).
    """

    request_id: str
    nodes: list[str]
    sent_at: dict[str, datetime] = field(default_factory=dict)
    answered: set[str] = field(default_factory=set)


@dataclass(frozen=True)
class NodeResult:
    """One node's part of one request."""

    node_id: str
    request_id: str
    status: str
    reason: str = ""
    sent_at: datetime | None = None
    round_trip: float | None = None
    processing: float | None = None
    queue_and_transit: float | None = None
    sample_size: int | None = None
    metrics: dict[str, float] | None = None


@dataclass(frozen=True)
class RoundRow:
    """One stored training round."""

    task: str
    attempt: int
    round: int
    request_id: str
    metrics: dict[str, float]
    failed: dict[str, str]
    duration: float
    ended_at: str


def now_text() -> str:
    """The current UTC time as ISO text, as the store writes it."""
    return datetime.now(UTC).isoformat()


def this_process() -> str:
    """``host:pid`` of this process, as the store names a job's owner."""
    return f"{socket.gethostname()}:{os.getpid()}"


def owner_alive(job: JobRecord) -> bool:
    """Whether the process named as the job's owner still runs.

    On this host the process id decides; for another host, a heartbeat newer than
    :data:`OWNER_STALE_AFTER` seconds.
    """
    if job.owner is None:
        return False
    host, _, pid = job.owner.rpartition(":")
    if host == socket.gethostname() and pid.isdigit():
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True
    if job.heartbeat_at is None:
        return False
    age = datetime.now(UTC) - datetime.fromisoformat(job.heartbeat_at)
    return age.total_seconds() < OWNER_STALE_AFTER


class JobStore(SqliteStore):
    """Jobs of one researcher, in ``<data_dir>/jobs.sqlite`` and ``<data_dir>/jobs/``.

    Use it as a context manager, or call :meth:`close`.
    """

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        super().__init__(data_dir / "jobs.sqlite", _SCHEMA.split(";"), timeout=30.0)

    # --- jobs ----------------------------------------------------------------------------------

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
        rows = self._query(f"SELECT {_JOB_COLUMNS} FROM jobs WHERE job_id = ?", (job_id,))
        if not rows:
            raise JobNotFoundError(job_id)
        return _job_from_row(rows[0])

    def jobs(self, states: Sequence[State] | None = None) -> list[JobRecord]:
        """Every job (or those in ``states``), newest first."""
        rows = self._query(f"SELECT {_JOB_COLUMNS} FROM jobs ORDER BY created_at DESC, rowid DESC")
        found = [_job_from_row(row) for row in rows]
        return [job for job in found if states is None or job.state in states]

    def waiting_jobs(self) -> list[JobRecord]:
        """Waiting jobs, highest priority first, then oldest first."""
        rows = self._query(
            f"SELECT {_JOB_COLUMNS} FROM jobs WHERE state = ? "
            "ORDER BY priority DESC, created_at ASC, rowid ASC",
            (State.WAITING.value,),
        )
        return [_job_from_row(row) for row in rows]

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

    # --- tasks ---------------------------------------------------------------------------------

    def tasks(self, job_id: str) -> list[TaskRecord]:
        """The job's tasks, upstream first."""
        rows = self._query(
            f"SELECT {_TASK_COLUMNS} FROM tasks WHERE job_id = ? ORDER BY position", (job_id,)
        )
        return [_task_from_row(row) for row in rows]

    def task(self, job_id: str, name: str) -> TaskRecord:
        """One task of a job.

        Raises:
            JobNotFoundError: no such job or task.
        """
        rows = self._query(
            f"SELECT {_TASK_COLUMNS} FROM tasks WHERE job_id = ? AND name = ?", (job_id, name)
        )
        if not rows:
            raise JobNotFoundError(job_id, name)
        return _task_from_row(rows[0])

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

    # --- requests in flight --------------------------------------------------------------------

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

    # --- results -------------------------------------------------------------------------------

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

    def _relative(self, path: Path) -> str:
        try:
            return str(path.relative_to(self.data_dir))
        except ValueError:
            return str(path)

    # --- internals -----------------------------------------------------------------------------

    def _job_state(self, conn: sqlite3.Connection, job_id: str) -> State:
        row = conn.execute("SELECT state FROM jobs WHERE job_id = ?", (job_id,)).fetchone()
        if row is None:
            raise JobNotFoundError(job_id)
        return State(row[0])

    def _job_in(self, conn: sqlite3.Connection, job_id: str) -> JobRecord:
        row = conn.execute(
            f"SELECT {_JOB_COLUMNS} FROM jobs WHERE job_id = ?", (job_id,)
        ).fetchone()
        if row is None:
            raise JobNotFoundError(job_id)
        return _job_from_row(row)

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


_JOB_COLUMNS = (
    "job_id, name, state, reason, priority, spec, researcher_id, created_at, updated_at, owner, "
    "heartbeat_at, stop_requested, nodes, datasets"
)
_TASK_COLUMNS = (
    "job_id, name, kind, state, reason, attempt, started_at, ended_at, outputs, inherited_from, "
    "progress"
)


def _job_from_row(row: tuple[Any, ...]) -> JobRecord:
    return JobRecord(
        job_id=row[0], name=row[1], state=State(row[2]), reason=row[3], priority=row[4],
        spec=JobSpec.from_yaml(row[5]), researcher_id=row[6], created_at=row[7],
        updated_at=row[8], owner=row[9], heartbeat_at=row[10], stop_requested=bool(row[11]),
        nodes=json.loads(row[12]) if row[12] else None,
        datasets=json.loads(row[13]) if row[13] else None,
    )  # fmt: skip


def _task_from_row(row: tuple[Any, ...]) -> TaskRecord:
    return TaskRecord(
        job_id=row[0], name=row[1], kind=row[2], state=State(row[3]), reason=row[4],
        attempt=row[5], started_at=row[6], ended_at=row[7],
        outputs=json.loads(row[8]) if row[8] else None, inherited_from=row[9],
        progress=json.loads(row[10]) if row[10] else None,
    )  # fmt: skip
