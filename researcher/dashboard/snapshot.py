"""What the dashboard shows of the job store, as plain data: jobs, one job's task DAG, its
training rounds with each node's part, and live training progress.

Everything here only reads the store; a snapshot is taken about once a second while a page is
open, so the queries stay small: the newest jobs, and one job in detail.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from researcher.dashboard.async_view import AsyncTrainingView, read_async_training
from researcher.dashboard.watch import NodeRow, QueueRow, SourceStatus
from researcher.orchestration.lifecycle import State
from researcher.orchestration.spec import JobSpec
from researcher.orchestration.store.job_store import JobStore
from researcher.orchestration.store.records import (
    JobNotFoundError,
    JobSummary,
    ProgressRecord,
    TaskRecord,
)
from researcher.orchestration.task_specs import AsyncTrainingTask, TrainingTask

JOBS_SHOWN = 50
"""The newest jobs the dashboard lists."""

ROUNDS_SHOWN = 200
"""The last rounds of a training task charted (its table shows fewer)."""

LIVE_ROUNDS = 3
"""The last rounds whose progress reports the live charts show."""

PROGRESS_KEPT = 3000
"""Progress reports kept in memory for the job shown (the newest)."""


@dataclass(frozen=True)
class JobRow:
    """One job in the list."""

    job_id: str
    name: str
    state: str
    reason: str
    created_at: str
    updated_at: str
    nodes: list[str]
    orphaned: bool


@dataclass(frozen=True)
class TaskRow:
    """One task of a job, with the tasks it waits for."""

    name: str
    kind: str
    state: str
    reason: str
    attempt: int
    upstream: list[str]
    started_at: str | None
    ended_at: str | None
    inherited_from: str | None


@dataclass(frozen=True)
class NodeRound:
    """One node's part of one round.

    Attributes:
        status: ``SUCCESS`` or ``FAILED`` for a finished round; ``waiting`` or ``answered``
            for the round in progress.
        waited: for the round in progress, seconds since the request went to the node.
    """

    node_id: str
    status: str
    reason: str = ""
    round_trip: float | None = None
    processing: float | None = None
    queue_and_transit: float | None = None
    waited: float | None = None
    metrics: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class RoundView:
    """One training round: its aggregated metrics and each node's part."""

    number: int
    in_progress: bool
    metrics: dict[str, float]
    duration: float | None
    nodes: list[NodeRound]


@dataclass(frozen=True)
class ProgressPoint:
    """A value a node reported while it trained: where it was, and when."""

    node_id: str
    round: int
    at: str
    values: dict[str, float]


@dataclass(frozen=True)
class TrainingView:
    """A training task's rounds: how many are done, and what each brought."""

    task: str
    state: str
    done: int
    total: int
    rounds: list[RoundView]
    progress: list[ProgressPoint]


@dataclass(frozen=True)
class JobDetail:
    """One job in detail: its tasks, its training by rounds, and its asynchronous training
    (by model versions)."""

    job: JobRow
    tasks: list[TaskRow]
    training: list[TrainingView]
    asynchronous: list[AsyncTrainingView] = field(default_factory=list)


def read_jobs(store: JobStore, limit: int = JOBS_SHOWN) -> list[JobRow]:
    """The newest ``limit`` jobs, newest first."""
    return [_job_row(job) for job in store.recent_jobs(limit)]


def pick_job(jobs: list[JobRow], wanted: str | None) -> str | None:
    """The job to show in detail: the one asked for if it is listed, else the newest running
    job, else the newest."""
    ids = [job.job_id for job in jobs]
    if wanted in ids:
        return wanted
    running = [job.job_id for job in jobs if job.state == State.RUNNING.value]
    return next(iter(running or ids), None)


def read_job(
    store: JobStore,
    job_id: str,
    *,
    listed: JobSummary | None = None,
    spec: JobSpec | None = None,
    progress: Sequence[ProgressRecord] = (),
    now: datetime | None = None,
) -> JobDetail:
    """One job in detail.

    Args:
        listed, spec: the job as just listed and its spec, when the caller has both (a job's
            spec never changes, and reading it is slow); else both are read.
        progress: what its nodes reported while training (the newest, oldest first).

    Raises:
        JobNotFoundError: there is no such job.
    """
    now = now or datetime.now(UTC)
    job: JobSummary
    if listed is None or spec is None:
        job = store.job(job_id)
        spec = job.spec
    else:
        job = listed
    records = store.tasks(job_id)
    specs = {task.name: task for task in spec.tasks}
    tasks = [
        TaskRow(
            name=t.name,
            kind=t.kind,
            state=t.state.value,
            reason=t.reason,
            attempt=t.attempt,
            upstream=list(specs[t.name].upstream) if t.name in specs else [],
            started_at=t.started_at,
            ended_at=t.ended_at,
            inherited_from=t.inherited_from,
        )
        for t in records
    ]
    training, asynchronous = [], []
    for record in records:
        task_spec = specs.get(record.name)
        if record.inherited_from is not None:
            continue
        if isinstance(task_spec, TrainingTask):
            training.append(_training(store, job_id, record, task_spec.rounds, progress, now))
        elif isinstance(task_spec, AsyncTrainingTask):
            asynchronous.append(read_async_training(
                store, job_id, record, task_spec.fedbuff.max_versions, _live(record, progress),
                now,
            ))  # fmt: skip
    return JobDetail(job=_job_row(job), tasks=tasks, training=training, asynchronous=asynchronous)


def _job_row(job: JobSummary) -> JobRow:
    return JobRow(
        job_id=job.job_id, name=job.name, state=job.state.value, reason=job.reason,
        created_at=job.created_at, updated_at=job.updated_at, nodes=list(job.nodes or []),
        orphaned=job.orphaned,
    )  # fmt: skip


def _training(
    store: JobStore, job_id: str, task: TaskRecord, total: int,
    progress: Sequence[ProgressRecord], now: datetime,
) -> TrainingView:  # fmt: skip
    rounds = store.rounds(job_id, task.name, task.attempt)[-ROUNDS_SHOWN:]
    by_round: dict[int, list[NodeRound]] = {}
    for entry in store.node_results(job_id, task.name):
        if str(entry["slot"]).startswith("round-"):
            by_round.setdefault(int(entry["round"]), []).append(_node_round(entry))
    views = [
        RoundView(
            number=row.round,
            in_progress=False,
            metrics=dict(row.metrics),
            duration=row.duration,
            nodes=by_round.get(row.round, []),
        )
        for row in rounds
    ]
    done = rounds[-1].round if rounds else 0
    if task.state is State.RUNNING and done < total:
        current = _round_in_flight(store, job_id, task, done + 1, now)
        if current is not None:
            views.append(current)
    return TrainingView(
        task=task.name, state=task.state.value, done=done, total=total, rounds=views,
        progress=_live(task, progress),
    )  # fmt: skip


def _node_round(entry: dict[str, Any]) -> NodeRound:
    return NodeRound(
        node_id=str(entry["node_id"]), status=str(entry["status"]),
        reason=str(entry["reason"] or ""), round_trip=entry["round_trip"],
        processing=entry["processing"], queue_and_transit=entry["queue_and_transit"],
        metrics=dict(entry["metrics"] or {}),
    )  # fmt: skip


def _round_in_flight(
    store: JobStore, job_id: str, task: TaskRecord, number: int, now: datetime
) -> RoundView | None:
    """The round being run, from the request the task recorded for it (none yet: None)."""
    request = store.in_flight(job_id, task.name, task.attempt, f"round-{number}")
    if request is None:
        return None
    nodes = []
    for node in sorted(request.nodes):
        sent = request.sent_at.get(node)
        waited = (now - sent).total_seconds() if sent is not None else None
        status = "answered" if node in request.answered else "waiting"
        nodes.append(NodeRound(node_id=node, status=status, waited=waited))
    return RoundView(number=number, in_progress=True, metrics={}, duration=None, nodes=nodes)


def _live(task: TaskRecord, progress: Sequence[ProgressRecord]) -> list[ProgressPoint]:
    """What the nodes reported during the task's current attempt, in its last
    :data:`LIVE_ROUNDS` rounds."""
    started = datetime.fromisoformat(task.started_at) if task.started_at else None
    mine = [
        p for p in progress
        if p.task == task.name and (started is None or _aware(p.at) >= started)
    ]  # fmt: skip
    rounds = sorted({p.round for p in mine})[-LIVE_ROUNDS:]
    return [
        ProgressPoint(node_id=p.node_id, round=p.round, at=p.at.isoformat(), values=p.values)
        for p in mine
        if p.round in rounds
    ]


def _aware(at: datetime) -> datetime:
    return at if at.tzinfo is not None else at.replace(tzinfo=UTC)


@dataclass(frozen=True)
class StoreView:
    """What the page shows of the job store: the jobs, and the one shown in detail."""

    status: str
    jobs: list[JobRow]
    job: JobDetail | None


class StoreReader:
    """Reads the job store in ``data_dir`` once it exists; never creates it.

    Safe to call from worker threads (the store is).
    """

    def __init__(self, data_dir: Path) -> None:
        self.path = data_dir / "jobs.sqlite"
        self._store: JobStore | None = None
        self._lock = threading.Lock()
        self._progress: dict[str, deque[ProgressRecord]] = {}
        self._specs: dict[str, JobSpec] = {}

    def read(self, wanted: str | None = None) -> StoreView:
        """The newest jobs and ``wanted`` (or the job :func:`pick_job` picks) in detail."""
        store = self._open()
        if store is None:
            return StoreView(f"no job store yet at {self.path}", [], None)
        listed = {job.job_id: job for job in store.recent_jobs(JOBS_SHOWN)}
        jobs = [_job_row(job) for job in listed.values()]
        chosen = pick_job(jobs, wanted)
        detail = None
        if chosen is not None:
            try:
                detail = read_job(
                    store, chosen, listed=listed[chosen], spec=self._spec(store, chosen),
                    progress=self._new_progress(store, chosen),
                )  # fmt: skip
            except JobNotFoundError:
                detail = None
        return StoreView(f"{len(jobs)} job(s) in {self.path}", jobs, detail)

    def _spec(self, store: JobStore, job_id: str) -> JobSpec:
        """The job's spec, read once: it never changes."""
        with self._lock:
            if job_id not in self._specs:
                if len(self._specs) >= JOBS_SHOWN:
                    self._specs.clear()
                self._specs[job_id] = store.job(job_id).spec
            return self._specs[job_id]

    def _new_progress(self, store: JobStore, job_id: str) -> list[ProgressRecord]:
        """The job's newest progress reports: those kept, and any stored since."""
        with self._lock:
            if job_id not in self._progress and len(self._progress) >= 8:
                self._progress.clear()
            kept = self._progress.setdefault(job_id, deque(maxlen=PROGRESS_KEPT))
            for _ in range(PROGRESS_KEPT // 1000 + 1):
                batch = store.progress(job_id, after=kept[-1].id if kept else 0, limit=1000)
                kept.extend(batch)
                if len(batch) < 1000:
                    break
            return list(kept)

    def close(self) -> None:
        """Close the store if it was opened."""
        with self._lock:
            if self._store is not None:
                self._store.close()
                self._store = None

    def _open(self) -> JobStore | None:
        with self._lock:
            if self._store is None and self.path.exists():
                self._store = JobStore(self.path.parent)
            return self._store


@dataclass(frozen=True)
class Snapshot:
    """Everything one look at the dashboard shows, as plain data."""

    taken_at: str
    namespace: str
    management_url: str
    store: StoreView
    sources: list[SourceStatus]
    nodes: list[NodeRow]
    queues: list[QueueRow]

    def as_dict(self) -> dict[str, Any]:
        """Plain data for JSON."""
        return asdict(self)
