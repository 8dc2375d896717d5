"""The demo story end to end: approval, analytics, standardisation and FedAvg."""

from __future__ import annotations

import pytest

from simulation.demo import run

pytestmark = pytest.mark.anyio


@pytest.mark.rabbitmq
async def test_the_demo_over_rabbitmq_matches_central_training(
    amqp_url: str, namespace: str
) -> None:
    result = await run(
        simulate=False, amqp_url=amqp_url, namespace=namespace, rounds=10, non_iid=False
    )
    assert len(result.experiment.rounds) == 10
    assert all(len(record.nodes) == 3 for record in result.experiment.rounds)
    assert abs(result.federated_accuracy - result.centralised_accuracy) <= 0.02
    assert result.federated_accuracy > 0.9


async def test_the_simulation_tells_the_same_story(namespace: str) -> None:
    result = await run(simulate=True, amqp_url="", namespace=namespace, rounds=4, non_iid=True)
    assert len(result.experiment.rounds) == 4
    final = result.experiment.rounds[-1]
    assert set(final.sample_sizes) == {"hospital-a", "hospital-b", "hospital-c"}
    assert final.aggregated_metrics["accuracy"] > 0.85


async def test_the_simulation_with_secure_aggregation(namespace: str) -> None:
    result = await run(
        simulate=True, amqp_url="", namespace=namespace, rounds=3, non_iid=False, secagg=True
    )
    assert all(record.secure_aggregation for record in result.experiment.rounds)
    assert all(len(record.nodes) == 3 for record in result.experiment.rounds)
    assert result.federated_accuracy > 0.85
