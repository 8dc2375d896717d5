"""The job store: jobs, tasks, their state history, results and models, in the researcher's
data folder (the tables are described in :mod:`researcher.orchestration.store.database`).

:class:`JobStore` is made of one part per concern, each a class of its own on the same file:
:class:`~researcher.orchestration.store.job_table.JobTable` (jobs and their owners),
:class:`~researcher.orchestration.store.task_table.TaskTable` (tasks and state history),
:class:`~researcher.orchestration.store.request_log.RequestLog` (requests in flight) and
:class:`~researcher.orchestration.store.result_log.ResultLog` (node answers, rounds, models) and
:class:`~researcher.orchestration.store.progress_log.ProgressLog` (progress nodes reported).

Every state change goes through :func:`researcher.orchestration.lifecycle.check_transition`
inside a transaction that reads the current state, so two processes can never both move a
job. Safe to share between threads; several processes may open the same store.
"""

from __future__ import annotations

from researcher.orchestration.store.job_table import JobTable
from researcher.orchestration.store.progress_log import ProgressLog
from researcher.orchestration.store.request_log import RequestLog
from researcher.orchestration.store.result_log import ResultLog


class JobStore(JobTable, RequestLog, ResultLog, ProgressLog):
    """Jobs of one researcher, in ``<data_dir>/jobs.sqlite`` and ``<data_dir>/jobs/``.

    Use it as a context manager, or call :meth:`close`.
    """
