"""Running a started job's task DAG: inputs, parallelism, retries and timeouts.

A task starts once its upstream tasks succeeded, with their outputs filled into its inputs
(:func:`fill_inputs`), ``parallelism`` tasks at once. A task that fails or outlives its
timeout is retried up to ``auto_retries`` times, ``auto_retry_delay`` seconds apart; a task
whose upstream task failed is canceled. Tasks a dead process left running resume their attempt.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import anyio

from researcher.jobs.monitor import MonitorCallback
from researcher.orchestration.lifecycle import State
from researcher.orchestration.spec import JobSpec
from researcher.orchestration.store.job_store import JobStore
from researcher.orchestration.task_context import Approver, TaskContext, TaskError
from researcher.orchestration.task_specs import ALL_NODES, TaskSpec
from researcher.orchestration.tasks import run_task
from researcher.requests.router import Requests

logger = logging.getLogger(__name__)


class DagRun:
    """Runs the task DAG of jobs of a store over the researcher's request layer.

    Args:
        approver: approves plans as the nodes' operators would (simulations only).
        monitor: receives the progress of training rounds (see :mod:`researcher.jobs.monitor`).
    """

    def __init__(
        self, store: JobStore, requests: Requests, *, approver: Approver | None = None,
        monitor: MonitorCallback | None = None,
    ) -> None:  # fmt: skip
        self.store = store
        self.requests = requests
        self.approver = approver
        self.monitor = monitor

    async def __call__(
        self, job_id: str, spec: JobSpec, nodes: list[str], datasets: dict[str, str]
    ) -> tuple[State, str]:
        """Run the job's unfinished tasks on ``nodes`` and return the job's final state and
        why."""
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
                    datasets=datasets, approver=self.approver, monitor=self.monitor,
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
            delay = spec.conf.auto_retry_delay
            self.store.set_task_state(
                job_id, name, State.WAITING,
                f"automatic retry {tries} of {spec.conf.auto_retries}"
                + (f" in {delay:g} s" if delay else "") + f" after: {reason}",
            )  # fmt: skip
            await anyio.sleep(delay)


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
