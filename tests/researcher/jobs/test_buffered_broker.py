"""Asynchronous training over RabbitMQ with node agent processes of very different speeds: one
about 5x slower (its rounds, not only its added delay), one joining late, one killed mid-job.
Training completes and every update is accounted for: applied, dropped as stale, or lost with
its node named (or, at the end, cancelled or left in the buffer). And once it ended, no answer
to the requests it cancelled is left in the researcher's reply queue."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import aio_pika
import anyio
import pytest

from broker_net.amqp import AmqpTransport
from broker_net.topology import Topology
from researcher.jobs.buffered import BufferedExperiment
from researcher.jobs.buffered_records import StopWhen, UpdateStatus
from researcher.jobs.fedbuff import FedBuffSettings
from researcher.requests.router import Requests
from simulation.demo_plan import BreastCancerPlan
from simulation.demo_setup import register_demo_shard
from tests.support.processes import AgentProcesses

pytestmark = [pytest.mark.rabbitmq, pytest.mark.anyio]

FAST, SLOW, LATE, DOOMED = "fast", "slow", "late", "doomed"
NODES = [FAST, SLOW, LATE, DOOMED]
DELAY = 1.0  # seconds each training takes on top of the plan's own time (more on the slow node)
SLOWER = 5  # the slow node's round against a fast node's
VERSIONS = 14
NO_APPROVAL = {"BROKER_NET_NODE_REQUIRE_APPROVAL": "false"}


@pytest.mark.timeout(240)
async def test_nodes_of_different_speeds_joining_and_dying_account_for_every_update(
    agents: AgentProcesses, requests: Requests, tmp_path: Path
) -> None:
    datasets = {
        node: register_demo_shard(tmp_path / node, index, len(NODES))[0].dataset_id
        for index, node in enumerate(NODES)
    }
    await agents.astart_all([FAST, DOOMED], "--train-delay", str(DELAY), env=NO_APPROVAL)
    await requests.wait_for_nodes([FAST, DOOMED], timeout=20)

    sent: list[tuple[str, str, int]] = []
    kill_now, start_slow, start_late = anyio.Event(), anyio.Event(), anyio.Event()
    fast_rounds: list[float] = []

    def on_version(version, params, applied) -> None:  # type: ignore[no-untyped-def]
        # A fast round is DELAY plus the plan's own time, which the slow node takes too: its
        # delay makes its round SLOWER times the quickest of the first two fast rounds.
        fast_rounds.extend(u.round_trip for u in applied if u.round_trip is not None)
        if len(fast_rounds) >= 2:
            start_slow.set()
        if version.version >= 2 and DOOMED in {u.node_id for u in applied}:
            kill_now.set()
        if version.version >= 4:
            start_late.set()

    experiment = BufferedExperiment(
        requests, plan=BreastCancerPlan, datasets=datasets, model_args={"n_features": 30},
        training_args={"epochs": 1, "learning_rate": 1e-5, "batch_size": 32},
        settings=FedBuffSettings(buffer_size=2, max_staleness=10),
        stop=StopWhen(max_versions=VERSIONS, time_budget=150),
        request_timeout=60, disconnect_grace=1.0, on_version=on_version,
        on_send=lambda request_id, node, version: sent.append((request_id, node, version)),
    )  # fmt: skip

    async def chaos() -> None:
        await kill_now.wait()
        await anyio.to_thread.run_sync(agents.kill, DOOMED)
        await start_late.wait()
        await anyio.to_thread.run_sync(
            lambda: agents.start(LATE, "--train-delay", str(DELAY), env=NO_APPROVAL)
        )

    async def slow_node() -> None:
        await start_slow.wait()
        fast = min(fast_rounds[:2])
        delay = SLOWER * fast - (fast - DELAY)
        await anyio.to_thread.run_sync(
            lambda: agents.start(SLOW, "--train-delay", f"{delay:.3f}", env=NO_APPROVAL)
        )

    async with anyio.create_task_group() as group:
        group.start_soon(chaos)
        group.start_soon(slow_node)
        result = await experiment.run()
        group.cancel_scope.cancel()

    assert result.version == VERSIONS, result.stopped_because
    assert result.stopped_because == f"version {VERSIONS} of {VERSIONS} published"
    # Every request sent has exactly one fate.
    assert sorted(u.request_id for u in result.updates) == sorted(r for r, _, _ in sent)
    by_status = Counter(u.status for u in result.updates)
    assert UpdateStatus.IN_FLIGHT not in by_status
    applied = [u for u in result.updates if u.status is UpdateStatus.APPLIED]
    assert len(applied) == 2 * VERSIONS
    assert sorted(Counter(u.applied_in for u in applied).values()) == [2] * VERSIONS
    # The killed node's request in flight was lost, with the node named.
    lost = [u for u in result.updates if u.status is UpdateStatus.LOST]
    assert [u.node_id for u in lost] == [DOOMED], lost
    assert DOOMED in lost[0].reason
    # The late node joined and its updates count; the slow one's arrived stale.
    applied_by = Counter(u.node_id for u in applied)
    assert applied_by[LATE] >= 1 and applied_by[FAST] > applied_by[SLOW] >= 1, applied_by
    slow = [u for u in result.updates if u.node_id == SLOW and u.staleness is not None]
    assert max(u.staleness or 0 for u in slow) >= 1
    late_first = min(version for _, node, version in sent if node == LATE)
    assert late_first >= 4
    # What was left when training ended: requests cancelled, updates in a half-full buffer.
    ended = [u for u in result.updates if u.status in (UpdateStatus.CANCELLED,
                                                       UpdateStatus.UNAPPLIED)]  # fmt: skip
    assert {u.node_id for u in ended} <= {FAST, SLOW, LATE}
    assert set(by_status) <= {UpdateStatus.APPLIED, UpdateStatus.STALE, UpdateStatus.LOST,
                              UpdateStatus.CANCELLED, UpdateStatus.UNAPPLIED}  # fmt: skip


@pytest.mark.timeout(120)
async def test_after_asynchronous_training_no_answer_to_its_cancels_is_left_in_the_reply_queue(
    agents: AgentProcesses, amqp_url: str, topology: Topology, tmp_path: Path
) -> None:
    """The slow node's request is in flight when training ends: it is cancelled, and both of
    its node's answers (the request's CANCELLED error and the cancel's reply) are taken before
    the run returns, so the next process with this researcher id finds the queue empty."""
    datasets = {
        node: register_demo_shard(tmp_path / node, index, 2)[0].dataset_id
        for index, node in enumerate([FAST, SLOW])
    }
    agents.start(FAST, wait=False, env=NO_APPROVAL)
    agents.start(SLOW, "--train-delay", "60", wait=False, env=NO_APPROVAL)
    for node in (FAST, SLOW):
        agents.wait_ready(node)
    async with (
        AmqpTransport(amqp_url, connection_name="researcher") as transport,
        Requests(transport, "carol", topology=topology, presence_check_interval=0.2) as requests,
    ):
        await requests.wait_for_nodes([FAST, SLOW], timeout=20)
        experiment = BufferedExperiment(
            requests, plan=BreastCancerPlan, datasets=datasets, model_args={"n_features": 30},
            training_args={"epochs": 1, "learning_rate": 1e-5, "batch_size": 32},
            settings=FedBuffSettings(buffer_size=1), stop=StopWhen(max_versions=2),
            request_timeout=90,
        )  # fmt: skip
        result = await experiment.run()
        cancelled = [u.request_id for u in result.updates if u.status is UpdateStatus.CANCELLED]
        late = {(late.request_id, late.node_id) for late in requests.late_replies}
        unanswered = requests.reply_log.cancels_unanswered(cancelled)

    assert result.version == 2, result.stopped_because
    slow = [u for u in result.updates if u.node_id == SLOW]
    assert [(u.status, u.request_id) for u in slow] == [(UpdateStatus.CANCELLED, cancelled[0])]
    assert (cancelled[0], SLOW) in late  # the request's own answer came
    assert unanswered == set()  # and the cancel's
    async with await aio_pika.connect(amqp_url) as connection:
        channel = await connection.channel()
        queue = await channel.declare_queue(topology.researcher_queue("carol").name, passive=True)
        assert queue.declaration_result.message_count == 0
