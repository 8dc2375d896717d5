"""A training task's progress: kept in the job store, then handed to the job's monitor.

Each :class:`~researcher.requests.progress.ProgressEvent` of a training task's rounds becomes a
:class:`~researcher.orchestration.store.records.ProgressRecord` of the job store (read back with
:meth:`JobStore.progress <researcher.orchestration.store.progress_log.ProgressLog.progress>`),
then goes to the monitor the job was run with, if any (``FedJob.run(monitor=...)``).
"""

from __future__ import annotations

import inspect
import logging
from typing import TYPE_CHECKING

import anyio.to_thread

from researcher.jobs.monitor import MonitorCallback
from researcher.orchestration.store.records import ProgressRecord
from researcher.requests.progress import ProgressEvent

if TYPE_CHECKING:
    from researcher.orchestration.task_context import TaskContext

logger = logging.getLogger(__name__)


def task_monitor(ctx: TaskContext) -> MonitorCallback:
    """The monitor of a training task: stores each event under the task, then calls the
    job's own monitor (``ctx.monitor``). A failure to store is logged; the job goes on."""
    store, job_id, task, monitor = ctx.store, ctx.job_id, ctx.task.name, ctx.monitor

    async def record(event: ProgressEvent) -> None:
        kept = ProgressRecord(
            id=0, job_id=job_id, task=task, round=event.round, node_id=event.node_id,
            request_id=event.request_id, at=event.sent_at, values=dict(event.values),
        )  # fmt: skip
        try:
            await anyio.to_thread.run_sync(store.add_progress, job_id, task, kept)
        except Exception as exc:
            logger.warning("job %s task %s: progress not stored: %s", job_id, task, exc)
        if monitor is not None:
            result = monitor(event)
            if inspect.isawaitable(result):
                await result

    return record
