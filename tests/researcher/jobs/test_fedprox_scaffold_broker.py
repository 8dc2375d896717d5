"""FedProx and SCAFFOLD over RabbitMQ, against node agent processes training the demo plan on the
demo data: FedProx on an approved plan, SCAFFOLD with encrypted control variates whose node
side persists across rounds and a restart of the agent."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pytest

from broker_net.amqp import AmqpTransport
from broker_net.crypto.authentication import Security
from broker_net.crypto.introductions import introduce
from broker_net.messages import TrainRequest
from broker_net.topology import Topology
from node_agent._plan_worker import split_rows
from node_agent.control_variates import load_client_variate
from node_agent.datasets import DatasetRegistry
from node_agent.plans import PlanRegistry
from node_agent.state import NodeStateStore
from researcher.jobs import experiment as experiment_module
from researcher.jobs.experiment import Experiment
from researcher.jobs.plans import TrainingPlanApproveJob
from researcher.jobs.strategies import FedProx, Scaffold
from researcher.jobs.training import TrainingJob
from researcher.requests.policies import DiscardOnTimeout
from researcher.requests.router import Requests
from simulation.demo_plan import BreastCancerPlan
from simulation.demo_setup import register_demo_shard
from tests.node_agent.test_corrections import reference
from tests.support.processes import AgentProcesses
from tests.support.recording import RecordingStrategy
from training_plans.plan import plan_source

pytestmark = [pytest.mark.rabbitmq, pytest.mark.anyio]
NODES = ["n1", "n2", "n3"]
TRAINING_ARGS = {"epochs": 1, "learning_rate": 1e-5, "batch_size": 32}


@pytest.fixture
def datasets(tmp_path: Path) -> dict[str, str]:
    return {
        node: register_demo_shard(tmp_path / node, index, len(NODES))[0].dataset_id
        for index, node in enumerate(NODES)
    }


@pytest.fixture
def alice(tmp_path: Path, datasets: dict[str, str]) -> Security:
    introduce("alice", tmp_path / "alice", {node: tmp_path / node for node in NODES})
    folder = tmp_path / "alice"
    return Security.load(folder / "identity", "alice", "researcher", folder / "trusted-nodes")


@pytest.fixture
def agents(
    alice: Security, amqp_url: str, namespace: str, tmp_path: Path
) -> Iterator[AgentProcesses]:
    processes = AgentProcesses(amqp_url, namespace, tmp_path)
    try:
        processes.start_all(NODES, "--security")
        yield processes
    finally:
        processes.stop_all()


@pytest.fixture
async def requests(
    agents: AgentProcesses, amqp_url: str, topology: Topology, alice: Security
) -> AsyncIterator[Requests]:
    async with (
        AmqpTransport(amqp_url, connection_name="researcher:fl") as transport,
        Requests(transport, "alice", topology=topology, security=alice) as researcher,
    ):
        yield researcher


async def _approve(requests: Requests, tmp_path: Path) -> None:
    """Submit the demo plan and approve it as each node's operator would."""
    submitted = await TrainingPlanApproveJob(
        requests, training_plan=plan_source(BreastCancerPlan), description="demo", nodes=NODES
    ).execute()
    for node in NODES:
        with PlanRegistry(tmp_path / node) as plans:
            plans.approve(submitted[node].training_plan_id or "")


def _experiment(requests: Requests, datasets: dict[str, str], **options: Any) -> Experiment:
    return Experiment(
        requests, plan=BreastCancerPlan, datasets=datasets, rounds=3,
        training_args=TRAINING_ARGS, model_args={"n_features": 30},
        policies=[DiscardOnTimeout(30)], **options,
    )  # fmt: skip


def _node_rows(tmp_path: Path, node: str, dataset_id: str) -> tuple[np.ndarray, np.ndarray]:
    """The rows a node trains on, in its order (validation fraction 0.2, split seed 0)."""
    with DatasetRegistry(tmp_path / node) as registry:
        table = registry.load(dataset_id)
    target = table.columns.index("target")
    x, y = np.delete(table.values, target, axis=1), table.values[:, target]
    train, _ = split_rows(len(y), 0.2, 0, training=True)
    return x[train], y[train]


async def test_fedprox_node_updates_equal_proximal_gradient_descent(
    requests: Requests, datasets: dict[str, str], tmp_path: Path
) -> None:
    await _approve(requests, tmp_path)
    mu = 2e4  # with the learning rate 1e-5: a pull of 0.2 towards the global parameters a step
    recording = RecordingStrategy(FedProx(mu=mu))
    result = await _experiment(requests, datasets, strategy=recording).run()

    assert [record.nodes for record in result.rounds] == [NODES] * 3
    args = {**TRAINING_ARGS, "l2": 0.03}  # the demo plan's weight decay
    for params, updates in recording.seen:
        for node, update in updates.items():
            x, y = _node_rows(tmp_path, node, datasets[node])
            expected, _ = reference(x, y, params, args, mu=mu)
            plain, _ = reference(x, y, params, args)
            actual = np.concatenate([update.params["coef"], update.params["intercept"]])
            np.testing.assert_allclose(actual, expected, rtol=1e-10, atol=1e-12)
            assert np.max(np.abs(actual - plain)) > 1e-6


class WireTrainingJob(TrainingJob):
    """A TrainingJob that keeps what went over the wire."""

    sent: ClassVar[list[TrainingJob]] = []

    async def execute(self):  # type: ignore[no-untyped-def]
        WireTrainingJob.sent.append(self)
        return await super().execute()


def _kept(tmp_path: Path, node: str, experiment_id: str, dataset_id: str) -> dict[str, Any]:
    request = TrainRequest(
        researcher_id="alice", experiment_id=experiment_id, round=1, dataset_id=dataset_id,
        training_plan=plan_source(BreastCancerPlan), training_plan_class="BreastCancerPlan",
    )  # fmt: skip
    with NodeStateStore(tmp_path / node) as states:
        kept = load_client_variate(states, request)
    assert kept is not None
    return kept


async def test_scaffold_with_encrypted_control_variates_persisted_on_the_nodes(
    requests: Requests,
    datasets: dict[str, str],
    tmp_path: Path,
    agents: AgentProcesses,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    await _approve(requests, tmp_path)
    monkeypatch.setattr(experiment_module, "TrainingJob", WireTrainingJob)
    recording = RecordingStrategy(Scaffold(server_learning_rate=1.0))
    experiment = _experiment(requests, datasets, strategy=recording, encrypt_aux_var=True)
    for number in (1, 2):
        await experiment.run_round(number)

    for job in WireTrainingJob.sent:
        assert job.request is not None
        for reply in job.request.replies().values():
            assert set(reply.optim_aux_var or {}) == {"encrypted", "alg"}
    for node in NODES:
        total = sum(
            np.concatenate([u[node].aux_var["scaffold_delta_c"][k] for k in ("coef", "intercept")])
            for _, u in recording.seen
        )
        kept = _kept(tmp_path, node, experiment.experiment_id, datasets[node])
        np.testing.assert_allclose(
            np.concatenate([kept["coef"], kept["intercept"]]), total, rtol=0, atol=1e-12
        )

    # The node's c_i outlives its agent: after a restart, round 3 starts from it.
    await agents.astop("n1", timeout=15)
    await agents.astart("n1", "--security")
    await requests.wait_for_nodes(NODES, timeout=30)
    before = _kept(tmp_path, "n1", experiment.experiment_id, datasets["n1"])
    await experiment.run_round(3)
    after = _kept(tmp_path, "n1", experiment.experiment_id, datasets["n1"])
    delta = recording.seen[2][1]["n1"].aux_var["scaffold_delta_c"]
    for key in ("coef", "intercept"):
        np.testing.assert_allclose(after[key], before[key] + delta[key], rtol=0, atol=1e-12)

    # The server's c is the (|S|/N)-weighted mean of every round's Δc_i, here their mean.
    c = sum(
        np.mean([u.aux_var["scaffold_delta_c"]["coef"] for u in updates.values()], axis=0)
        for _, updates in recording.seen
    )
    np.testing.assert_allclose(recording.inner.c["coef"], c, rtol=0, atol=1e-12)
