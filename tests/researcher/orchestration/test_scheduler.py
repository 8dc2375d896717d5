"""The scheduler on the in-memory transport: DAG order and outputs, parallelism, priority,
retries, timeouts, inheritance, nodes missing, stop."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

import anyio
import pytest

from broker_net.codes import ErrorCode
from broker_net.crypto.authentication import Security
from broker_net.crypto.introductions import introduce
from broker_net.memory import MemoryBroker, MemoryTransport
from broker_net.messages import FARequest, PreprocRequest, TrainRequest
from broker_net.topology import Topology
from node_agent.agent import NodeAgent
from node_agent.context import HandlerError, NodeContext
from node_agent.handlers import HANDLERS, Handler
from node_agent.settings import NodeSettings
from researcher.orchestration.fedjob import FedJob
from researcher.orchestration.lifecycle import State
from researcher.orchestration.model_specs import EvaluationSpec
from researcher.orchestration.scheduler import Scheduler, stop_job
from researcher.orchestration.store.job_store import JobStore
from researcher.orchestration.task_specs import (
    AnalyticsTask,
    PlanApprovalTask,
    PlanCheckTask,
    PreprocessingTask,
    TrainingTask,
)
from researcher.requests.router import Requests
from simulation.demo_plan import BreastCancerPlan
from simulation.demo_setup import register_demo_shard
from simulation.federation import operator

pytestmark = pytest.mark.anyio

NODES = ["n1", "n2"]
TRAINING_ARGS = {"epochs": 1, "batch_size": 16, "learning_rate": 0.1, "seed": 1}
Calls = list[tuple[str, Any]]


def recording(calls: Calls, handler: Handler) -> Handler:
    """A handler that notes each request it gets, then lets ``handler`` answer."""

    async def handle(request: Any, context: NodeContext) -> Any:
        calls.append((context.node_id, request))
        return await handler(request, context)

    return handle


def failing_first(times: int) -> Handler:
    """An analytics handler that answers an error ``times`` times, then computes."""
    left = [times]

    async def handle(request: Any, context: NodeContext) -> Any:
        if left[0]:
            left[0] -= 1
            raise HandlerError(ErrorCode.NODE_ERROR, "a passing failure")
        return await HANDLERS["fa_request"](request, context)

    return handle


def slow(seconds: float, handler: Handler) -> Handler:
    async def handle(request: Any, context: NodeContext) -> Any:
        await anyio.sleep(seconds)
        return await handler(request, context)

    return handle


@asynccontextmanager
async def network(
    root: Path,
    handlers: Callable[[str], dict[str, Handler]] | None = None,
    heartbeat_interval: float = 0.2,
) -> AsyncIterator[Requests]:
    """Node agents n1 and n2, each with a demo shard, and researcher alice, in memory; a node
    counts as gone after three ``heartbeat_interval`` without a heartbeat read."""
    broker = MemoryBroker()
    topology = Topology("jobs")
    introduce("alice", root / "researcher", {node: root / "nodes" / node for node in NODES})
    security = Security.load(
        root / "researcher" / "identity",
        "alice",
        "researcher",
        root / "researcher" / "trusted-nodes",
    )
    async with AsyncExitStack() as stack:
        for index, node in enumerate(NODES):
            register_demo_shard(root / "nodes" / node, index, len(NODES))
            settings = NodeSettings(
                node_id=node, data_dir=root / "nodes" / node, namespace=topology.namespace,
                heartbeat_interval=heartbeat_interval,
            )  # fmt: skip
            transport = await stack.enter_async_context(MemoryTransport(broker))
            agent_handlers = {**HANDLERS, **(handlers(node) if handlers else {})}
            await stack.enter_async_context(
                NodeAgent(settings, transport, handlers=agent_handlers, shutdown_grace=0.2)
            )
        transport = await stack.enter_async_context(MemoryTransport(broker))
        requests = await stack.enter_async_context(
            Requests(transport, "alice", topology=topology, security=security)
        )
        await requests.wait_for_nodes(NODES, timeout=10)
        yield requests


def scheduler_for(root: Path, requests: Requests, store: JobStore, **kwargs: Any) -> Scheduler:
    return Scheduler(store, requests, approver=operator(root / "nodes"), discovery=0, **kwargs)


def training_job(
    name: str = "dag", rounds: int = 2, evaluation: EvaluationSpec | None = None, **settings: Any
) -> FedJob:
    """Approval and check, analytics, standardisation with its statistics, then training
    (with ``evaluation`` rounds if given)."""
    job = FedJob(name, **settings)
    plan = job.plan(BreastCancerPlan)
    job.to_nodes(PlanApprovalTask(name="approve", plan=plan))
    job.to_nodes(PlanCheckTask(name="check", plan=plan, depends_on=["approve"]))
    stats = job.to_nodes(
        AnalyticsTask(name="stats", stats=["count", "mean", "std"], exclude_columns=["target"])
    )
    scale = job.to_nodes(
        PreprocessingTask(
            name="scale", preproc_type="standardize",
            inputs={"preproc_args.mean": stats.output("mean"),
                    "preproc_args.std": stats.output("std")},
        )
    )  # fmt: skip
    job.to_nodes(
        TrainingTask(
            name="train", plan=plan, rounds=rounds, depends_on=["check"],
            training_args=TRAINING_ARGS, evaluation=evaluation,
            inputs={"state_ids": scale.output("state_ids"),
                    "model_args.n_features": stats.output("n_features")},
        )
    )  # fmt: skip
    return job


def analytics_job(name: str, *names: str, **settings: Any) -> FedJob:
    job = FedJob(name, **settings)
    for task in names or ("stats",):
        job.to_nodes(AnalyticsTask(name=task, stats=["mean"]))
    return job


def first(store: JobStore, job_id: str, task: str, state: State) -> int:
    """Position in the history of the first time ``task`` entered ``state``."""
    for index, entry in enumerate(store.history(job_id)):
        if entry.task == task and entry.to_state is state:
            return index
    raise AssertionError(f"{task} never entered {state}")


async def test_tasks_run_after_their_upstream_and_take_its_outputs(tmp_path: Path) -> None:
    calls: Calls = []

    def handlers(node: str) -> dict[str, Handler]:
        return {kind: recording(calls, HANDLERS[kind])
                for kind in ("fa_request", "preproc_request", "train_request")}  # fmt: skip

    async with network(tmp_path, handlers) as requests:
        with JobStore(tmp_path / "researcher") as store:
            scheduler = scheduler_for(tmp_path, requests, store)
            job = scheduler.submit(training_job(parallelism=3).spec)
            record = await scheduler.run_job(job.job_id)

            assert record.state is State.SUCCESS, record.reason
            for task, upstream in [("check", "approve"), ("scale", "stats"),
                                   ("train", "scale"), ("train", "check")]:  # fmt: skip
                assert first(store, job.job_id, upstream, State.SUCCESS) < first(
                    store, job.job_id, task, State.RUNNING
                )
            stats = store.task(job.job_id, "stats").outputs or {}
            scale = store.task(job.job_id, "scale").outputs or {}
    fits = [r for _, r in calls if isinstance(r, PreprocRequest) and r.preproc_step == "fit"]
    assert len(fits) == 2
    assert all(r.preproc_args == {"mean": stats["mean"], "std": stats["std"]} for r in fits)
    assert "target" not in stats["mean"] and stats["n_features"] == 30
    trains = [(node, r) for node, r in calls if isinstance(r, TrainRequest)]
    assert len(trains) == 2 * len(NODES)
    assert all(r.state_id == scale["state_ids"][node] for node, r in trains)
    assert all(r.model_args == {"n_features": 30} for _, r in trains)


@pytest.mark.parametrize("parallelism", [1, 2])
async def test_parallelism_bounds_the_tasks_running_at_once(
    tmp_path: Path, parallelism: int
) -> None:
    def handlers(node: str) -> dict[str, Handler]:
        return {"fa_request": slow(0.3, HANDLERS["fa_request"])}

    async with network(tmp_path, handlers) as requests:
        with JobStore(tmp_path / "researcher") as store:
            scheduler = scheduler_for(tmp_path, requests, store)
            job = scheduler.submit(analytics_job("two", "a", "b", parallelism=parallelism).spec)
            record = await scheduler.run_job(job.job_id)
            assert record.state is State.SUCCESS
            b_started = first(store, job.job_id, "b", State.RUNNING)
            a_ended = first(store, job.job_id, "a", State.SUCCESS)
    assert (b_started < a_ended) == (parallelism == 2)


async def test_waiting_jobs_run_by_priority(tmp_path: Path) -> None:
    def handlers(node: str) -> dict[str, Handler]:
        return {"fa_request": slow(0.2, HANDLERS["fa_request"])}

    async with network(tmp_path, handlers) as requests:
        with JobStore(tmp_path / "researcher") as store:
            scheduler = scheduler_for(tmp_path, requests, store)
            low = scheduler.submit(analytics_job("low", priority=1).spec)
            high = scheduler.submit(analytics_job("high", priority=9).spec)
            middle = scheduler.submit(analytics_job("middle", priority=5).spec)
            also_low = scheduler.submit(analytics_job("also-low", priority=1).spec)

            async with anyio.create_task_group() as group:
                done: list[list[str]] = []
                group.start_soon(lambda: _collect(done, scheduler.run_queue()))
                with anyio.fail_after(5):
                    while store.job(high.job_id).state is not State.RUNNING:
                        await anyio.sleep(0.01)
                reasons = [store.job(j.job_id).reason for j in (middle, low, also_low)]
            order = done[0]

            assert reasons == [
                f"queued: {ahead} waiting job(s) ahead of it; 1 job(s) running, 1 at most at once"
                for ahead in range(3)
            ]

            assert order == [high.job_id, middle.job_id, low.job_id, also_low.job_id]
            started = {
                job_id: next(e.at for e in store.history(job_id) if e.to_state is State.RUNNING)
                for job_id in order
            }
            assert sorted(order, key=started.__getitem__) == order
            assert all(store.job(job_id).state is State.SUCCESS for job_id in order)


async def _collect(into: list[list[str]], started: Awaitable[list[str]]) -> None:
    into.append(await started)


async def test_a_failed_task_is_retried_to_success(tmp_path: Path) -> None:
    def handlers(node: str) -> dict[str, Handler]:
        return {"fa_request": failing_first(1)} if node == "n1" else {}

    async with network(tmp_path, handlers) as requests:
        with JobStore(tmp_path / "researcher") as store:
            scheduler = scheduler_for(tmp_path, requests, store)
            job = scheduler.submit(analytics_job("flaky", auto_retries=1).spec)
            record = await scheduler.run_job(job.job_id)

            task = store.task(job.job_id, "stats")
            moves = [(e.from_state, e.to_state) for e in store.history(job.job_id)
                     if e.task == "stats"]  # fmt: skip
            failure = next(e for e in store.history(job.job_id)
                           if e.task == "stats" and e.to_state is State.FAILED)  # fmt: skip
    assert record.state is State.SUCCESS
    assert task.state is State.SUCCESS and task.attempt == 2
    assert moves == [
        (None, State.WAITING), (State.WAITING, State.RUNNING), (State.RUNNING, State.FAILED),
        (State.FAILED, State.WAITING), (State.WAITING, State.RUNNING),
        (State.RUNNING, State.SUCCESS),
    ]  # fmt: skip
    assert "n1" in failure.reason and "a passing failure" in failure.reason


async def test_retries_wait_the_auto_retry_delay(tmp_path: Path) -> None:
    delay = 0.3

    def handlers(node: str) -> dict[str, Handler]:
        return {"fa_request": failing_first(2)} if node == "n1" else {}

    async with network(tmp_path, handlers) as requests:
        with JobStore(tmp_path / "researcher") as store:
            scheduler = scheduler_for(tmp_path, requests, store)
            spec = analytics_job("patient", auto_retries=2, auto_retry_delay=delay).spec
            assert spec.conf.auto_retry_delay == delay
            job = scheduler.submit(spec)
            started = time.monotonic()
            record = await scheduler.run_job(job.job_id)
            elapsed = time.monotonic() - started
            history = [e for e in store.history(job.job_id) if e.task == "stats"]
    assert record.state is State.SUCCESS
    failed = [datetime.fromisoformat(e.at) for e in history if e.to_state is State.FAILED]
    retried = [
        datetime.fromisoformat(e.at)
        for e in history
        if e.to_state is State.RUNNING and e.from_state is State.WAITING
    ][1:]
    assert len(failed) == len(retried) == 2
    for failure, retry in zip(failed, retried, strict=True):
        assert (retry - failure).total_seconds() >= delay
    assert elapsed >= 2 * delay
    assert any("automatic retry 1 of 2 in 0.3 s" in e.reason for e in history)


def test_a_negative_or_infinite_retry_delay_is_refused() -> None:
    for value in (-1, float("inf")):
        with pytest.raises(ValueError, match="auto_retry_delay"):
            analytics_job("bad", auto_retry_delay=value)


async def test_a_rerun_keeps_the_succeeded_tasks_and_runs_the_failed_ones(
    tmp_path: Path,
) -> None:
    def handlers(node: str) -> dict[str, Handler]:
        return {"fa_request": failing_first(1)} if node == "n2" else {}

    job = FedJob("rerun")
    job.to_nodes(PlanApprovalTask(name="approve", plan=job.plan(BreastCancerPlan)))
    job.to_nodes(AnalyticsTask(name="stats", stats=["mean"], depends_on=["approve"]))
    async with network(tmp_path, handlers) as requests:
        with JobStore(tmp_path / "researcher") as store:
            scheduler = scheduler_for(tmp_path, requests, store)
            failed = await scheduler.run_job(scheduler.submit(job.spec).job_id)
            assert failed.state is State.FAILED
            assert failed.reason.startswith("task stats failed: attempt 1: node n2 answered")

            rerun = await scheduler.rerun(failed.job_id)

            tasks = {t.name: (t.state, t.attempt) for t in store.tasks(rerun.job_id)}
            with pytest.raises(ValueError, match="only failed, timed-out or canceled"):
                await scheduler.rerun(rerun.job_id)
    assert rerun.state is State.SUCCESS
    assert tasks == {"approve": (State.SUCCESS, 1), "stats": (State.SUCCESS, 2)}


async def test_a_task_past_its_timeout_is_stopped_and_marked_timeout(tmp_path: Path) -> None:
    def handlers(node: str) -> dict[str, Handler]:
        return {"fa_request": slow(30, HANDLERS["fa_request"])}

    job = analytics_job("late", task_timeout=0.5, auto_retries=1)
    job.to_nodes(PreprocessingTask(name="after", preproc_type="standardize", depends_on=["stats"]))
    async with network(tmp_path, handlers) as requests:
        with JobStore(tmp_path / "researcher") as store:
            scheduler = scheduler_for(tmp_path, requests, store)
            submitted = scheduler.submit(job.spec)
            with anyio.fail_after(10):
                record = await scheduler.run_job(submitted.job_id)
            stats = store.task(submitted.job_id, "stats")
            after = store.task(submitted.job_id, "after")
    assert record.state is State.TIMEOUT
    assert stats.state is State.TIMEOUT and stats.attempt == 2
    assert "still running after 0.5 s" in stats.reason
    assert after.state is State.CANCELED and "upstream task stats timeout" in after.reason
    assert "task stats timeout" in record.reason


async def test_inherited_tasks_are_not_run_again(tmp_path: Path) -> None:
    calls: Calls = []

    def handlers(node: str) -> dict[str, Handler]:
        return {kind: recording(calls, HANDLERS[kind])
                for kind in ("fa_request", "preproc_request", "train_request")}  # fmt: skip

    async with network(tmp_path, handlers) as requests:
        with JobStore(tmp_path / "researcher") as store:
            scheduler = scheduler_for(tmp_path, requests, store)
            earlier = await scheduler.run_job(scheduler.submit(training_job(rounds=1).spec).job_id)
            assert earlier.state is State.SUCCESS
            before = len(calls)

            later_job = training_job(
                "later", rounds=1, inherit_from=earlier.job_id, inherit_tasks=["stats", "scale"]
            )
            later = await scheduler.run_job(scheduler.submit(later_job.spec).job_id)

            assert later.state is State.SUCCESS, later.reason
            new_calls = calls[before:]
            assert not [r for _, r in new_calls if isinstance(r, FARequest | PreprocRequest)]
            assert len([r for _, r in new_calls if isinstance(r, TrainRequest)]) == len(NODES)
            for name in ("stats", "scale"):
                task = store.task(later.job_id, name)
                assert task.inherited_from == earlier.job_id and task.attempt == 0
                assert task.outputs == store.task(earlier.job_id, name).outputs
            assert store.task(later.job_id, "train").inherited_from is None


async def test_a_job_short_of_its_mandatory_node_fails_with_the_reason(tmp_path: Path) -> None:
    async with network(tmp_path) as requests:
        with JobStore(tmp_path / "researcher") as store:
            scheduler = scheduler_for(tmp_path, requests, store)
            job = scheduler.submit(
                analytics_job("needs-ghost", mandatory_nodes=["ghost"], node_wait=0.5).spec
            )
            record = await scheduler.run_job(job.job_id)
            task = store.task(job.job_id, "stats")
    assert record.state is State.FAILED
    assert "nodes ghost are offline" in record.reason
    assert "online: n1, n2" in record.reason
    assert task.state is State.CANCELED and task.reason == "the job could not start"


async def test_a_job_short_of_min_nodes_fails_with_the_reason(tmp_path: Path) -> None:
    async with network(tmp_path) as requests:
        with JobStore(tmp_path / "researcher") as store:
            scheduler = scheduler_for(tmp_path, requests, store)
            job = scheduler.submit(analytics_job("crowd", min_nodes=5, node_wait=0.3).spec)
            record = await scheduler.run_job(job.job_id)
    assert record.state is State.FAILED
    assert "2 of the 5 nodes needed are online" in record.reason


async def test_a_stopped_job_cancels_what_runs_and_keeps_what_succeeded(tmp_path: Path) -> None:
    def handlers(node: str) -> dict[str, Handler]:
        return {"fa_request": slow(30, HANDLERS["fa_request"])}

    job = analytics_job("stopped", parallelism=2)
    job.to_nodes(PlanApprovalTask(name="approve", plan=job.plan(BreastCancerPlan)))
    async with network(tmp_path, handlers) as requests:
        with JobStore(tmp_path / "researcher") as store:
            scheduler = scheduler_for(tmp_path, requests, store)
            submitted = scheduler.submit(job.spec)
            async with anyio.create_task_group() as group:
                group.start_soon(scheduler.run_job, submitted.job_id)
                with anyio.fail_after(10):
                    while store.task(submitted.job_id, "approve").state is not State.SUCCESS:
                        await anyio.sleep(0.05)
                message = stop_job(store, submitted.job_id)
            record = store.job(submitted.job_id)
            states = {t.name: t.state for t in store.tasks(submitted.job_id)}
    assert message.startswith("stop requested")
    assert record.state is State.CANCELED and record.reason == "stopped on request"
    assert states == {"stats": State.CANCELED, "approve": State.SUCCESS}
