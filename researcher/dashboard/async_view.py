"""What the dashboard shows of an asynchronous training task (FedBuff): its model versions,
the staleness of the updates each applied, what became of every update, and the requests
the nodes are working on.

Read from the store's asynchronous training tables
(:mod:`researcher.orchestration.store.async_log`); like the rest of the snapshot, it only reads.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING

from researcher.jobs.buffered_records import UpdateStatus
from researcher.orchestration.store.job_store import JobStore
from researcher.orchestration.store.records import TaskRecord

if TYPE_CHECKING:
    from researcher.dashboard.snapshot import ProgressPoint

VERSIONS_SHOWN = 200
"""The last versions of an asynchronous task charted."""


@dataclass(frozen=True)
class VersionView:
    """One published model version: its metrics, and the updates it applied."""

    number: int
    metrics: dict[str, float]
    nodes: list[str]
    staleness: list[int]
    elapsed: float

    @property
    def mean_staleness(self) -> float:
        """The applied updates' mean staleness (0 for a version that applied none)."""
        return sum(self.staleness) / len(self.staleness) if self.staleness else 0.0


@dataclass(frozen=True)
class InFlightUpdate:
    """A training request a node is working on: the version it trains on, and for how long."""

    node_id: str
    base_version: int
    waited: float | None


@dataclass(frozen=True)
class AsyncTrainingView:
    """An asynchronous training task: versions published (of at most ``max_versions``, if it
    has a cap), how many updates met each fate, and the requests in flight."""

    task: str
    state: str
    version: int
    max_versions: int | None
    versions: list[VersionView]
    fates: dict[str, int]
    in_flight: list[InFlightUpdate]
    progress: list[ProgressPoint]


def read_async_training(
    store: JobStore,
    job_id: str,
    task: TaskRecord,
    max_versions: int | None,
    progress: list[ProgressPoint],
    now: datetime,
) -> AsyncTrainingView:
    """The versions and updates of ``task``'s current attempt."""
    rows = store.versions(job_id, task.name, task.attempt)[-VERSIONS_SHOWN:]
    versions = [
        VersionView(
            number=int(row["version"]),
            metrics=dict(row["metrics"]),
            nodes=list(row["nodes"]),
            staleness=[int(s) for s in row["staleness"]],
            elapsed=float(row["elapsed"]),
        )
        for row in rows
    ]
    updates = store.async_updates(job_id, task.name, task.attempt)
    counts = Counter(str(row["status"]) for row in updates)
    fates = {status.value: counts.get(status.value, 0) for status in UpdateStatus}
    in_flight = [
        InFlightUpdate(
            node_id=str(row["node_id"]),
            base_version=int(row["base_version"]),
            waited=_since(row["sent_at"] or row["updated_at"], now),
        )
        for row in updates
        if row["status"] == UpdateStatus.IN_FLIGHT.value
    ]
    return AsyncTrainingView(
        task=task.name, state=task.state.value,
        version=versions[-1].number if versions else 0, max_versions=max_versions,
        versions=versions, fates=fates, in_flight=sorted(in_flight, key=lambda u: u.node_id),
        progress=progress,
    )  # fmt: skip


def _since(at: str | None, now: datetime) -> float | None:
    if not at:
        return None
    when = datetime.fromisoformat(at)
    if when.tzinfo is None:
        when = when.replace(tzinfo=now.tzinfo)
    return (now - when).total_seconds()
