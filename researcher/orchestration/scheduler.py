"""The scheduler: runs stored jobs, their task DAG, retries, timeouts and stops.

::

    with JobStore(settings.data_dir) as store:
        scheduler = Scheduler(store, requests)
        job = scheduler.submit(JobSpec.load(Path("job.yaml")))
        await scheduler.run_queue()        # every waiting job, highest priority first
        print(store.job(job.job_id).state)

A job first waits for its nodes, finds their datasets and copies the tasks it inherits
(:mod:`researcher.orchestration.startup`), then its task DAG runs
(:mod:`researcher.orchestration.dag`): a task starts once its upstream tasks succeeded, with
their outputs filled into its inputs, ``parallelism`` tasks at once, and a task that fails or
outlives its timeout is retried up to ``auto_retries`` times. The process running a
job owns it in the store and refreshes a heartbeat there; a stop request from another
process (``researcher job stop``) reaches it through the store. A job whose process died
stays as it was and :meth:`Scheduler.resume` continues it.
"""

from __future__ import annotations

import logging
import time

import anyio

from researcher.jobs.monitor import MonitorCallback
from researcher.orchestration.dag import DagRun
from researcher.orchestration.lifecycle import State
from researcher.orchestration.spec import JobSpec
from researcher.orchestration.startup import JobStart, JobStartError
from researcher.orchestration.store.job_store import JobStore
from researcher.orchestration.store.records import JobRecord, owner_alive, this_process
from researcher.orchestration.task_context import Approver
from researcher.orchestration.trained_models import check_model_refs
from researcher.requests.router import Requests

logger = logging.getLogger(__name__)


class Scheduler:
    """Runs the jobs of a :class:`JobStore` over a started :class:`Requests`.

    Args:
        store: where jobs are kept.
        requests: the researcher's request layer.
        approver: approves plans as the nodes' operators would (simulations only).
        monitor: receives the progress of training rounds, which the store keeps anyway
            (see :mod:`researcher.jobs.monitor`).
        parallel_jobs: jobs :meth:`run_queue` runs at once.
        discovery: seconds to listen to heartbeats, from this scheduler's creation, before a
            job placed on every node fixes its node list (a node heartbeats every few
            seconds; a simulation that waited for its nodes passes 0).
        poll_interval: seconds between checks of the store for stop requests, and between
            heartbeats of the jobs this scheduler runs.
    """

    def __init__(
        self,
        store: JobStore,
        requests: Requests,
        *,
        approver: Approver | None = None,
        monitor: MonitorCallback | None = None,
        parallel_jobs: int = 1,
        discovery: float = 3.0,
        poll_interval: float = 0.25,
    ) -> None:
        if parallel_jobs < 1:
            raise ValueError("parallel_jobs must be at least 1")
        self.store = store
        self.requests = requests
        self.approver = approver
        self.monitor = monitor
        self.parallel_jobs = parallel_jobs
        self.discovery = discovery
        self.poll_interval = poll_interval
        self._created = time.monotonic()

    def submit(self, spec: JobSpec) -> JobRecord:
        """Store ``spec`` as a new waiting job.

        Raises:
            SpecError: a model it names (warm start, prediction) is unknown.
        """
        check_model_refs(self.store, spec)
        return self.store.create_job(spec, researcher_id=self.requests.researcher_id)

    async def run_queue(self) -> list[str]:
        """Run waiting jobs until none is left, highest priority first (then oldest), at most
        ``parallel_jobs`` at once; a job queued meanwhile takes its turn by priority.

        Returns:
            The ids of the jobs run, in the order they started.
        """
        started: list[str] = []
        running: set[str] = set()
        changed = [anyio.Event()]

        async def run_one(job_id: str) -> None:
            try:
                await self._run_owned(job_id)
            finally:
                running.discard(job_id)
                changed[0].set()

        async with anyio.create_task_group() as group:
            while True:
                if len(running) < self.parallel_jobs:
                    job = self._next_waiting(running)
                    if job is not None:
                        running.add(job.job_id)
                        started.append(job.job_id)
                        group.start_soon(run_one, job.job_id)
                        continue
                if not running:
                    break
                self._explain_queue(running)
                await changed[0].wait()
                changed[0] = anyio.Event()
        return started

    def _explain_queue(self, running: set[str]) -> None:
        """Write on each job left waiting where it stands in the queue."""
        queued = [
            job
            for job in self.store.waiting_jobs()
            if job.job_id not in running and (job.owner is None or not owner_alive(job))
        ]
        for ahead, job in enumerate(queued):
            reason = (
                f"queued: {ahead} waiting job(s) ahead of it; {len(running)} job(s) running, "
                f"{self.parallel_jobs} at most at once"
            )
            if job.reason != reason:
                self.store.set_job_reason(job.job_id, reason)

    def _next_waiting(self, exclude: set[str]) -> JobRecord | None:
        for job in self.store.waiting_jobs():
            if job.job_id in exclude or (job.owner is not None and owner_alive(job)):
                continue
            if self.store.claim(job.job_id):
                return job
        return None

    async def run_job(self, job_id: str) -> JobRecord:
        """Run one waiting job to its end.

        Raises:
            JobNotFoundError: no such job.
            ValueError: the job is not waiting, or another live process owns it.
        """
        job = self.store.job(job_id)
        if job.state is not State.WAITING:
            raise ValueError(f"job {job_id} is {job.state.value}, not waiting")
        if not self.store.claim(job_id):
            raise ValueError(f"job {job_id} is being run by process {job.owner}")
        await self._run_owned(job_id)
        return self.store.job(job_id)

    async def resume(self, job_id: str) -> JobRecord:
        """Continue a job whose process died, from where its store says it was: finished
        tasks are kept, running tasks resume their requests and rounds.

        Raises:
            JobNotFoundError: no such job.
            ValueError: the job is finished, or another live process runs it.
        """
        job = self.store.job(job_id)
        if job.state.finished:
            raise ValueError(f"job {job_id} is {job.state.value}: nothing to resume")
        if not self.store.claim(job_id):
            raise ValueError(f"job {job_id} is being run by process {job.owner}")
        await self._run_owned(job_id)
        return self.store.job(job_id)

    async def rerun(self, job_id: str) -> JobRecord:
        """Run a failed, timed-out or canceled job again: its succeeded tasks are kept, the
        others wait and run again.

        Raises:
            JobNotFoundError: no such job.
            ValueError: the job is not failed, timed out or canceled.
        """
        job = self.store.job(job_id)
        if job.state not in (State.FAILED, State.TIMEOUT, State.CANCELED):
            raise ValueError(f"job {job_id} is {job.state.value}; only failed, timed-out or "
                             "canceled jobs can be rerun")  # fmt: skip
        for task in self.store.tasks(job_id):
            if task.state in (State.FAILED, State.TIMEOUT, State.CANCELED):
                self.store.set_task_state(job_id, task.name, State.WAITING, "rerun requested")
        self.store.set_job_state(job_id, State.WAITING, "rerun requested")
        return await self.run_job(job_id)

    # --- one job -------------------------------------------------------------------------------

    async def _run_owned(self, job_id: str) -> None:
        """Run a job this process has claimed, then let go of it."""
        try:
            with anyio.CancelScope() as scope:
                async with anyio.create_task_group() as group:
                    group.start_soon(self._watch_stop, job_id, scope)
                    try:
                        await self._run(job_id)
                    finally:
                        group.cancel_scope.cancel()
            if scope.cancelled_caught:
                self._cancel_rest(job_id, "stopped on request")
        finally:
            self.store.release(job_id)

    async def _watch_stop(self, job_id: str, scope: anyio.CancelScope) -> None:
        while True:
            if self.store.beat(job_id):
                logger.warning("job %s: stop requested", job_id)
                scope.cancel()
                return
            await anyio.sleep(self.poll_interval)

    async def _run(self, job_id: str) -> None:
        job = self.store.job(job_id)
        if job.state is State.WAITING:
            try:
                start = JobStart(
                    self.store, self.requests, listen_until=self._created + self.discovery
                )
                nodes, datasets = await start(job)
            except JobStartError as exc:
                logger.warning("job %s cannot start: %s", job_id, exc)
                self._cancel_rest(job_id, "the job could not start", job_state=State.FAILED,
                                  job_reason=str(exc))  # fmt: skip
                return
            self.store.set_job_state(job_id, State.RUNNING, f"running on {', '.join(nodes)}")
        else:
            nodes, datasets = list(job.nodes or []), dict(job.datasets or {})
            self.store.set_job_reason(job_id, f"resumed by process {this_process()}")
        run_dag = DagRun(self.store, self.requests, approver=self.approver, monitor=self.monitor)
        state, reason = await run_dag(job_id, job.spec, nodes, datasets)
        self.store.set_job_state(job_id, state, reason)

    def _cancel_rest(
        self, job_id: str, reason: str, *, job_state: State = State.CANCELED,
        job_reason: str | None = None,
    ) -> None:  # fmt: skip
        cancel_unfinished(self.store, job_id, reason, job_state=job_state, job_reason=job_reason)


def cancel_unfinished(
    store: JobStore, job_id: str, reason: str, *, job_state: State = State.CANCELED,
    job_reason: str | None = None,
) -> None:  # fmt: skip
    """Cancel a job's waiting and running tasks, then move the job to ``job_state``.

    Succeeded and already finished tasks keep their state.
    """
    for task in store.tasks(job_id):
        if not task.state.finished:
            store.set_task_state(job_id, task.name, State.CANCELED, reason)
    if not store.job(job_id).state.finished:
        store.set_job_state(job_id, job_state, job_reason or reason)


def stop_job(store: JobStore, job_id: str) -> str:
    """Stop a job from any process: the process running it is asked to stop it; a job that no
    live process runs is canceled at once.

    Returns:
        What was done, in words.

    Raises:
        JobNotFoundError: no such job.
        ValueError: the job has already finished.
    """
    job = store.job(job_id)
    if job.state.finished:
        raise ValueError(f"job {job_id} is already {job.state.value}")
    if job.owner is not None and owner_alive(job):
        store.request_stop(job_id)
        return f"stop requested; process {job.owner} running job {job_id} is stopping it"
    cancel_unfinished(store, job_id, "stopped on request")
    return f"job {job_id} canceled"
