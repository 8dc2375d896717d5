"""Deterministic replay of asynchronous training on the in-memory transport: nodes whose
training is a fixed function answer in an order the test forces, and the model versions equal
the plain numpy FedBuff of tests/researcher/jobs/fedbuff_reference.py to 1e-12."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import numpy as np
import pytest

from broker_net.codes import ErrorCode
from broker_net.memory import MemoryBroker, MemoryTransport
from broker_net.messages import TrainReply, TrainRequest
from broker_net.topology import Topology
from node_agent.agent import NodeAgent
from node_agent.context import HandlerError, NodeContext
from node_agent.handlers import HANDLERS, Handler
from node_agent.settings import NodeSettings
from researcher.jobs.buffered import BufferedExperiment
from researcher.jobs.buffered_records import SECAGG_REFUSED, StopWhen, UpdateStatus
from researcher.jobs.fedbuff import FedBuffSettings
from researcher.requests.router import Requests
from tests.researcher.jobs.fedbuff_reference import fedbuff_reference
from training_plans.logistic import LogisticRegressionPlan

pytestmark = pytest.mark.anyio

NODES = ["n1", "n2", "n3"]
# n1 is fast, n2 middling, n3 slow: its updates grow stale and some are dropped.
ARRIVALS = ["n1", "n2", "n1", "n1", "n2", "n1", "n3", "n1", "n1", "n2", "n1", "n1", "n1",
            "n2", "n3", "n1", "n2", "n1", "n1", "n2", "n1", "n3", "n1", "n2"]  # fmt: skip


def train(node: str, params: dict[str, np.ndarray], version: int) -> tuple[dict[str, Any], int]:
    """Each node's training: a fixed function of its node, the parameters and the version."""
    k = NODES.index(node) + 1
    trained = {
        name: value * (1 - 0.05 * k) + 0.1 * k * (version + 1) + 0.01 * np.arange(value.size)
        for name, value in params.items()
    }
    return trained, 10 * k


class ScriptedNodes:
    """Train handlers that hold each request until the test lets its node answer."""

    def __init__(self) -> None:
        self.waiting: dict[str, tuple[TrainRequest, anyio.Event]] = {}

    async def handle(self, request: TrainRequest, context: NodeContext) -> TrainReply:
        gate = anyio.Event()
        self.waiting[context.node_id] = (request, gate)
        await gate.wait()
        assert request.model_version is not None
        trained, samples = train(context.node_id, request.params, request.model_version)
        return TrainReply(
            request_id=request.request_id, researcher_id=request.researcher_id,
            node_id=context.node_id, experiment_id=request.experiment_id, round=request.round,
            success=True, params=trained, sample_size=samples,
            metrics={"accuracy": 0.5 + 0.01 * request.model_version},
            model_version=request.model_version,
        )  # fmt: skip

    async def release(self, node: str, answered: set[str]) -> None:
        """Let ``node`` answer its request once it has one not answered yet."""
        with anyio.fail_after(10):
            while node not in self.waiting or self.waiting[node][0].request_id in answered:
                await anyio.sleep(0.005)
        request, gate = self.waiting[node]
        answered.add(request.request_id)
        gate.set()


@asynccontextmanager
async def scripted_network(root: Path, handler: Handler) -> AsyncIterator[Requests]:
    broker = MemoryBroker()
    topology = Topology("fedbuff")
    async with AsyncExitStack() as stack:
        for node in NODES:
            settings = NodeSettings(
                node_id=node, data_dir=root / node, namespace=topology.namespace,
                heartbeat_interval=0.2, security=False,
            )  # fmt: skip
            transport = await stack.enter_async_context(MemoryTransport(broker))
            handlers = dict(HANDLERS, train_request=handler)
            await stack.enter_async_context(
                NodeAgent(settings, transport, handlers=handlers, shutdown_grace=0.2)
            )
        transport = await stack.enter_async_context(MemoryTransport(broker))
        requests = await stack.enter_async_context(
            Requests(transport, "alice", topology=topology, presence_check_interval=0.05)
        )
        await requests.wait_for_nodes(NODES, timeout=10)
        yield requests


@pytest.mark.parametrize(
    ("staleness", "exponent", "by_samples"),
    [("polynomial", 0.5, True), ("constant", None, False), ("polynomial", 1.0, False)],
)
async def test_versions_equal_the_numpy_reference(
    tmp_path: Path, staleness: str, exponent: float | None, by_samples: bool
) -> None:
    settings = FedBuffSettings(
        buffer_size=2, server_learning_rate=0.7, max_staleness=2, staleness=staleness,  # type: ignore[arg-type]
        staleness_exponent=exponent or 0.5, weight_by_sample_size=by_samples,
    )  # fmt: skip
    initial = {"coef": np.random.default_rng(5).normal(size=4), "intercept": np.array([0.25])}
    expected, log = fedbuff_reference(
        initial, NODES, ARRIVALS, train, buffer_size=2, server_learning_rate=0.7,
        max_staleness=2, exponent=exponent, weight_by_sample_size=by_samples,
    )  # fmt: skip
    assert any(dropped for _, _, dropped in log), "the script must drop a stale update"
    last = len(expected) - 1
    # The script stops at the arrival that publishes the last version.
    published_at = next(i for i in range(len(log)) if _versions_after(log, i, 2) == last)
    script = ARRIVALS[: published_at + 1]

    nodes = ScriptedNodes()
    published: dict[int, dict[str, np.ndarray]] = {}
    async with scripted_network(tmp_path, nodes.handle) as requests:
        experiment = BufferedExperiment(
            requests, plan=LogisticRegressionPlan, datasets=dict.fromkeys(NODES, "d"),
            model_args={"n_features": 4}, settings=settings,
            stop=StopWhen(max_versions=last, time_budget=60), initial_params=initial,
            on_version=lambda record, params, _: published.__setitem__(record.version, params),
        )  # fmt: skip
        async with anyio.create_task_group() as group:
            group.start_soon(experiment.run)
            await _wait_for_pool(experiment)
            answered: set[str] = set()
            for node in script:
                await nodes.release(node, answered)
        result = experiment.result

    assert result.version == last and result.stopped_because.startswith(f"version {last}")
    assert sorted(published) == list(range(1, last + 1))
    for version in range(1, last + 1):
        for name, value in expected[version].items():
            np.testing.assert_allclose(published[version][name], value, rtol=0, atol=1e-12)
    np.testing.assert_allclose(result.params["coef"], expected[last]["coef"], rtol=0, atol=1e-12)
    # Every answered update was applied or dropped, with the reference's staleness.
    settled = [u for u in result.updates if u.status in (UpdateStatus.APPLIED, UpdateStatus.STALE)]
    assert len(settled) == len(script)
    assert sorted((u.node_id, u.staleness, u.status is UpdateStatus.STALE) for u in settled) == (
        sorted(log[: len(script)])
    )
    assert {u.applied_in for u in settled if u.status is UpdateStatus.APPLIED} == set(
        range(1, last + 1)
    )
    # The other nodes' requests in flight when training ended were cancelled; the node whose
    # update published the last version got no new work.
    cancelled = [u for u in result.updates if u.status is UpdateStatus.CANCELLED]
    assert sorted(u.node_id for u in cancelled) == sorted(set(NODES) - {script[-1]})
    assert len(result.updates) == len(script) + len(NODES) - 1


def _versions_after(log: list[tuple[str, int, bool]], index: int, buffer_size: int) -> int:
    kept = sum(not dropped for _, _, dropped in log[: index + 1])
    return kept // buffer_size


async def _wait_for_pool(experiment: BufferedExperiment) -> None:
    with anyio.fail_after(10):
        while len(experiment.pool.members) < len(NODES):
            await anyio.sleep(0.01)


async def test_secure_aggregation_is_refused_in_asynchronous_mode(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="cannot run in asynchronous mode"):
        BufferedExperiment(
            None,  # type: ignore[arg-type]
            plan=LogisticRegressionPlan, datasets={"n1": "d"}, model_args={"n_features": 2},
            settings=FedBuffSettings(), stop=StopWhen(max_versions=1), secagg=True,
        )  # fmt: skip
    assert "pairwise masks" in SECAGG_REFUSED


async def test_a_failing_node_leaves_the_pool_and_rejoins_and_a_target_ends_training(
    tmp_path: Path,
) -> None:
    failures = {"n2": 1}

    async def handle(request: TrainRequest, context: NodeContext) -> TrainReply:
        if failures.get(context.node_id):
            failures[context.node_id] -= 1
            raise HandlerError(ErrorCode.NODE_ERROR, "a passing failure")
        await anyio.sleep(0.01)
        assert request.model_version is not None
        trained, samples = train(context.node_id, request.params, request.model_version)
        return TrainReply(
            request_id=request.request_id, researcher_id=request.researcher_id,
            node_id=context.node_id, experiment_id=request.experiment_id, round=request.round,
            success=True, params=trained, sample_size=samples,
            model_version=request.model_version,
        )  # fmt: skip

    def n2_applied(params: object) -> dict[str, float]:
        done = [u for u in experiment.result.updates if u.node_id == "n2"]
        return {"n2_applied": float(sum(u.status is UpdateStatus.APPLIED for u in done))}

    async with scripted_network(tmp_path, handle) as requests:
        experiment = BufferedExperiment(
            requests, plan=LogisticRegressionPlan, datasets=dict.fromkeys(NODES, "d"),
            model_args={"n_features": 2}, settings=FedBuffSettings(buffer_size=2),
            stop=StopWhen(max_versions=10_000, time_budget=60, target_metric="n2_applied",
                          target_value=1),
            evaluate=n2_applied, retry_delay=0.2,
        )  # fmt: skip
        result = await experiment.run()

    # n2 failed, left the pool (its update lost and named), came back and was applied.
    assert result.stopped_because == "n2_applied 1 reached 1", result.stopped_because
    lost = [u for u in result.updates if u.status is UpdateStatus.LOST]
    assert [u.node_id for u in lost] == ["n2"]
    assert "n2" in lost[0].reason and "a passing failure" in lost[0].reason
    assert result.versions[-1].metrics["n2_applied"] == 1.0


async def test_training_cancelled_from_outside_settles_every_request(tmp_path: Path) -> None:
    nodes = ScriptedNodes()  # they never answer
    async with scripted_network(tmp_path, nodes.handle) as requests:
        experiment = BufferedExperiment(
            requests, plan=LogisticRegressionPlan, datasets=dict.fromkeys(NODES, "d"),
            model_args={"n_features": 2}, settings=FedBuffSettings(),
            stop=StopWhen(max_versions=5, time_budget=60),
        )  # fmt: skip
        async with anyio.create_task_group() as group:
            group.start_soon(experiment.run)
            with anyio.fail_after(10):
                while len(nodes.waiting) < len(NODES):
                    await anyio.sleep(0.01)
            group.cancel_scope.cancel()  # as a job stop or a task timeout does

    updates = experiment.result.updates
    assert sorted(u.node_id for u in updates) == NODES
    assert {u.status for u in updates} == {UpdateStatus.CANCELLED}
    # The nodes answered the cancels, and those answers were drained into the late log.
    drained = {late.request_id for late in requests.late_replies}
    assert {u.request_id for u in updates} <= drained


async def test_nodes_failing_again_and_again_are_left_out_and_training_ends(
    tmp_path: Path,
) -> None:
    async def handle(request: TrainRequest, context: NodeContext) -> TrainReply:
        raise HandlerError(ErrorCode.NODE_ERROR, "this node always fails")

    async with scripted_network(tmp_path, handle) as requests:
        experiment = BufferedExperiment(
            requests, plan=LogisticRegressionPlan, datasets=dict.fromkeys(NODES, "d"),
            model_args={"n_features": 2}, settings=FedBuffSettings(),
            stop=StopWhen(max_versions=5, node_wait=0.5), retry_delay=0.05,
        )  # fmt: skip
        result = await experiment.run()

    assert result.version == 0
    assert result.stopped_because == "no node was available for 0.5 s"
    lost = [u for u in result.updates if u.status is UpdateStatus.LOST]
    assert len(lost) == len(result.updates) == 3 * len(NODES)
    assert all("always fails" in u.reason and u.node_id in u.reason for u in lost)
    assert experiment.pool.failures == dict.fromkeys(NODES, 3)
