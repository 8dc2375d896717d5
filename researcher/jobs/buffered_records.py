"""What asynchronous training records: when it stops, each request's fate, each version.

Every training request of a :class:`~researcher.jobs.buffered.BufferedExperiment` ends with
exactly one :class:`UpdateStatus`, so every update is accounted for: applied in a version,
dropped as stale, lost with its node (timeout, disconnection, error), cancelled when the job
ended while the node trained, or left in the buffer when the job ended.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Literal

import numpy as np
import numpy.typing as npt

SECAGG_REFUSED = (
    "secure aggregation cannot run in asynchronous mode: its pairwise masks cancel only in the "
    "sum over a fixed cohort of nodes, and a buffer of updates arriving one by one has none"
)
"""Why asynchronous training refuses secure aggregation."""


class UpdateStatus(StrEnum):
    """The fate of one training request of asynchronous training."""

    IN_FLIGHT = "in_flight"
    """Sent, not yet settled (only ever stored while the job runs)."""
    APPLIED = "applied"
    STALE = "stale"
    LOST = "lost"
    CANCELLED = "cancelled"
    UNAPPLIED = "unapplied"
    """Arrived, but the job ended before its buffer filled."""


@dataclass(frozen=True)
class StopWhen:
    """When asynchronous training ends: the first condition met.

    Args:
        max_versions: after publishing this version.
        time_budget: seconds of wall-clock time.
        target_metric: a version metric (the buffer's sample-weighted reply metrics, or the
            evaluation function's) that ends training once it reaches ``target_value``...
        target_value: ...at least (``target_mode`` "max") or at most ("min").
        node_wait: seconds the pool may stay empty (no node online) before training ends.

    Raises:
        ValueError: neither ``max_versions`` nor ``time_budget`` (training must end), or a
            target metric without a value.
    """

    max_versions: int | None = None
    time_budget: float | None = None
    target_metric: str | None = None
    target_value: float | None = None
    target_mode: Literal["max", "min"] = "max"
    node_wait: float = 60.0

    def __post_init__(self) -> None:
        if self.max_versions is None and self.time_budget is None:
            raise ValueError("give max_versions or a time_budget: asynchronous training must end")
        if self.max_versions is not None and self.max_versions < 1:
            raise ValueError("max_versions must be at least 1")
        if self.time_budget is not None and not self.time_budget > 0:
            raise ValueError("time_budget must be positive")
        if (self.target_metric is None) != (self.target_value is None):
            raise ValueError("give target_metric and target_value together")
        if self.target_value is not None and not math.isfinite(self.target_value):
            raise ValueError("target_value must be finite")
        if not self.node_wait > 0:
            raise ValueError("node_wait must be positive")

    def reached(self, version: int, metrics: dict[str, float]) -> str | None:
        """Why training ends after ``version`` with ``metrics``, or ``None``."""
        if self.target_metric is not None and self.target_value is not None:
            value = metrics.get(self.target_metric)
            if value is not None and (
                value >= self.target_value
                if self.target_mode == "max"
                else value <= self.target_value
            ):
                return f"{self.target_metric} {value:.4g} reached {self.target_value:g}"
        if self.max_versions is not None and version >= self.max_versions:
            return f"version {version} of {self.max_versions} published"
        return None


@dataclass(frozen=True)
class UpdateRecord:
    """One training request and what became of its update.

    Attributes:
        request_id: the request (one node each).
        base_version: the version it carried, the one the node trained on.
        staleness: versions published between that one and the update's arrival.
        applied_in: the version that applied it.
        reason: why it was lost or dropped, in words naming the node.
    """

    request_id: str
    node_id: str
    base_version: int
    status: UpdateStatus
    reason: str = ""
    staleness: int | None = None
    weight: float | None = None
    applied_in: int | None = None
    sent_at: datetime | None = None
    round_trip: float | None = None
    sample_size: int | None = None
    metrics: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class VersionRecord:
    """One published model version.

    Attributes:
        metrics: the applied updates' metrics weighted by sample size, and the evaluation
            function's, if any.
        updates: the request ids of the updates it applied, in arrival order.
        elapsed: seconds since training started (in this process).
    """

    version: int
    metrics: dict[str, float]
    updates: list[str]
    nodes: list[str]
    staleness: list[int]
    elapsed: float


@dataclass
class BufferedResult:
    """What asynchronous training produced.

    Attributes:
        stopped_because: the stop condition met, in words.
    """

    experiment_id: str
    params: dict[str, npt.NDArray[np.float64]]
    version: int
    stopped_because: str = ""
    versions: list[VersionRecord] = field(default_factory=list)
    updates: list[UpdateRecord] = field(default_factory=list)
