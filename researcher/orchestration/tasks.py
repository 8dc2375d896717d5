"""The work of each kind of task: the requests it sends, what it records, what it outputs.

:func:`run_task` runs one attempt of one task whose inputs are already filled in. Every
request goes through a job of :mod:`researcher.jobs` with :class:`RequestHooks` that record
it in the store before it is sent, then when it reached each node and when each node
answered; a task attempt that a new process resumes finds those records and resumes the same
requests (see :meth:`TaskContext.hooks`). Training commits each round, with its model file,
in one transaction, and a resumed training task continues after its last committed round.
"""

from __future__ import annotations

import hashlib
import logging
import sys
import time
import types
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import numpy as np
import numpy.typing as npt

from broker_net.codes import PreprocStep, TrainingPlanStatus
from researcher.errors import RequestError
from researcher.jobs.analytics import FARequestJob
from researcher.jobs.experiment import Experiment, RoundRecord
from researcher.jobs.monitor import MonitorCallback
from researcher.jobs.plans import TrainingPlanApproveJob, TrainingPlanCheckJob
from researcher.jobs.preprocessing import PreprocRequestJob
from researcher.jobs.sampling import Sampling
from researcher.jobs.strategies import make_strategy
from researcher.orchestration.progress_recorder import task_monitor
from researcher.orchestration.spec import JobSpec, PlanSpec
from researcher.orchestration.store.job_store import JobStore
from researcher.orchestration.store.records import NodeResult, RoundRow, now_text
from researcher.orchestration.task_specs import (
    AnalyticsTask,
    PlanApprovalTask,
    PlanCheckTask,
    PreprocessingTask,
    TaskSpec,
    TrainingTask,
    secagg_settings,
)
from researcher.requests.federated import FederatedRequest
from researcher.requests.hooks import RequestHooks
from researcher.requests.policies import DiscardOnTimeout, StopOnError
from researcher.requests.router import Requests
from training_plans.plan import TrainingPlan

logger = logging.getLogger(__name__)

Approver = Callable[[str, str], Awaitable[None]]
"""``await approve(node_id, plan_id)``: what a node's operator does to approve a plan.

Simulations approve every plan a job submits this way; real nodes leave it to their
operators (``node-agent plans approve``), and a plan-check task waits for them.
"""


class TaskError(RuntimeError):
    """Raised when a task cannot finish; the message is the reason stored on the task."""


@dataclass
class TaskContext:
    """What one attempt of one task runs with.

    Attributes:
        task: the task, its inputs already filled in.
        nodes: the nodes the task runs on.
        datasets: each node's dataset id.
        approver: approves plans as the nodes' operators would (simulations only).
        monitor: also receives the progress of training rounds, which the store keeps.
    """

    requests: Requests
    store: JobStore
    job_id: str
    spec: JobSpec
    task: TaskSpec
    attempt: int
    nodes: list[str]
    datasets: dict[str, str]
    approver: Approver | None = None
    monitor: MonitorCallback | None = None

    @property
    def node_datasets(self) -> dict[str, str]:
        """Dataset id of each of the task's nodes."""
        missing = [node for node in self.nodes if node not in self.datasets]
        if missing:
            raise TaskError(f"no dataset known for nodes {missing}")
        return {node: self.datasets[node] for node in self.nodes}

    def hooks(self, slot: str) -> RequestHooks:
        """Hooks recording the request of ``slot``, resuming it when an earlier process of
        this same attempt sent it.

        Nodes the earlier request reached and that had not answered are waited for (their
        replies are in the durable reply queue); nodes that had answered are asked again
        under the same request id, and answer from the reply they stored, without running
        the work twice.
        """
        store, job_id, name, attempt = self.store, self.job_id, self.task.name, self.attempt
        earlier = store.in_flight(job_id, name, attempt, slot)
        request_id, already_sent = None, None
        if earlier is not None:
            request_id = earlier.request_id
            already_sent = {
                node: at
                for node, at in earlier.sent_at.items()
                if node not in earlier.answered and node in self.nodes
            }
            logger.info("task %s resumes request %s (%s): waiting for %s", name, request_id,
                        slot, sorted(already_sent))  # fmt: skip
        return RequestHooks(
            request_id=request_id,
            already_sent=already_sent,
            on_sending=lambda rid, nodes: store.record_request(
                job_id, name, attempt, slot, rid, nodes
            ),
            on_sent=store.record_sent,
            on_answer=store.record_answer,
        )

    def record(self, fed: FederatedRequest | None, slot: str) -> None:
        """Store each node's answer to a finished request."""
        if fed is None:
            return
        self.store.add_node_results(
            self.job_id, self.task.name, self.attempt, slot, 0, node_results(fed)
        )

    def progress(self, reason: str, **values: Any) -> None:
        """Say what the task is doing."""
        self.store.set_task_progress(self.job_id, self.task.name, values, reason)


def node_results(fed: FederatedRequest) -> list[NodeResult]:
    """Each node's status, reason and times in a finished request."""
    statuses, reasons, timings = fed.status(), fed.reasons(), fed.timings()
    replies = fed.replies()
    results = []
    for node in fed.nodes:
        timing = timings[node]
        reply = replies.get(node)
        results.append(
            NodeResult(
                node_id=node, request_id=fed.request_id, status=statuses[node].value,
                reason=reasons.get(node, ""), sent_at=timing.sent_at,
                round_trip=timing.round_trip, processing=timing.processing,
                queue_and_transit=timing.queue_and_transit,
                sample_size=getattr(reply, "sample_size", None),
                metrics=dict(getattr(reply, "metrics", {}) or {}) or None,
            )
        )  # fmt: skip
    return results


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
        return await _training(ctx, task)
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
        raise TaskError(f"no statistics from nodes {missing} ({_reasons(job.request)})")
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
            raise TaskError(f"{step.value} failed on nodes {missing} ({_reasons(job.request)})")
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
        raise TaskError(f"nodes {missing} did not register the plan ({_reasons(job.request)})")
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


async def _training(ctx: TaskContext, task: TrainingTask) -> dict[str, Any]:
    store, job_id = ctx.store, ctx.job_id
    plan = ctx.spec.plans[task.plan]
    plan_class = load_plan_class(plan)
    folder = store.model_dir(job_id, task.name, ctx.attempt)
    done = store.rounds(job_id, task.name, ctx.attempt)
    models = store.models(job_id, task.name)
    strategy = make_strategy(task.strategy.name, **task.strategy.settings())
    if done:
        initial = _load_params(models[done[-1].round])
        state = _state_path(models[done[-1].round])
        if state.exists():
            strategy.load_state(_load_params(state))
    else:
        model = plan_class()
        model.init_model(task.model_args)
        initial = dict(model.get_params())
        path = _save_params(folder / "round-0.npz", initial)
        store.add_model(job_id, task.name, ctx.attempt, 0, path)
    sampling_spec = task.sampling
    sampling = Sampling(**sampling_spec.model_dump()) if sampling_spec is not None else None
    experiment = Experiment(
        ctx.requests, plan=plan_class, source=plan.source, datasets=ctx.node_datasets,
        rounds=task.rounds, training_args=task.training_args, model_args=task.model_args,
        state_ids={n: task.state_ids.get(n) for n in ctx.nodes},
        policies=[DiscardOnTimeout(task.request_timeout)],
        min_replies=task.min_replies or (sampling.min_nodes if sampling else len(ctx.nodes)),
        experiment_id=f"{job_id}.{task.name}", initial_params=initial,
        hooks=lambda number: ctx.hooks(f"round-{number}"), strategy=strategy, sampling=sampling,
        encrypt_aux_var=task.strategy.encrypt_aux_var, monitor=task_monitor(ctx),
        secagg=(secagg := secagg_settings(task.secagg)) is not None,
        secagg_options=secagg.training_options() if secagg else None,
    )  # fmt: skip
    if done:
        ctx.progress(f"resuming after round {done[-1].round} of {task.rounds}",
                     round=done[-1].round, rounds=task.rounds)  # fmt: skip

    def on_round(record: RoundRecord) -> None:
        path = _save_params(folder / f"round-{record.round}.npz", experiment.params)
        if state := experiment.strategy.state():
            _save_params(_state_path(path), state)
        store.commit_round(
            job_id, task.name, ctx.attempt,
            RoundRow(task.name, ctx.attempt, record.round, record.request_id,
                     record.aggregated_metrics, record.failed, record.duration, now_text()),
            _round_results(record), path, task.rounds,
        )  # fmt: skip

    await experiment.run(on_round, first_round=len(done) + 1)
    rounds = store.rounds(job_id, task.name, ctx.attempt)
    final = store.models(job_id, task.name)[rounds[-1].round]
    params = _load_params(final)
    return {
        "rounds": len(rounds),
        "metrics": rounds[-1].metrics,
        "model": str(final.relative_to(store.data_dir)),
        "parameters": {name: list(np.shape(value)) for name, value in params.items()},
    }


def _round_results(record: RoundRecord) -> list[NodeResult]:
    results = []
    for node in sorted(set(record.timings) | set(record.nodes) | set(record.failed)):
        timing = record.timings.get(node)
        results.append(
            NodeResult(
                node_id=node, request_id=record.request_id,
                status="SUCCESS" if node in record.nodes else "FAILED",
                reason=record.failed.get(node, ""),
                sent_at=timing.sent_at if timing else None,
                round_trip=timing.round_trip if timing else None,
                processing=timing.processing if timing else None,
                queue_and_transit=timing.queue_and_transit if timing else None,
                sample_size=record.sample_sizes.get(node),
                metrics=record.metrics.get(node),
            )
        )  # fmt: skip
    return results


def load_plan_class(plan: PlanSpec) -> type[TrainingPlan]:
    """Build the plan's class from its source, as a node does, to create the initial model.

    The source is the researcher's own plan (from the job spec), run in this process.

    Raises:
        TaskError: the source fails to run or its class is not a TrainingPlan.
    """
    digest = hashlib.sha256(plan.source.encode("utf-8")).hexdigest()[:16]
    name = f"broker_net_job_plan_{digest}"
    module = sys.modules.get(name)
    if module is None:
        module = types.ModuleType(name)
        sys.modules[name] = module
        try:
            exec(compile(plan.source, f"<plan {plan.class_name}>", "exec"), module.__dict__)
        except Exception as exc:
            del sys.modules[name]
            raise TaskError(f"the plan {plan.class_name} fails to load: {exc}") from exc
    found = getattr(module, plan.class_name, None)
    if not (isinstance(found, type) and issubclass(found, TrainingPlan)):
        raise TaskError(f"{plan.class_name} is not a TrainingPlan subclass")
    return found


def _save_params(path: Path, params: dict[str, npt.NDArray[Any]]) -> Path:
    np.savez(path, **params)  # type: ignore[arg-type]
    return path


def _state_path(model: Path) -> Path:
    """The strategy's state saved beside a round's model."""
    return model.with_name(f"{model.stem}.strategy.npz")


def _load_params(path: Path) -> dict[str, npt.NDArray[np.float64]]:
    with np.load(path) as data:
        return {name: np.asarray(data[name], dtype=np.float64) for name in data.files}


def _reasons(fed: FederatedRequest | None) -> str:
    if fed is None:
        return "no request was sent"
    reasons = fed.reasons()
    errors = fed.errors()
    parts = [f"{node}: {reason}" for node, reason in reasons.items()]
    parts += [f"{n}: {e.code.name} {e.message}" for n, e in errors.items() if n not in reasons]
    return "; ".join(parts) or "no reason given"
