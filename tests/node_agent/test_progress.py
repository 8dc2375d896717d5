"""Progress on the node: from the plan process through its pipe, then to the researcher's
queue, the latest report only, never holding up the training."""

from __future__ import annotations

import textwrap
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import anyio
import numpy as np
import pytest

import node_agent.progress as progress_module
from broker_net.codec import decode_message
from broker_net.codes import ErrorCode
from broker_net.envelope import EnvelopeHeader, unseal
from broker_net.frames import frame
from broker_net.memory import MemoryBroker, MemoryTransport
from broker_net.messages import TrainReply, TrainRequest
from broker_net.progress_messages import PROGRESS_EXPIRATION, ProgressMessage
from broker_net.topology import Topology
from broker_net.transport import OutgoingMessage
from node_agent._plan_worker import PROGRESS_INTERVAL
from node_agent.agent import NodeAgent
from node_agent.context import HandlerError
from node_agent.datasets import Table
from node_agent.progress import ProgressForwarder, ProgressForwarding, current_progress
from node_agent.replier import ReplySender
from node_agent.runner import run_training
from node_agent.settings import NodeSettings
from simulation.demo_setup import register_demo_shard
from tests.support.progress_plans import SlowPlan
from training_plans.plan import plan_source

pytestmark = pytest.mark.anyio
TOPOLOGY = Topology("progress")
REPLY_QUEUE = TOPOLOGY.researcher_queue("alice").name

REPORTING_PLAN = textwrap.dedent(
    """
    from training_plans.logistic import LogisticRegressionPlan

    class P(LogisticRegressionPlan):
        def train(self, x, y, training_args):
            for i in range(1, {n} + 1):
                self.report_progress(iteration=i, loss=1.0 / i, note="ignored")
            return {{"loss": 0.0}}
    """
)


@pytest.fixture(scope="module")
def table() -> Table:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(60, 3))
    return Table(["a", "b", "c", "y"], np.column_stack([x, (x[:, 0] > 0).astype(float)]))


async def test_the_plan_process_hands_over_its_reports_throttled_and_the_last_one(
    table: Table,
) -> None:
    reports: list[dict[str, Any]] = []
    started = time.monotonic()
    outcome = await run_training(
        REPORTING_PLAN.format(n=50_000), "P", table=table, target="y", params={},
        training_args={}, model_args={}, timeout=120, on_progress=reports.append,
    )  # fmt: skip
    elapsed = time.monotonic() - started

    assert outcome.metrics["train_loss"] == 0.0
    assert reports[-1] == {"iteration": 50_000.0, "loss": 1.0 / 50_000}
    assert reports[0] == {"iteration": 1.0, "loss": 1.0}
    # At most one frame per interval of the worker, and the last one.
    assert 2 <= len(reports) <= elapsed / PROGRESS_INTERVAL + 2
    iterations = [r["iteration"] for r in reports]
    assert iterations == sorted(iterations)


class Broker:
    """A transport that records what is published, or holds every publish until released."""

    def __init__(self) -> None:
        self.published: list[tuple[str, str, OutgoingMessage]] = []
        self.stuck = False

    async def publish(
        self, exchange: str, routing_key: str, message: OutgoingMessage, *, mandatory: bool = False
    ) -> None:
        if self.stuck:
            await anyio.sleep_forever()
        self.published.append((exchange, routing_key, message))

    def messages(self) -> list[ProgressMessage]:
        found = []
        for _, _, outgoing in self.published:
            message = decode_message(unseal(outgoing.body_bytes()).body)
            assert isinstance(message, ProgressMessage)
            found.append(message)
        return found


def _forwarder(tmp_path: Path, broker: Broker) -> ProgressForwarder:
    replier = ReplySender("n1", "Node 1", broker, TOPOLOGY, None, None, {"errors": 0})  # type: ignore[arg-type]
    request = TrainRequest(
        researcher_id="alice", experiment_id="exp", round=3, dataset_id="d",
        training_plan="source", training_plan_class="P",
    )  # fmt: skip
    return ProgressForwarder(replier, request, REPLY_QUEUE, "alice", interval=3600)


async def test_many_reports_make_one_message_with_the_latest_values(tmp_path: Path) -> None:
    broker = Broker()
    forwarder = _forwarder(tmp_path, broker)
    for i in range(1000):
        forwarder.offer({"iteration": i, "loss": 1.0 / (i + 1), "note": "dropped"})
    await forwarder.send_pending()
    await forwarder.send_pending()  # nothing new: nothing sent
    forwarder.offer({"iteration": 1000})
    await forwarder.send_pending()

    first, second = broker.messages()
    assert first.values == {"iteration": 999.0, "loss": 1.0 / 1000}
    assert (first.sequence, second.sequence) == (0, 1)
    assert second.values == {"iteration": 1000.0}
    assert (first.request_id, first.researcher_id, first.node_id, first.node_name) == (
        forwarder.request.request_id, "alice", "n1", "Node 1",
    )  # fmt: skip
    assert (first.experiment_id, first.round) == ("exp", 3)
    exchange, routing_key, outgoing = broker.published[0]
    assert (exchange, routing_key) == (TOPOLOGY.replies_exchange.name, REPLY_QUEUE)
    assert outgoing.expiration == PROGRESS_EXPIRATION
    assert not outgoing.persistent
    assert outgoing.reply_to is None
    assert outgoing.correlation_id == forwarder.request.request_id


async def test_a_stuck_broker_neither_holds_up_reports_nor_piles_them_up(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(progress_module, "PUBLISH_DEADLINE", 0.1)
    broker = Broker()
    broker.stuck = True
    forwarder = _forwarder(tmp_path, broker)
    forwarder.offer({"iteration": 1})
    async with anyio.create_task_group() as group:
        group.start_soon(forwarder.send_pending)  # stuck until its deadline
        # Reports from the plan's side (another thread) return at once meanwhile.
        await anyio.to_thread.run_sync(
            lambda: [forwarder.offer({"iteration": i}) for i in range(2, 10_001)]
        )
    assert broker.published == []  # the stuck message was given up

    broker.stuck = False
    await forwarder.send_pending()
    await forwarder.send_pending()
    (only,) = broker.messages()
    assert only.values == {"iteration": 10_000.0}
    assert only.sequence == 1  # the given-up message had number 0


async def test_closing_a_forwarder_sends_its_last_report(tmp_path: Path) -> None:
    broker = Broker()
    forwarder = _forwarder(tmp_path, broker)
    async with anyio.create_task_group() as group:
        group.start_soon(forwarder.run)
        forwarder.offer({"iteration": 7})
        forwarder.close()
    (last,) = broker.messages()
    assert last.values == {"iteration": 7.0}


async def test_a_node_set_to_send_no_progress_sends_none(tmp_path: Path) -> None:
    entry, _ = register_demo_shard(tmp_path / "n1", 0, 1)
    settings = NodeSettings(
        node_id="n1", data_dir=tmp_path / "n1", namespace=TOPOLOGY.namespace, security=False,
        require_approval=False, progress_interval=0,
    )  # fmt: skip
    request = TrainRequest(
        researcher_id="alice", experiment_id="e", round=1, dataset_id=entry.dataset_id,
        training_plan=plan_source(SlowPlan), training_plan_class="SlowPlan",
        training_args={"seconds": 1.0}, model_args={"n_features": 30},
    )  # fmt: skip
    broker = MemoryBroker()
    async with MemoryTransport(broker) as researcher_side, MemoryTransport(broker) as node_side:
        queue = TOPOLOGY.researcher_queue("alice")
        await researcher_side.declare(*TOPOLOGY.researcher_declarations("alice"))
        async with NodeAgent(settings, node_side, shutdown_grace=1):
            header = EnvelopeHeader.for_message(
                request, sender_id="alice", sender_role="researcher", recipient="n1"
            )
            await researcher_side.publish(
                TOPOLOGY.requests_exchange.name, "n1", frame(header, request, reply_to=queue.name)
            )
            async with researcher_side.consume(queue) as deliveries:
                async for delivery in deliveries:  # the first message is the reply
                    first = decode_message(unseal(delivery.body).body)
                    await delivery.ack()
                    break
    assert isinstance(first, TrainReply) and first.success


async def test_a_handlers_error_leaves_the_forwarding_as_it_is(tmp_path: Path) -> None:
    broker = Broker()
    forwarder = _forwarder(tmp_path, broker)
    forwarding = ProgressForwarding(forwarder.replier, interval=3600)
    incoming = SimpleNamespace(
        delivery=SimpleNamespace(reply_to=REPLY_QUEUE), header=SimpleNamespace(sender_id="alice")
    )
    with pytest.raises(HandlerError) as raised:
        async with forwarding.forwarding(forwarder.request, incoming):  # type: ignore[arg-type]
            report = current_progress()
            assert report is not None
            report({"iteration": 1})
            raise HandlerError(ErrorCode.PLAN_FAILED, "the plan failed")
    assert raised.value.code is ErrorCode.PLAN_FAILED
    assert current_progress() is None
    assert broker.published == []  # a failed round's last report is not sent

    async with forwarding.forwarding(forwarder.request, incoming):  # type: ignore[arg-type]
        report = current_progress()
        assert report is not None
        report({"iteration": 2})
    assert [m.values for m in broker.messages()] == [{"iteration": 2.0}]
