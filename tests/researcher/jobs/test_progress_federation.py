"""Training progress end to end: plans in their plan processes on node agents, over the
in-memory transport and RabbitMQ, with authentication, to an Experiment's or a FedJob's
monitor and the job store; and progress keeping a slow node from timing out."""

from __future__ import annotations

import math
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import anyio.lowlevel
import pytest

from broker_net.crypto.authentication import Security
from broker_net.crypto.introductions import introduce
from broker_net.topology import Topology
from node_agent.agent import NodeAgent
from node_agent.settings import NodeSettings
from researcher.jobs.experiment import Experiment
from researcher.orchestration.fedjob import FedJob
from researcher.orchestration.lifecycle import State
from researcher.orchestration.store.job_store import JobStore
from researcher.orchestration.task_specs import PlanApprovalTask, TrainingTask
from researcher.requests.policies import DiscardOnStall, DiscardOnTimeout
from researcher.requests.progress import ProgressEvent
from researcher.requests.router import Requests
from simulation.demo_plan import BreastCancerPlan
from simulation.demo_setup import register_demo_shard
from simulation.federation import simulate_async
from tests.support.progress_plans import SlowPlan

pytestmark = [pytest.mark.anyio, pytest.mark.slow]
RESEARCHER = "progress-researcher"
NODES = ["n1", "n2"]
TRAINING_ARGS = {"epochs": 3, "batch_size": 32, "learning_rate": 0.01}


@dataclass
class Federation:
    requests: Requests
    datasets: dict[str, str]
    root: Path


@asynccontextmanager
async def federation(
    make_transport: Callable[..., Any], topology: Topology, root: Path, **node_settings: Any
) -> AsyncIterator[Federation]:
    """Two node agents with demo shards and an authenticated researcher, trusting each other;
    ``node_settings`` are the nodes' own."""
    datasets = {}
    for index, node in enumerate(NODES):
        entry, _ = register_demo_shard(root / node, index, len(NODES))
        datasets[node] = entry.dataset_id
    introduce(RESEARCHER, root / "researcher", {node: root / node for node in NODES})
    security = Security.load(
        root / "researcher" / "identity", RESEARCHER, "researcher",
        root / "researcher" / "trusted-nodes",
    )  # fmt: skip
    async with AsyncExitStack() as stack:
        for node in NODES:
            settings = NodeSettings(
                node_id=node, data_dir=root / node, namespace=topology.namespace,
                require_approval=False, heartbeat_interval=0.5, **node_settings,
            )  # fmt: skip
            transport = await stack.enter_async_context(make_transport(node))
            await stack.enter_async_context(NodeAgent(settings, transport, shutdown_grace=1))
        transport = await stack.enter_async_context(make_transport("researcher"))
        requests = await stack.enter_async_context(
            Requests(transport, RESEARCHER, topology=topology, security=security)
        )
        await requests.wait_for_nodes(NODES, timeout=30)
        yield Federation(requests, datasets, root)


async def test_a_plans_progress_reaches_the_experiments_monitor(
    make_transport: Callable[..., Any], topology: Topology, tmp_path: Path
) -> None:
    events: list[ProgressEvent] = []
    async with federation(make_transport, topology, tmp_path) as fed:
        experiment = Experiment(
            fed.requests, plan=BreastCancerPlan, datasets=fed.datasets, rounds=2,
            training_args=TRAINING_ARGS, model_args={"n_features": 30},
            policies=[DiscardOnTimeout(60)], monitor=events.append,
        )  # fmt: skip
        result = await experiment.run()

    for record in result.rounds:
        for node in NODES:
            mine = [e for e in events if e.round == record.round and e.node_id == node]
            assert mine, f"no progress from {node} in round {record.round}"
            assert {e.request_id for e in mine} == {record.request_id}
            assert {e.experiment_id for e in mine} == {experiment.experiment_id}
            assert all({"iteration", "loss"} <= set(e.values) for e in mine)
            sequences = [e.sequence for e in mine]
            assert sequences == sorted(set(sequences))
            # The plan's last report (after its last step) always arrives.
            steps = TRAINING_ARGS["epochs"] * math.ceil(record.sample_sizes[node] / 32)
            assert mine[-1].values["iteration"] == steps
            assert mine[-1].values["loss"] == record.metrics[node]["train_loss"]


async def test_a_slow_node_that_reports_progress_is_not_timed_out(
    make_transport: Callable[..., Any], topology: Topology, tmp_path: Path
) -> None:
    events: list[ProgressEvent] = []

    async def monitor(event: ProgressEvent) -> None:
        await anyio.lowlevel.checkpoint()
        events.append(event)

    async with federation(make_transport, topology, tmp_path, plan_workers=1) as fed:

        def experiment(seconds: float, timeout: float) -> Experiment:
            return Experiment(
                fed.requests, plan=SlowPlan, datasets={"n1": fed.datasets["n1"]}, rounds=1,
                training_args={"seconds": seconds}, model_args={"n_features": 30},
                policies=[DiscardOnTimeout(timeout), DiscardOnStall(timeout)],
                experiment_id="slow", monitor=monitor,
            )  # fmt: skip

        # A first round starts the plan's warm process, however long that takes.
        assert (await experiment(0.0, 60).run_round(1)).failed == {}
        events.clear()
        # Silent, the node would time out after 4 s; its plan now trains for 8 s.
        record = await experiment(8.0, 4).run_round(2)

    assert record.failed == {}
    assert record.nodes == ["n1"]
    assert record.timings["n1"].round_trip is not None
    assert record.timings["n1"].round_trip > 8.0
    assert len(events) >= 2
    assert {event.round for event in events} == {2}


async def test_a_fedjob_keeps_its_progress_in_the_store_and_calls_its_monitor(
    make_transport: Callable[..., Any], topology: Topology, tmp_path: Path
) -> None:
    seen: list[ProgressEvent] = []

    async def monitor(event: ProgressEvent) -> None:
        seen.append(event)

    job = FedJob("progress", min_nodes=2)
    plan = job.plan(BreastCancerPlan)
    job.to_nodes(
        TrainingTask(
            name="train", plan=plan, rounds=2, training_args=TRAINING_ARGS,
            model_args={"n_features": 30},
        )
    )  # fmt: skip
    async with federation(make_transport, topology, tmp_path) as fed:
        with JobStore(tmp_path / "researcher") as store:
            result = await job.run(fed.requests, store=store, discovery=0, monitor=monitor)
            records = store.progress(result.job_id)
            later = store.progress(result.job_id, after=records[0].id, limit=2)
            rounds = store.rounds(result.job_id, "train")

    assert result.state is State.SUCCESS, result.reason
    assert [r.id for r in records] == sorted({r.id for r in records})
    assert later == records[1:3]
    assert {(r.job_id, r.task) for r in records} == {(result.job_id, "train")}
    assert {(r.round, r.node_id) for r in records} == {(n, m) for n in (1, 2) for m in NODES}
    request_ids = {row.round: row.request_id for row in rounds}
    assert all(r.request_id == request_ids[r.round] for r in records)
    assert all({"iteration", "loss"} <= set(r.values) for r in records)
    # The monitor saw what the store kept, in the same order.
    assert [(e.request_id, e.node_id, e.values) for e in seen] == [
        (r.request_id, r.node_id, r.values) for r in records
    ]
    assert [r.at for r in records] == [e.sent_at for e in seen]


async def test_a_simulated_job_calls_its_monitor(tmp_path: Path) -> None:
    seen: list[ProgressEvent] = []
    job = FedJob("simulated-progress")
    plan = job.plan(BreastCancerPlan)
    job.to_nodes(PlanApprovalTask(name="approve", plan=plan))
    job.to_nodes(
        TrainingTask(
            name="train", plan=plan, rounds=1, training_args=TRAINING_ARGS,
            model_args={"n_features": 30}, depends_on=["approve"],
        )
    )  # fmt: skip
    result = await simulate_async(job, 2, workspace=tmp_path, monitor=seen.append)
    assert result.state is State.SUCCESS, result.reason
    assert {event.node_id for event in seen} == {"site-1", "site-2"}
    assert all(event.round == 1 and "loss" in event.values for event in seen)
