"""The job store: jobs, tasks, state history, requests in flight, results and models."""

from researcher.orchestration.store.job_store import JobStore
from researcher.orchestration.store.records import (
    OWNER_STALE_AFTER,
    HistoryEntry,
    InFlight,
    JobNotFoundError,
    JobRecord,
    NodeResult,
    ProgressRecord,
    RoundRow,
    TaskRecord,
    now_text,
    owner_alive,
    this_process,
)

__all__ = [
    "OWNER_STALE_AFTER",
    "HistoryEntry",
    "InFlight",
    "JobNotFoundError",
    "JobRecord",
    "JobStore",
    "NodeResult",
    "ProgressRecord",
    "RoundRow",
    "TaskRecord",
    "now_text",
    "owner_alive",
    "this_process",
]
