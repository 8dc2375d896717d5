"""Strategies and client sampling over RabbitMQ, against node agent processes training the demo
plan on the demo data."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import anyio
import numpy as np
import pytest

from researcher.jobs.experiment import Experiment
from researcher.jobs.sampling import Sampling, SamplingError
from researcher.jobs.strategies import (
    FedAdagrad,
    FedAdam,
    FedAvg,
    FedYogi,
    ServerOptimizer,
    Strategy,
)
from researcher.requests.policies import DiscardOnTimeout
from researcher.requests.router import Requests
from simulation.demo_plan import BreastCancerPlan
from simulation.demo_setup import register_demo_shard
from tests.researcher.jobs.test_strategies import numpy_step
from tests.support.processes import AgentProcesses
from tests.support.recording import RecordingStrategy

pytestmark = [pytest.mark.rabbitmq, pytest.mark.anyio]
NODES = ["n1", "n2", "n3"]
TRAINING_ARGS = {"epochs": 1, "learning_rate": 1e-5, "batch_size": 32}
SETTINGS = {"eta": 0.01, "beta_1": 0.9, "beta_2": 0.99, "tau": 1e-3}


@pytest.fixture
def datasets(tmp_path: Path) -> dict[str, str]:
    """A shard of the demo data registered on each node."""
    return {
        node: register_demo_shard(tmp_path / node, index, len(NODES))[0].dataset_id
        for index, node in enumerate(NODES)
    }


@pytest.fixture
def started(agents: AgentProcesses, datasets: dict[str, str]) -> Iterator[AgentProcesses]:
    agents.start_all(NODES, env={"BROKER_NET_NODE_REQUIRE_APPROVAL": "false"})
    yield agents


def _flat(params: Mapping[str, np.ndarray]) -> np.ndarray:
    return np.concatenate([np.ravel(params[name]) for name in sorted(params)])


def _experiment(requests: Requests, datasets: dict[str, str], **options: Any) -> Experiment:
    return Experiment(
        requests, plan=BreastCancerPlan, datasets=datasets, rounds=3,
        training_args=TRAINING_ARGS, model_args={"n_features": 30},
        policies=[DiscardOnTimeout(20)], **options,
    )  # fmt: skip


@pytest.mark.usefixtures("started")
async def test_each_strategy_equals_its_numpy_reference_over_rabbitmq(
    requests: Requests, datasets: dict[str, str]
) -> None:
    settings = {"server_learning_rate": SETTINGS["eta"]} | {
        k: SETTINGS[k] for k in ("beta_1", "beta_2", "tau")
    }
    strategies: list[Strategy] = [
        FedAvg(), FedAdagrad(**settings), FedAdam(**settings), FedYogi(**settings),
    ]  # fmt: skip
    for strategy in strategies:
        recording = RecordingStrategy(strategy)
        experiment = _experiment(requests, datasets, strategy=recording)  # type: ignore[arg-type]
        result = await experiment.run()

        assert [record.nodes for record in result.rounds] == [NODES] * 3
        x = _flat(recording.seen[0][0])
        m, v = np.zeros_like(x), np.full_like(x, SETTINGS["tau"] ** 2)
        for params, updates in recording.seen:
            np.testing.assert_allclose(_flat(params), x, rtol=1e-10, atol=1e-12)
            sizes = np.array([u.sample_size for u in updates.values()], dtype=float)
            stacked = np.stack([_flat(u.params) for u in updates.values()])
            average = (sizes[:, None] * stacked).sum(axis=0) / sizes.sum()
            if isinstance(strategy, ServerOptimizer):
                x, m, v = numpy_step(strategy.name, x, m, v, average, **SETTINGS)
            else:
                x = average
        np.testing.assert_allclose(_flat(result.params), x, rtol=1e-10, atol=1e-12)
        assert result.rounds[-1].aggregated_metrics["accuracy"] > 0


async def test_a_stopped_node_is_skipped_with_its_reason(
    started: AgentProcesses, requests: Requests, datasets: dict[str, str]
) -> None:
    await requests.wait_for_nodes(NODES, timeout=20)
    sampling = Sampling(fraction=1.0, seed=1, min_nodes=2, mandatory=("n1",))
    experiment = _experiment(requests, datasets, strategy=FedAdam(), sampling=sampling)

    first = await experiment.run_round(1)
    assert first.sampled == NODES and first.skipped == {} and first.nodes == NODES

    process = started.processes["n3"]
    process.terminate()
    process.wait(timeout=15)
    with anyio.fail_after(10):
        while "n3" in requests.presence.online_ids():
            await anyio.sleep(0.1)
    second = await experiment.run_round(2)

    assert second.sampled == ["n1", "n2"] and second.nodes == ["n1", "n2"]
    assert list(second.skipped) == ["n3"]
    assert second.skipped["n3"].startswith("offline")
    assert "n3" not in second.timings and second.failed == {}

    strict = _experiment(requests, datasets, sampling=Sampling(min_nodes=3))
    with pytest.raises(SamplingError, match=r"2 node\(s\) available, 3 needed; n3: offline"):
        await strict.run_round(1)
