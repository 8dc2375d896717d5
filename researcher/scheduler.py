"""The scheduler: runs stored jobs, their task DAG, retries, timeouts and stops.

::

    with JobStore(settings.data_dir) as store:
        scheduler = Scheduler(store, requests)
        job = scheduler.submit(JobSpec.load(Path("job.yaml")))
        await scheduler.run_queue()        # every waiting job, highest priority first
        print(store.job(job.job_id).state)

A job first waits (state ``waiting``, its reason saying for what) until ``min_nodes`` nodes,
every mandatory node and every node a task names are online, from the nodes' heartbeats,
and fails with the missing nodes written on it once ``node_wait`` seconds have passed. Its
datasets are then found, inherited tasks copied from the earlier job, and the DAG runs:
a task starts once its upstream tasks succeeded, with their outputs filled into its inputs,
``parallelism`` tasks at once. A task that fails or outlives its timeout is retried up to
``auto_retries`` times; a task whose upstream task failed is canceled. The process running a
job owns it in the store and refreshes a heartbeat there; a stop request from another
process (``researcher job stop``) reaches it through the store. A job whose process died
stays as it was and :meth:`Scheduler.resume` continues it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from typing import Any

import anyio

from broker_net.messages import ListReply, ListRequest
from researcher.lifecycle import State
from researcher.policies import DiscardOnTimeout
from researcher.requests import Requests
from researcher.spec import ALL_NODES, JobSpec, TaskSpec
from researcher.store import JobNotFoundError, JobRecord, JobStore, owner_alive, this_process
from researcher.tasks import Approver, TaskContext, TaskError, run_task

logger = logging.getLogger(__name__)


class JobStartError(RuntimeError):
    """Raised when a job cannot start (nodes missing, nothing to inherit, no datasets); the
    message is the reason written on the failed job."""


class Scheduler:
    """Runs the jobs of a :class:`JobStore` over a started :class:`Requests`.

    Args:
        store: where jobs are kept.
        requests: the researcher's request layer.
        approver: approves plans as the nodes' operators would (simulations only).
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
        parallel_jobs: int = 1,
        discovery: float = 3.0,
        poll_interval: float = 0.25,
    ) -> None:
        if parallel_jobs < 1:
            raise ValueError("parallel_jobs must be at least 1")
        self.store = store
        self.requests = requests
        self.approver = approver
        self.parallel_jobs = parallel_jobs
        self.discovery = discovery
        self.poll_interval = poll_interval
        self._created = time.monotonic()

    def submit(self, spec: JobSpec) -> JobRecord:
        """Store ``spec`` as a new waiting job."""
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
                nodes, datasets = await self._start(job)
            except JobStartError as exc:
                logger.warning("job %s cannot start: %s", job_id, exc)
                self._cancel_rest(job_id, "the job could not start", job_state=State.FAILED,
                                  job_reason=str(exc))  # fmt: skip
                return
            self.store.set_job_state(job_id, State.RUNNING, f"running on {', '.join(nodes)}")
        else:
            nodes, datasets = list(job.nodes or []), dict(job.datasets or {})
            self.store.set_job_reason(job_id, f"resumed by process {this_process()}")
        state, reason = await self._run_dag(job_id, job.spec, nodes, datasets)
        self.store.set_job_state(job_id, state, reason)

    async def _start(self, job: JobRecord) -> tuple[list[str], dict[str, str]]:
        nodes = await self._wait_for_nodes(job)
        datasets = await self._find_datasets(job.spec, nodes)
        self.store.set_job_nodes(job.job_id, nodes, datasets)
        self._inherit(job)
        return nodes, datasets

    async def _wait_for_nodes(self, job: JobRecord) -> list[str]:
        conf = job.spec.conf
        named = set(job.spec.named_nodes())
        required = named | set(conf.mandatory_nodes)
        every_node = any(task.nodes == ALL_NODES for task in job.spec.tasks)
        deadline = time.monotonic() + conf.node_wait
        last_reason = ""
        while True:
            now = time.monotonic()
            online = set(self.requests.presence.online_ids())
            nodes = named | online if every_node else named | (required & online)
            missing = sorted(required - online)
            short = conf.min_nodes - len(nodes & online)
            listening = every_node and now < self._created + self.discovery
            if not missing and short <= 0 and not listening and nodes:
                return sorted(nodes)
            problems = []
            if missing:
                problems.append(f"nodes {', '.join(missing)} are offline")
            if short > 0:
                problems.append(f"{len(nodes & online)} of the {conf.min_nodes} nodes needed "
                                "are online")  # fmt: skip
            if not nodes and not problems:
                problems.append("no node is online")
            seen = ", ".join(sorted(online)) or "none"
            if now >= deadline and (problems or not nodes):
                raise JobStartError(
                    f"gave up after waiting {conf.node_wait:g} s for nodes: "
                    f"{'; '.join(problems)} (online: {seen})"
                )
            reason = (
                f"waiting for nodes: {'; '.join(problems)} (online: {seen}); gives up in "
                f"{max(deadline - now, 0):.0f} s"
                if problems
                else "listening for node heartbeats"
            )
            if reason != last_reason:
                self.store.set_job_reason(job.job_id, reason)
                last_reason = reason
            await anyio.sleep(0.1)

    async def _find_datasets(self, spec: JobSpec, nodes: list[str]) -> dict[str, str]:
        selector = spec.datasets
        if selector.ids:
            missing = [node for node in nodes if node not in selector.ids]
            if missing:
                raise JobStartError(f"the spec names no dataset for nodes {missing}")
            return {node: selector.ids[node] for node in nodes}
        fed = await self.requests.request(
            ListRequest(researcher_id=self.requests.researcher_id, tags=selector.tags),
            nodes,
            [DiscardOnTimeout(30)],
        )
        datasets: dict[str, str] = {}
        for node, reply in fed.replies().items():
            if isinstance(reply, ListReply) and reply.datasets:
                datasets[node] = reply.datasets[0].dataset_id
        missing = [node for node in nodes if node not in datasets]
        if missing:
            why = fed.reasons()
            detail = "; ".join(f"{n}: {why.get(n, 'no such dataset')}" for n in missing)
            raise JobStartError(f"no dataset tagged {selector.tags} on nodes {missing} ({detail})")
        return datasets

    def _inherit(self, job: JobRecord) -> None:
        inheritance = job.spec.conf.inheritance
        if inheritance is None:
            return
        copied: list[tuple[str, str, dict[str, Any] | None]] = []
        for name in inheritance.tasks:
            if self.store.task(job.job_id, name).state is State.SUCCESS:
                continue
            try:
                earlier = self.store.task(inheritance.job_id, name)
            except JobNotFoundError as exc:
                raise JobStartError(f"cannot inherit task {name}: {exc}") from exc
            if earlier.state is not State.SUCCESS:
                raise JobStartError(
                    f"cannot inherit task {name} of job {inheritance.job_id}: it is "
                    f"{earlier.state.value}, only succeeded tasks can be inherited"
                )
            # A task inherited in turn points to the job where it really ran.
            copied.append((name, earlier.inherited_from or inheritance.job_id, earlier.outputs))
        for name, origin, outputs in copied:
            self.store.set_task_state(
                job.job_id, name, State.SUCCESS,
                f"inherited from job {inheritance.job_id}: its outputs are reused, not run again",
                inherited_from=origin, outputs=outputs or {},
            )  # fmt: skip

    # --- the DAG -------------------------------------------------------------------------------

    async def _run_dag(
        self, job_id: str, spec: JobSpec, nodes: list[str], datasets: dict[str, str]
    ) -> tuple[State, str]:
        outputs: dict[str, dict[str, Any]] = {}
        resumed: set[str] = set()
        for task in self.store.tasks(job_id):
            if task.state is State.SUCCESS:
                outputs[task.name] = task.outputs or {}
            elif task.state is State.RUNNING:
                resumed.add(task.name)
        running: set[str] = set()
        changed = [anyio.Event()]

        async def run_one(name: str) -> None:
            try:
                await self._run_task(job_id, spec, name, nodes, datasets, outputs,
                                     resume=name in resumed)  # fmt: skip
            finally:
                running.discard(name)
                changed[0].set()

        async with anyio.create_task_group() as group:
            while True:
                states = {t.name: t for t in self.store.tasks(job_id)}
                for name in spec.order():
                    record = states[name]
                    if record.state is not State.WAITING or name in running:
                        continue
                    broken = [
                        upstream
                        for upstream in spec.task(name).upstream
                        if states[upstream].state in _BROKEN
                    ]
                    if broken:
                        self.store.set_task_state(
                            job_id, name, State.CANCELED,
                            f"upstream task {broken[0]} {states[broken[0]].state.value}",
                        )  # fmt: skip
                states = {t.name: t for t in self.store.tasks(job_id)}
                for name in spec.order():
                    if len(running) >= spec.conf.parallelism:
                        break
                    record = states[name]
                    startable = record.state is State.WAITING or (
                        name in resumed and record.state is State.RUNNING
                    )
                    ready = all(states[u].state is State.SUCCESS for u in spec.task(name).upstream)
                    if startable and ready and name not in running:
                        running.add(name)
                        group.start_soon(run_one, name)
                if not running:
                    break
                await changed[0].wait()
                changed[0] = anyio.Event()
        return _job_outcome(self.store.tasks(job_id))

    async def _run_task(
        self, job_id: str, spec: JobSpec, name: str, nodes: list[str],
        datasets: dict[str, str], outputs: dict[str, dict[str, Any]], *, resume: bool,
    ) -> None:  # fmt: skip
        task = spec.task(name)
        timeout = task.timeout or spec.conf.task_timeout
        tries = 0
        while True:
            tries += 1
            if resume:
                record = self.store.task(job_id, name)
                resume = False
                logger.info("job %s: task %s resumes attempt %d", job_id, name, record.attempt)
            else:
                on = nodes if task.nodes == ALL_NODES else task.nodes
                record = self.store.set_task_state(
                    job_id, name, State.RUNNING, f"running on {', '.join(on)}"
                )
            try:
                filled = fill_inputs(task, outputs)
                context = TaskContext(
                    requests=self.requests, store=self.store, job_id=job_id, spec=spec,
                    task=filled, attempt=record.attempt,
                    nodes=nodes if filled.nodes == ALL_NODES else list(filled.nodes),
                    datasets=datasets, approver=self.approver,
                )  # fmt: skip
                with anyio.move_on_after(timeout) as deadline:
                    result = await run_task(context)
            except TaskError as exc:
                state, reason = State.FAILED, f"attempt {record.attempt}: {exc}"
            except Exception as exc:
                logger.exception("job %s: task %s failed", job_id, name)
                state = State.FAILED
                reason = f"attempt {record.attempt}: {type(exc).__name__}: {exc}"
            else:
                if not deadline.cancelled_caught:
                    outputs[name] = result
                    self.store.set_task_state(
                        job_id, name, State.SUCCESS, f"attempt {record.attempt} succeeded",
                        outputs=result,
                    )  # fmt: skip
                    return
                state = State.TIMEOUT
                reason = f"attempt {record.attempt}: still running after {timeout:g} s; stopped"
            logger.warning("job %s: task %s %s: %s", job_id, name, state.value, reason)
            self.store.set_task_state(job_id, name, state, reason)
            if tries > spec.conf.auto_retries:
                return
            self.store.set_task_state(
                job_id, name, State.WAITING,
                f"automatic retry {tries} of {spec.conf.auto_retries} after: {reason}",
            )  # fmt: skip

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


def fill_inputs(task: TaskSpec, outputs: Mapping[str, Mapping[str, Any]]) -> TaskSpec:
    """Return ``task`` with each input's parameter set from the producing task's output.

    Raises:
        TaskError: an upstream output is missing.
    """
    if not task.inputs:
        return task
    data = task.model_dump()
    for target, ref in task.inputs.items():
        value: Any = outputs.get(ref.task)
        for part in ref.key.split("."):
            if not isinstance(value, Mapping) or part not in value:
                raise TaskError(f"input {target}: task {ref.task} has no output {ref.key!r}")
            value = value[part]
        parts = target.split(".")
        holder = data
        for part in parts[:-1]:
            holder = holder.setdefault(part, {})
        holder[parts[-1]] = value
    return type(task).model_validate(data)


_BROKEN = frozenset({State.FAILED, State.TIMEOUT, State.CANCELED})


def _job_outcome(tasks: list[Any]) -> tuple[State, str]:
    if all(task.state is State.SUCCESS for task in tasks):
        return State.SUCCESS, f"all {len(tasks)} tasks succeeded"
    for wanted in (State.TIMEOUT, State.FAILED, State.CANCELED):
        for task in tasks:
            if task.state is wanted:
                return wanted, f"task {task.name} {wanted.value}: {task.reason}"
    unfinished = [task.name for task in tasks if not task.state.finished]
    return State.FAILED, f"tasks {unfinished} could not run"
