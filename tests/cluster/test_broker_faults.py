"""Federated training on a three-node RabbitMQ cluster while broker nodes are killed.

Every test runs an Experiment of several rounds over three node agent processes with
authentication on and quorum queues, and ``kill -9`` s broker nodes while a round is under
way: the experiment completes, and every node's reply for every round is in the results
exactly once. Without a majority of broker nodes a request fails within its timeout, and works
again once the nodes are back.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence

import anyio
import pytest
from anyio.abc import TaskGroup

from researcher.errors import RequestError
from researcher.jobs.experiment import Experiment, ExperimentResult, RoundRecord
from researcher.requests.hooks import RequestHooks
from researcher.requests.policies import DiscardOnTimeout
from researcher.requests.router import Requests
from simulation.demo_plan import BreastCancerPlan
from tests.cluster.conftest import VHOST, Federation
from tests.support.cluster import LocalCluster

pytestmark = [
    pytest.mark.anyio,
    pytest.mark.cluster,
    pytest.mark.rabbitmq,
    pytest.mark.timeout(300),
]

ROUNDS = 4
KILL_ROUND = 2
TRAINING_ARGS = {"epochs": 2, "batch_size": 16, "learning_rate": 0.1, "seed": 1}


class KillMidRound:
    """``kill -9`` s broker nodes during one round and records when, to check that the round
    was under way.

    Args:
        moment: ``"publishing"`` kills just before the round's requests are published, so the
            publishes run into the loss; ``"training"`` kills ``delay`` seconds after they all
            went out, while the node agents train.
    """

    def __init__(
        self,
        cluster: LocalCluster,
        group: TaskGroup,
        brokers: Sequence[int],
        *,
        moment: str = "training",
        round_number: int = KILL_ROUND,
        delay: float = 0.3,
    ) -> None:
        self.cluster = cluster
        self.group = group
        self.brokers = list(brokers)
        self.moment = moment
        self.round_number = round_number
        self.delay = delay
        self.killed_at: float | None = None
        self.round_ended_at: float | None = None

    def hooks(self, number: int) -> RequestHooks | None:
        """Hooks for round ``number`` of an Experiment: the kill round's do the killing."""
        if number != self.round_number:
            return None
        if self.moment == "publishing":
            return RequestHooks(on_sending=lambda _request_id, _nodes: self._kill_now())
        return RequestHooks(on_sent=lambda _request_id, _sent: self.group.start_soon(self._kill))

    def on_round(self, record: RoundRecord) -> None:
        """Note when the kill round ended."""
        if record.round == self.round_number:
            self.round_ended_at = time.monotonic()

    def _kill_now(self) -> None:
        for broker in self.brokers:
            self.cluster.kill(broker)
        self.killed_at = time.monotonic()

    async def _kill(self) -> None:
        await anyio.sleep(self.delay)
        await anyio.to_thread.run_sync(self._kill_now)

    def assert_mid_round(self) -> None:
        """The brokers died during the round."""
        assert self.killed_at is not None, "the brokers were never killed"
        assert self.round_ended_at is not None
        assert self.killed_at < self.round_ended_at, "the round ended before the kill"
        assert not set(self.brokers) & set(self.cluster.running())


def _experiment(
    federation: Federation,
    requests: Requests,
    *,
    rounds: int = ROUNDS,
    timeout: float = 120.0,
    hooks: Callable[[int], RequestHooks | None] | None = None,
) -> Experiment:
    return Experiment(
        requests,
        plan=BreastCancerPlan,
        datasets=federation.datasets,
        rounds=rounds,
        training_args=TRAINING_ARGS,
        model_args={"n_features": 30},
        policies=[DiscardOnTimeout(timeout)],
        hooks=hooks,
    )


def _assert_every_reply_once(result: ExperimentResult, federation: Federation) -> None:
    assert [record.round for record in result.rounds] == list(range(1, ROUNDS + 1))
    assert len({record.request_id for record in result.rounds}) == ROUNDS
    for record in result.rounds:
        assert record.failed == {}, f"round {record.round}: {record.failed}"
        assert record.nodes == sorted(federation.nodes)
        assert set(record.sample_sizes) == set(federation.nodes)
        assert all(size > 0 for size in record.sample_sizes.values())
        assert set(record.metrics) == set(federation.nodes)


def _leaders(federation: Federation) -> dict[str, int]:
    """The broker node leading each quorum queue of the federation's namespace."""
    cluster = federation.cluster
    return {
        str(entry["name"]): cluster.node_number(str(entry["leader"]))
        for entry in cluster.queues(cluster.running()[0], VHOST)
        if str(entry["name"]).startswith(federation.namespace + ".") and entry["type"] == "quorum"
    }


async def test_a_follower_broker_killed_mid_round(federation: Federation) -> None:
    for node in federation.nodes:
        federation.start_agent(node, first_broker=1)
    async with (
        federation.researcher(first_broker=1) as requests,
        anyio.create_task_group() as group,
    ):
        # Everyone declared their queues on broker 1, which leads them all: 3 only follows.
        assert set((await anyio.to_thread.run_sync(_leaders, federation)).values()) == {1}
        kill = KillMidRound(federation.cluster, group, [3])
        result = await _experiment(federation, requests, hooks=kill.hooks).run(kill.on_round)
    kill.assert_mid_round()
    _assert_every_reply_once(result, federation)


@pytest.mark.parametrize("moment", ["publishing", "training"])
async def test_the_researchers_broker_killed_mid_round_while_it_leads(
    federation: Federation, moment: str, caplog: pytest.LogCaptureFixture
) -> None:
    # While publishing, every queue is led by the lost broker: the requests meet the loss of
    # the connection, then nacks while new leaders are elected. While training, the agents
    # are on another broker and their replies come back through the researcher's failover.
    agents_broker = 1 if moment == "publishing" else 2
    for node in federation.nodes:
        federation.start_agent(node, first_broker=agents_broker)
    caplog.set_level(logging.INFO, logger="broker_net.amqp")
    async with (
        federation.researcher(first_broker=1) as requests,
        anyio.create_task_group() as group,
    ):
        leaders = await anyio.to_thread.run_sync(_leaders, federation)
        reply_queue = federation.topology.researcher_queue("alice").name
        assert leaders[reply_queue] == 1
        assert leaders[federation.topology.node_queue("site-1").name] == agents_broker
        kill = KillMidRound(federation.cluster, group, [1], moment=moment)
        result = await _experiment(federation, requests, hooks=kill.hooks).run(kill.on_round)
        # Heartbeats still arrive: the transient presence queue, lost with its node, was
        # declared again on the new one. Three heartbeat intervals are the node's patience.
        await anyio.sleep(2.0)
        assert requests.presence.online_ids() == sorted(federation.nodes)
    kill.assert_mid_round()
    _assert_every_reply_once(result, federation)
    assert (await anyio.to_thread.run_sync(_leaders, federation))[reply_queue] != 1
    if moment == "publishing":
        ours = [r.getMessage() for r in caplog.records if r.name.startswith("broker_net.amqp")]
        retried = [message for message in ours if ".requests/" in message]
        assert retried, "no request publish was caught by the loss of the broker"


async def test_a_node_agents_broker_killed_while_it_trains(federation: Federation) -> None:
    trainee, *others = federation.nodes
    federation.start_agent(trainee, first_broker=2)
    for node in others:
        federation.start_agent(node, first_broker=3)
    async with (
        federation.researcher(first_broker=1) as requests,
        anyio.create_task_group() as group,
    ):
        kill = KillMidRound(federation.cluster, group, [2])
        result = await _experiment(federation, requests, hooks=kill.hooks).run(kill.on_round)
    kill.assert_mid_round()
    _assert_every_reply_once(result, federation)
    # The agent lost its broker with the request unacknowledged: the request came back on the
    # agent's new connection, and was answered from the reply the training had stored.
    assert "was answered before; sending the stored reply" in federation.log(trainee)


async def test_without_a_majority_a_request_fails_in_time_then_works_again(
    federation: Federation,
) -> None:
    timeout = 10.0
    for node in federation.nodes:
        federation.start_agent(node, first_broker=1)
    async with federation.researcher(first_broker=1) as requests:
        for broker in (2, 3):
            await anyio.to_thread.run_sync(federation.cluster.kill, broker)
        started = time.monotonic()
        with pytest.raises(RequestError) as failure:
            await _experiment(federation, requests, rounds=1, timeout=timeout).run()
        elapsed = time.monotonic() - started
        assert elapsed < timeout + 5, f"the request took {elapsed:.1f} s"
        assert "0 node(s) answered" in str(failure.value)
        assert str(failure.value).count("the broker did not confirm the request") == 3

        async with anyio.create_task_group() as restarting:
            for broker in (2, 3):
                restarting.start_soon(
                    anyio.to_thread.run_sync, federation.cluster.start_node, broker
                )
        await anyio.to_thread.run_sync(federation.cluster.wait_replicated, VHOST)

        result = await _experiment(federation, requests, rounds=1).run()
    assert result.rounds[0].nodes == sorted(federation.nodes)
    assert result.rounds[0].failed == {}
