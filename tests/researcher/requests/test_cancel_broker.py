"""Cancellation over RabbitMQ with node agent processes: a request that ends early (a policy,
a task timeout, a stopped job) stops the nodes' work within 2 s, plan processes included; a
cancel of finished work, from another researcher, or ahead of its request is harmless."""

from __future__ import annotations

import os
import time
from pathlib import Path

import anyio
import pytest

from broker_net.amqp import AmqpTransport
from broker_net.codes import ErrorCode
from broker_net.messages import (
    CancelReply,
    CancelRequest,
    ErrorMessage,
    PingRequest,
    TrainReply,
    TrainRequest,
)
from broker_net.topology import Topology
from researcher.orchestration.fedjob import FedJob
from researcher.orchestration.lifecycle import State
from researcher.orchestration.scheduler import Scheduler, stop_job
from researcher.orchestration.spec import PlanSpec
from researcher.orchestration.store.job_store import JobStore
from researcher.orchestration.task_specs import TrainingTask
from researcher.requests.federated import MessagesByNode
from researcher.requests.policies import DiscardOnTimeout, RequestStatus, StopOnError
from researcher.requests.router import Requests
from simulation.demo_setup import register_demo_shard
from tests.support.processes import AgentProcesses

pytestmark = [pytest.mark.rabbitmq, pytest.mark.anyio]

SLOW_PLAN = """
import time

from training_plans import LogisticRegressionPlan


class SlowPlan(LogisticRegressionPlan):
    def train(self, x, y, training_args):
        deadline = time.monotonic() + float(training_args.get("seconds", 60))
        while time.monotonic() < deadline:
            time.sleep(0.05)
        if training_args.get("fail"):
            raise RuntimeError("failing on purpose")
        return super().train(x, y, training_args)
"""
NO_APPROVAL = {"BROKER_NET_NODE_REQUIRE_APPROVAL": "false"}


async def _start(agents: AgentProcesses, tmp_path: Path, nodes: list[str]) -> dict[str, str]:
    """Start agents holding a demo shard each; return their dataset ids."""
    datasets = {}
    for index, node in enumerate(nodes):
        entry, _ = register_demo_shard(tmp_path / node, index, len(nodes))
        datasets[node] = entry.dataset_id
    await agents.astart_all(nodes, env=NO_APPROVAL)
    return datasets


def _train(
    datasets: dict[str, str], default: dict[str, object], **by_node: dict[str, object]
) -> MessagesByNode:
    return MessagesByNode({
        node: TrainRequest(
            researcher_id="alice", experiment_id="e", round=1, training_plan=SLOW_PLAN,
            training_plan_class="SlowPlan", dataset_id=dataset, model_args={"n_features": 30},
            training_args=by_node.get(node, default),
        )
        for node, dataset in datasets.items()
    })  # fmt: skip


def _descendants(pid: int) -> list[int]:
    """The processes ``pid`` started (its plan processes), from /proc."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            parent = int(stat.rsplit(")", 1)[1].split()[1])
            children.setdefault(parent, []).append(int(entry))
    found, todo = [], list(children.get(pid, []))
    while todo:
        child = todo.pop()
        found.append(child)
        todo.extend(children.get(child, []))
    return found


def _plans(agents: AgentProcesses, nodes: list[str]) -> dict[str, int]:
    return {node: len(_descendants(agents.processes[node].pid)) for node in nodes}


async def _until(condition: object, seconds: float, what: str) -> float:
    """Wait until ``condition()`` holds; return how long it took."""
    started = time.monotonic()
    with anyio.fail_after(seconds):
        while not condition():  # type: ignore[operator]
            await anyio.sleep(0.02)
    took = time.monotonic() - started
    print(f"{what}: {took:.3f} s")
    return took


def _cancelled_late(requests: Requests, request_id: str) -> set[str]:
    return {
        late.node_id for late in requests.late_replies
        if late.request_id == request_id and isinstance(late.message, ErrorMessage)
        and late.message.code is ErrorCode.CANCELLED
    }  # fmt: skip


async def _idle_within(
    agents: AgentProcesses, requests: Requests, nodes: list[str], request_id: str, seconds: float
) -> None:
    """The nodes answer ``request_id`` CANCELLED and their plan processes are gone."""
    await _until(lambda: _cancelled_late(requests, request_id) == set(nodes), seconds,
                 "CANCELLED answers")  # fmt: skip
    await _until(lambda: not any(_plans(agents, nodes).values()), seconds, "plan processes gone")


async def test_stop_on_error_stops_the_nodes_still_training(
    agents: AgentProcesses, requests: Requests, tmp_path: Path
) -> None:
    nodes = ["n1", "n2", "n3"]
    datasets = await _start(agents, tmp_path, nodes)
    seen: dict[str, int] = {}

    async def watch() -> None:
        while True:
            for node, count in _plans(agents, ["n2", "n3"]).items():
                seen[node] = max(seen.get(node, 0), count)
            await anyio.sleep(0.1)

    messages = _train(datasets, {"seconds": 60}, n1={"seconds": 3, "fail": True})
    async with anyio.create_task_group() as group:
        group.start_soon(watch)
        fed = await requests.request(messages, nodes, [StopOnError(), DiscardOnTimeout(30)])
        decided = time.monotonic()
        group.cancel_scope.cancel()
    assert fed.stopped and fed.errors()["n1"].code is ErrorCode.PLAN_FAILED
    assert fed.status()["n2"] is RequestStatus.STOPPED
    assert seen["n2"] and seen["n3"], "the plans were running when the request stopped"
    await _idle_within(agents, requests, ["n2", "n3"], fed.request_id, 2.0)
    assert time.monotonic() - decided < 2.0

    # Their lane is free: a short round starts and ends at once.
    again = await requests.request(_train(datasets, {"seconds": 0}), ["n2", "n3"],
                                   [DiscardOnTimeout(20)])  # fmt: skip
    assert all(isinstance(r, TrainReply) for r in again.replies().values()), again.reasons()
    print(f"a second round answered {time.monotonic() - decided:.3f} s after the decision")
    assert time.monotonic() - decided < 8.0


def _slow_job(name: str, **conf: object) -> FedJob:
    job = FedJob(name, **conf)  # type: ignore[arg-type]
    job.plans["slow"] = PlanSpec(class_name="SlowPlan", source=SLOW_PLAN)
    job.to_nodes(TrainingTask(name="train", plan="slow", training_args={"seconds": 60},
                              model_args={"n_features": 30}))  # fmt: skip
    return job


async def test_a_task_timeout_stops_the_nodes(
    agents: AgentProcesses, requests: Requests, tmp_path: Path
) -> None:
    nodes = ["n1", "n2"]
    await _start(agents, tmp_path, nodes)
    await requests.wait_for_nodes(nodes, timeout=10)
    with JobStore(tmp_path / "researcher") as store:
        scheduler = Scheduler(store, requests, discovery=0)
        job = scheduler.submit(_slow_job("late", task_timeout=4).spec)
        record = await scheduler.run_job(job.job_id)
        ended = time.monotonic()
        assert record.state is State.TIMEOUT, record.reason
    await _until(lambda: not any(_plans(agents, nodes).values()), 2.0, "plan processes gone")
    await _until(lambda: len({late.node_id for late in requests.late_replies
                              if isinstance(late.message, ErrorMessage)
                              and late.message.code is ErrorCode.CANCELLED}) == 2,
                 2.0, "CANCELLED answers")  # fmt: skip
    assert time.monotonic() - ended < 2.0


async def test_a_stopped_job_stops_the_nodes(
    agents: AgentProcesses, requests: Requests, tmp_path: Path
) -> None:
    nodes = ["n1", "n2"]
    await _start(agents, tmp_path, nodes)
    await requests.wait_for_nodes(nodes, timeout=10)
    with JobStore(tmp_path / "researcher") as store:
        scheduler = Scheduler(store, requests, discovery=0, poll_interval=0.1)
        job = scheduler.submit(_slow_job("stopped").spec)
        async with anyio.create_task_group() as group:
            group.start_soon(scheduler.run_job, job.job_id)
            await _until(lambda: all(_plans(agents, nodes).values()), 20, "plans running")
            await anyio.sleep(1.0)
            stop_job(store, job.job_id)
            stopped = time.monotonic()
        assert store.job(job.job_id).state is State.CANCELED
    await _until(lambda: not any(_plans(agents, nodes).values()), 2.0, "plan processes gone")
    assert time.monotonic() - stopped < 2.0


async def _cancel(requests: Requests, target: str, node: str) -> CancelReply:
    cancel = CancelRequest(researcher_id=requests.researcher_id, target_request_id=target)
    reply = (await requests.request(cancel, [node], [DiscardOnTimeout(5)])).replies()[node]
    assert isinstance(reply, CancelReply)
    return reply


async def test_cancels_of_finished_foreign_and_early_requests_are_harmless(
    agents: AgentProcesses, requests: Requests, amqp_url: str, topology: Topology,
    tmp_path: Path,
) -> None:  # fmt: skip
    runs = tmp_path / "runs"
    await agents.astart("n1", "--delay", "1", "--runs-file", str(runs))
    # Finished work: nothing to stop.
    done = await requests.request(PingRequest(researcher_id="alice"), ["n1"],
                                  [DiscardOnTimeout(10)])  # fmt: skip
    assert done.replies()
    reply = await _cancel(requests, done.request_id, "n1")
    assert (reply.cancelled, reply.state) == (False, "finished")

    # Another researcher's cancel is refused: the work goes on.
    async with (
        AmqpTransport(amqp_url, connection_name="mallory") as transport,
        Requests(transport, "mallory", topology=topology) as mallory,
    ):
        ping = PingRequest(researcher_id="alice")
        answered: list[object] = []

        async def ask() -> None:
            fed = await requests.request(ping, ["n1"], [DiscardOnTimeout(10)])
            answered.append(fed.replies().get("n1"))

        async with anyio.create_task_group() as group:
            group.start_soon(ask)
            await anyio.sleep(0.5)
            reply = await _cancel(mallory, ping.request_id, "n1")
        assert (reply.cancelled, reply.state) == (False, "unknown")
    assert answered and answered[0] is not None, "the work went on and was answered"

    # A cancel ahead of its request: answered CANCELLED, never run.
    early = PingRequest(researcher_id="alice")
    assert await requests.cancel(early.request_id, ["n1"]) == ["n1"]
    await anyio.sleep(0.5)
    fed = await requests.request(early, ["n1"], [DiscardOnTimeout(10)])
    assert fed.errors()["n1"].code is ErrorCode.CANCELLED
    assert early.request_id not in runs.read_text()
