"""Warm plan workers: reused between the rounds of an experiment, recycled, revoked, bounded."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import anyio
import numpy as np
import pytest

from broker_net.codes import ErrorCode
from broker_net.messages import TrainReply, TrainRequest
from node_agent.context import HandlerError, NodeContext
from node_agent.handlers import HANDLERS
from node_agent.plan_workers import PlanWorkers, plan_workers_for
from node_agent.plans import PlanRegistry
from node_agent.runner import PlanFailedError, PlanTimeoutError, run_training
from node_agent.settings import NodeSettings
from tests.node_agent.sandbox_support import (
    SETTINGS,
    assert_no_process_left,
    breast_cancer_table,
    plan,
    policy,
)

pytestmark = pytest.mark.anyio

COUNTING = plan(
    """
    def train(self, x, y, args):
        global ROUNDS
        ROUNDS = globals().get("ROUNDS", 0) + 1
        if ROUNDS in args.get("fail_in", ()):
            raise ValueError(f"failing in round {ROUNDS} of this process")
        if args.get("sleep"):
            import time
            time.sleep(args["sleep"])
        return {**super().train(x, y, args), "rounds": ROUNDS}
    """
)
"""A plan that counts the rounds its process served: what a warm worker keeps between rounds."""


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def open_context(data_dir: Path, **settings: Any) -> NodeContext:
    values = {"plan_timeout": 20.0, "plan_workers": 2, **SETTINGS, **settings}
    return NodeContext.open(NodeSettings(node_id="n1", data_dir=data_dir, **values))


@pytest.fixture
def dataset(tmp_path: Path) -> Path:
    table = breast_cancer_table(150)
    np.savez(tmp_path / "shard.npz", X=table.values[:, :-1], y=table.values[:, -1])
    return tmp_path / "shard.npz"


@pytest.fixture
def make_context(tmp_path: Path, dataset: Path) -> Iterator[Any]:
    opened: list[NodeContext] = []

    def make(**settings: Any) -> tuple[NodeContext, str]:
        context = open_context(tmp_path / f"node{len(opened)}", **settings)
        opened.append(context)
        context.plans.approve(context.plans.register(COUNTING).plan_id)
        return context, context.datasets.add(dataset).dataset_id

    yield make
    for context in opened:
        context.close()
    assert_no_process_left()


async def train(
    context: NodeContext, dataset_id: str, experiment: str = "e", round_: int = 0, **args: Any
) -> TrainReply:
    request = TrainRequest(
        researcher_id="alice", experiment_id=experiment, round=round_, training_plan=COUNTING,
        training_plan_class="P", dataset_id=dataset_id, training_args={"epochs": 1, **args},
    )  # fmt: skip
    reply: TrainReply = await HANDLERS["train_request"](request, context)
    return reply


async def test_the_next_round_of_an_experiment_reuses_its_worker_and_is_faster(make_context):
    context, dataset_id = make_context()
    workers = plan_workers_for(context)

    first = await train(context, dataset_id)
    [worker] = workers.workers()
    second = await train(context, dataset_id, round_=1)
    assert workers.workers() == [replace(worker, rounds=2)]
    assert (first.metrics["train_rounds"], second.metrics["train_rounds"]) == (1, 2)
    assert second.timing["rtime_process"] < first.timing["rtime_process"] / 2
    print(
        f"round 1 (fresh worker): {first.timing['rtime_process']:.3f} s, "
        f"round 2 (warm): {second.timing['rtime_process']:.3f} s"
    )

    other = await train(context, dataset_id, experiment="another")
    assert other.metrics["train_rounds"] == 1
    assert {w.pid for w in workers.workers()} - {worker.pid}


async def test_a_worker_is_recycled_after_its_rounds(make_context):
    context, dataset_id = make_context(plan_worker_max_rounds=2)
    workers = plan_workers_for(context)

    await train(context, dataset_id)
    [worker] = workers.workers()
    second = await train(context, dataset_id, round_=1)
    assert second.metrics["train_rounds"] == 2
    assert workers.workers() == [] and not alive(worker.pid)
    third = await train(context, dataset_id, round_=2)
    assert third.metrics["train_rounds"] == 1
    assert [w.pid for w in workers.workers()] != [worker.pid]


async def test_revoking_approval_kills_the_worker_and_refuses_the_next_round(make_context):
    context, dataset_id = make_context()
    workers = plan_workers_for(context)
    await train(context, dataset_id)
    [worker] = workers.workers()

    context.plans.reject(worker.plan_id, "it reads too much")
    assert workers.workers() == [] and not alive(worker.pid)
    with pytest.raises(HandlerError) as refused:
        await train(context, dataset_id, round_=1)
    assert refused.value.code is ErrorCode.PLAN_NOT_APPROVED


async def test_a_rejection_by_another_process_kills_the_worker_soon(make_context):
    context, dataset_id = make_context()
    workers = plan_workers_for(context)
    await train(context, dataset_id)
    [worker] = workers.workers()

    with PlanRegistry(context.settings.data_dir) as cli:  # the operator's 'plans reject'
        cli.reject(worker.plan_id)
    deadline = time.monotonic() + 10
    while alive(worker.pid) and time.monotonic() < deadline:
        await anyio.sleep(0.1)
    assert not alive(worker.pid) and workers.workers() == []


async def test_a_failure_or_a_timeout_kills_the_worker(make_context):
    context, dataset_id = make_context(plan_timeout=4.0)
    workers = plan_workers_for(context)
    await train(context, dataset_id)
    [worker] = workers.workers()

    with pytest.raises(HandlerError) as failed:
        await train(context, dataset_id, round_=1, fail_in=[2])
    assert failed.value.code is ErrorCode.PLAN_FAILED
    assert workers.workers() == [] and not alive(worker.pid)

    reply = await train(context, dataset_id, round_=2)
    assert reply.metrics["train_rounds"] == 1  # a fresh process
    [worker] = workers.workers()
    with pytest.raises(HandlerError) as hung:
        await train(context, dataset_id, round_=3, sleep=60)
    assert hung.value.code is ErrorCode.PLAN_TIMEOUT
    assert workers.workers() == [] and not alive(worker.pid)


async def run(workers: PlanWorkers, experiment: str, **args: Any) -> dict[str, float]:
    outcome = await run_training(
        COUNTING, "P", table=breast_cancer_table(150), target="y", params={},
        training_args={"epochs": 1, **args}, model_args={}, timeout=20, workers=workers,
        reuse_key=("alice", experiment),
    )  # fmt: skip
    return outcome.metrics


async def test_an_idle_worker_is_killed_after_its_idle_timeout():
    workers = PlanWorkers(policy(), size=2, idle_timeout=0.5, check_interval=0.1)
    try:
        await run(workers, "e")
        [worker] = workers.workers()
        deadline = time.monotonic() + 10
        # The worker leaves the pool, then its process is killed: wait for both.
        while (workers.workers() or alive(worker.pid)) and time.monotonic() < deadline:
            await anyio.sleep(0.1)
        assert workers.workers() == [] and not alive(worker.pid)
        assert (await run(workers, "e"))["train_rounds"] == 1
    finally:
        workers.close()
    assert_no_process_left()


async def test_the_pool_is_bounded():
    workers = PlanWorkers(policy(), size=1)
    try:
        await run(workers, "a")
        [first] = workers.workers()
        await run(workers, "b")  # takes the place of the idle worker of "a"
        [second] = workers.workers()
        assert second.key != first.key and not alive(first.pid)

        results: list[dict[str, float]] = []

        async def slow(experiment: str) -> None:
            results.append(await run(workers, experiment, sleep=1))

        async with anyio.create_task_group() as group:  # two at once in a pool of one
            group.start_soon(slow, "c")
            group.start_soon(slow, "d")
        assert len(results) == 2
        assert len(workers.workers()) <= 1
    finally:
        workers.close()
    assert workers.workers() == []
    assert_no_process_left()


async def test_a_plan_failure_in_a_direct_run_is_typed():
    workers = PlanWorkers(policy(), size=1)
    try:
        with pytest.raises(PlanFailedError, match="failing in round 1"):
            await run(workers, "e", fail_in=[1])
        assert workers.workers() == []
        with pytest.raises(PlanTimeoutError):
            await run_training(
                COUNTING, "P", table=breast_cancer_table(150), target="y", params={},
                training_args={"sleep": 30}, model_args={}, timeout=3, workers=workers,
                reuse_key=("alice", "e"),
            )  # fmt: skip
        assert workers.workers() == []
    finally:
        workers.close()
    assert_no_process_left()


async def test_a_plan_that_forges_its_result_fails_and_its_worker_is_not_kept():
    forger = plan(
        """
        def train(self, x, y, args):
            import sys
            worker = sys.modules["__main__"]  # the plan owns its process: it can rewrite it
            worker._floats = lambda stage, metrics: {"loss": "not a number"}
            return super().train(x, y, args)
        """
    )
    workers = PlanWorkers(policy(), size=1)
    try:
        with pytest.raises(PlanFailedError, match="malformed result"):
            await run_training(
                forger, "P", table=breast_cancer_table(150), target="y", params={},
                training_args={}, model_args={}, timeout=20, workers=workers,
                reuse_key=("alice", "e"),
            )  # fmt: skip
        assert workers.workers() == []
    finally:
        workers.close()
    assert_no_process_left()
