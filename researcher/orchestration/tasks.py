"""The work of each kind of task: the requests it sends, what it records, what it outputs.

:func:`run_task` runs one attempt of one task whose inputs are already filled in. Every
request goes through a job of :mod:`researcher.jobs` with :class:`RequestHooks` that record
it in the store before it is sent, then when it reached each node and when each node
answered; a task attempt that a new process resumes finds those records and resumes the same
requests (see :meth:`TaskContext.hooks`). Training runs in
:mod:`researcher.orchestration.training_task`, prediction in
:mod:`researcher.orchestration.prediction_task`.
"""

from __future__ import annotations

import time
from typing import Any

import anyio

from broker_net.codes import PreprocStep, TrainingPlanStatus
from researcher.errors import RequestError
from researcher.jobs.analytics import FARequestJob
from researcher.jobs.plans import TrainingPlanApproveJob, TrainingPlanCheckJob
from researcher.jobs.preprocessing import PreprocRequestJob
from researcher.orchestration.async_training import run_async_training
from researcher.orchestration.prediction_task import run_prediction_task
from researcher.orchestration.round_specs import secagg_settings
from researcher.orchestration.task_context import TaskContext, TaskError, reasons
from researcher.orchestration.task_specs import (
    AnalyticsTask,
    AsyncTrainingTask,
    PlanApprovalTask,
    PlanCheckTask,
    PredictionTask,
    PreprocessingTask,
)
from researcher.orchestration.training_task import load_plan_class, run_training_task
from researcher.requests.policies import DiscardOnTimeout, StopOnError


async def run_task(ctx: TaskContext) -> dict[str, Any]:
    """Run one attempt of ``ctx.task`` and return its outputs (plain JSON data).

    Raises:
        TaskError: the task could not finish; the message says why.
    """
    task = ctx.task
    try:
        if isinstance(task, AnalyticsTask):
            return await _analytics(ctx, task)
        if isinstance(task, PreprocessingTask):
            return await _preprocessing(ctx, task)
        if isinstance(task, PlanApprovalTask):
            return await _plan_approval(ctx, task)
        if isinstance(task, PlanCheckTask):
            return await _plan_check(ctx, task)
        if isinstance(task, AsyncTrainingTask):
            return await run_async_training(ctx, task, load_plan_class(ctx.spec.plans[task.plan]))
        if isinstance(task, PredictionTask):
            return await run_prediction_task(ctx, task)
        return await run_training_task(ctx, task)
    except RequestError as exc:
        raise TaskError(str(exc)) from exc


async def _analytics(ctx: TaskContext, task: AnalyticsTask) -> dict[str, Any]:
    job = FARequestJob(
        ctx.requests, experiment_id=ctx.job_id, fa_id=task.name, datasets=ctx.node_datasets,
        stats=task.stats, dataset_schema=task.columns,
        policies=[StopOnError(), DiscardOnTimeout(task.request_timeout)],
        secagg=(secagg := secagg_settings(task.secagg)) is not None,
        secagg_options=secagg.analytics_options() if secagg else None,
        hooks=ctx.hooks("request"),
    )  # fmt: skip
    try:
        result = await job.execute()
    finally:
        ctx.record(job.request, "request")
    missing = sorted(set(ctx.nodes) - set(result.replies))
    if missing:
        raise TaskError(f"no statistics from nodes {missing} ({reasons(job.request)})")
    statistics = result.statistics
    columns = [c for c in statistics["columns"] if c not in set(task.exclude_columns)]
    outputs: dict[str, Any] = {
        "statistics": statistics,
        "columns": columns,
        "n_features": len(columns),
        "n_rows": statistics["n_rows"],
    }
    for name in ("count", "missing", "sum", "mean", "variance", "std", "min", "max"):
        if all(name in statistics["columns"][c] for c in columns):
            outputs[name] = {c: statistics["columns"][c][name] for c in columns}
    return outputs


async def _preprocessing(ctx: TaskContext, task: PreprocessingTask) -> dict[str, Any]:
    state_ids: dict[str, str | None] = {n: task.state_ids.get(n) for n in ctx.nodes}
    outputs: dict[str, Any] = {}
    for step in task.steps:
        job = PreprocRequestJob(
            ctx.requests, experiment_id=ctx.job_id, preproc_id=task.name,
            datasets=ctx.node_datasets, preproc_type=task.preproc_type, preproc_step=step,
            preproc_args=task.preproc_args if step is PreprocStep.FIT else {},
            state_ids=state_ids, policies=[DiscardOnTimeout(task.request_timeout)],
            hooks=ctx.hooks(step.value),
        )  # fmt: skip
        try:
            result = await job.execute()
        finally:
            ctx.record(job.request, step.value)
        missing = sorted(set(ctx.nodes) - set(result.replies))
        if missing:
            raise TaskError(f"{step.value} failed on nodes {missing} ({reasons(job.request)})")
        state_ids = dict(result.state_ids)
        outputs = {node: reply.preproc_output for node, reply in result.replies.items()}
    return {"state_ids": state_ids, "outputs": outputs}


async def _plan_approval(ctx: TaskContext, task: PlanApprovalTask) -> dict[str, Any]:
    source = ctx.spec.plans[task.plan].source
    job = TrainingPlanApproveJob(
        ctx.requests, training_plan=source, nodes=ctx.nodes,
        description=task.description or f"{ctx.spec.name}: plan {task.plan}",
        policies=[DiscardOnTimeout(task.request_timeout)], hooks=ctx.hooks("request"),
    )  # fmt: skip
    try:
        replies = await job.execute()
    finally:
        ctx.record(job.request, "request")
    missing = [n for n in ctx.nodes if n not in replies or replies[n].training_plan_id is None]
    if missing:
        raise TaskError(f"nodes {missing} did not register the plan ({reasons(job.request)})")
    plan_ids = {node: str(replies[node].training_plan_id) for node in ctx.nodes}
    if ctx.approver is not None:
        for node, plan_id in plan_ids.items():
            await ctx.approver(node, plan_id)
    return {"plan_ids": plan_ids, "statuses": {n: replies[n].status.value for n in ctx.nodes}}


async def _plan_check(ctx: TaskContext, task: PlanCheckTask) -> dict[str, Any]:
    source = ctx.spec.plans[task.plan].source
    deadline = time.monotonic() + task.wait
    while True:
        job = TrainingPlanCheckJob(
            ctx.requests, experiment_id=ctx.job_id, training_plan=source, nodes=ctx.nodes,
            policies=[DiscardOnTimeout(task.request_timeout)],
        )  # fmt: skip
        replies = await job.execute()
        statuses: dict[str, str] = {}
        refused: list[str] = []
        for node in ctx.nodes:
            reply = replies.get(node)
            if reply is None:
                statuses[node] = "no answer"
            elif not reply.approval_obligation:
                statuses[node] = "approval not required"
            else:
                statuses[node] = reply.status.value
            if reply is None or (
                reply.approval_obligation and reply.status is not TrainingPlanStatus.APPROVED
            ):
                refused.append(node)
        left = deadline - time.monotonic()
        if not refused or not task.require_approved or left <= 0:
            break
        ctx.progress(
            "waiting for the operators of "
            + ", ".join(f"{n} ({statuses[n]})" for n in refused)
            + f" to approve plan {task.plan} ({left:.0f} s left)",
            statuses=statuses,
        )
        await anyio.sleep(min(task.poll_interval, left))
    ctx.record(job.request, "request")
    if refused and task.require_approved:
        raise TaskError(
            f"plan {task.plan} is not approved on "
            + ", ".join(f"{n} ({statuses[n]})" for n in refused)
        )
    return {"statuses": statuses, "approved": not refused}
