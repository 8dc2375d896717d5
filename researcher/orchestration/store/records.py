"""What the job store holds, as records, and the ownership of a job by a process."""

from __future__ import annotations

import json
import os
import socket
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from researcher.orchestration.lifecycle import State
from researcher.orchestration.spec import JobSpec

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
class JobSummary:
    """A job as listed: what :class:`JobRecord` holds but its spec, which is slow to read.

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
    researcher_id: str
    created_at: str
    updated_at: str
    owner: str | None
    heartbeat_at: str | None
    nodes: list[str] | None
    datasets: dict[str, str] | None

    @property
    def orphaned(self) -> bool:
        """True when the job is waiting or running but the process running it is gone."""
        return not self.state.finished and self.owner is not None and not owner_alive(self)

    def as_dict(self) -> dict[str, Any]:
        """Plain data for JSON (a :class:`JobRecord`'s spec left out)."""
        return {
            "job_id": self.job_id, "name": self.name, "state": self.state.value,
            "reason": self.reason, "priority": self.priority,
            "researcher_id": self.researcher_id, "created_at": self.created_at,
            "updated_at": self.updated_at, "owner": self.owner, "orphaned": self.orphaned,
            "nodes": self.nodes, "datasets": self.datasets,
        }  # fmt: skip


@dataclass(frozen=True)
class JobRecord(JobSummary):
    """A job as stored: its summary, its spec and whether a stop was asked for."""

    spec: JobSpec
    stop_requested: bool


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


@dataclass(frozen=True)
class ProgressRecord:
    """One progress update a node sent while a task's round ran.

    Attributes:
        id: its place in the store, increasing; 0 when not stored yet.
        at: when the node sent it (node clock).
        values: the scalars the plan reported (iteration, loss...).
    """

    id: int
    job_id: str
    task: str
    round: int
    node_id: str
    request_id: str
    at: datetime
    values: dict[str, float]

    def as_dict(self) -> dict[str, Any]:
        """Plain data for JSON."""
        return {
            "id": self.id, "task": self.task, "round": self.round, "node_id": self.node_id,
            "request_id": self.request_id, "at": self.at.isoformat(), "values": self.values,
        }  # fmt: skip


def now_text() -> str:
    """The current UTC time as ISO text, as the store writes it."""
    return datetime.now(UTC).isoformat()


def this_process() -> str:
    """``host:pid`` of this process, as the store names a job's owner."""
    return f"{socket.gethostname()}:{os.getpid()}"


def owner_alive(job: JobSummary) -> bool:
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


#: The columns of a :class:`JobRecord`, in its order.
JOB_COLUMNS = (
    "job_id, name, state, reason, priority, spec, researcher_id, created_at, updated_at, owner, "
    "heartbeat_at, stop_requested, nodes, datasets"
)
#: The columns of a :class:`JobSummary`, in its order.
JOB_SUMMARY_COLUMNS = (
    "job_id, name, state, reason, priority, researcher_id, created_at, updated_at, owner, "
    "heartbeat_at, nodes, datasets"
)
#: The columns of a :class:`TaskRecord`, in its order.
TASK_COLUMNS = (
    "job_id, name, kind, state, reason, attempt, started_at, ended_at, outputs, inherited_from, "
    "progress"
)


def job_from_row(row: tuple[Any, ...]) -> JobRecord:
    """A job from a row of :data:`JOB_COLUMNS`."""
    return JobRecord(
        job_id=row[0], name=row[1], state=State(row[2]), reason=row[3], priority=row[4],
        spec=JobSpec.from_yaml(row[5]), researcher_id=row[6], created_at=row[7],
        updated_at=row[8], owner=row[9], heartbeat_at=row[10], stop_requested=bool(row[11]),
        nodes=json.loads(row[12]) if row[12] else None,
        datasets=json.loads(row[13]) if row[13] else None,
    )  # fmt: skip


def summary_from_row(row: tuple[Any, ...]) -> JobSummary:
    """A job summary from a row of :data:`JOB_SUMMARY_COLUMNS`."""
    return JobSummary(
        job_id=row[0], name=row[1], state=State(row[2]), reason=row[3], priority=row[4],
        researcher_id=row[5], created_at=row[6], updated_at=row[7], owner=row[8],
        heartbeat_at=row[9], nodes=json.loads(row[10]) if row[10] else None,
        datasets=json.loads(row[11]) if row[11] else None,
    )  # fmt: skip


def task_from_row(row: tuple[Any, ...]) -> TaskRecord:
    """A task from a row of :data:`TASK_COLUMNS`."""
    return TaskRecord(
        job_id=row[0], name=row[1], kind=row[2], state=State(row[3]), reason=row[4],
        attempt=row[5], started_at=row[6], ended_at=row[7],
        outputs=json.loads(row[8]) if row[8] else None, inherited_from=row[9],
        progress=json.loads(row[10]) if row[10] else None,
    )  # fmt: skip
