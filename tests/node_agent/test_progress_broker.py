"""Progress over RabbitMQ with nobody reading it: the training goes on, the reply waits in
the researcher's queue, and the progress expires instead of piling up."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import anyio
import pytest

import node_agent.progress as progress_module
from broker_net.amqp import AmqpTransport
from broker_net.codec import decode_message
from broker_net.envelope import EnvelopeHeader, unseal
from broker_net.frames import frame
from broker_net.messages import TrainReply, TrainRequest
from broker_net.topology import Topology
from broker_net.transport import OutgoingMessage
from node_agent.agent import NodeAgent
from node_agent.settings import NodeSettings
from simulation.demo_setup import register_demo_shard
from tests.support.progress_plans import SlowPlan
from training_plans.plan import plan_source

pytestmark = [pytest.mark.rabbitmq, pytest.mark.anyio, pytest.mark.slow]


async def test_unread_progress_expires_and_never_holds_up_the_training(
    amqp_url: str, topology: Topology, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(progress_module, "PROGRESS_EXPIRATION", 0.3)
    entry, _ = register_demo_shard(tmp_path / "n1", 0, 1)
    settings = NodeSettings(
        node_id="n1", data_dir=tmp_path / "n1", namespace=topology.namespace, security=False,
        require_approval=False,
    )  # fmt: skip
    request = TrainRequest(
        researcher_id="alice", experiment_id="e", round=1, dataset_id=entry.dataset_id,
        training_plan=plan_source(SlowPlan), training_plan_class="SlowPlan",
        training_args={"seconds": 2.0}, model_args={"n_features": 30},
    )  # fmt: skip
    queue = topology.researcher_queue("alice")
    progress_sent: list[OutgoingMessage] = []

    async with (
        AmqpTransport(amqp_url, connection_name="researcher") as researcher_side,
        AmqpTransport(amqp_url, connection_name="node") as node_side,
    ):
        await researcher_side.declare(*topology.researcher_declarations("alice"))
        publish = node_side.publish

        async def counting(exchange: str, key: str, message: OutgoingMessage, **kw: Any) -> None:
            if message.type == "progress":
                progress_sent.append(message)
            await publish(exchange, key, message, **kw)

        node_side.publish = counting  # type: ignore[method-assign]
        async with NodeAgent(settings, node_side, shutdown_grace=1) as agent:
            header = EnvelopeHeader.for_message(
                request, sender_id="alice", sender_role="researcher", recipient="n1"
            )
            started = time.monotonic()
            await researcher_side.publish(
                topology.requests_exchange.name, "n1", frame(header, request, reply_to=queue.name)
            )
            with anyio.fail_after(60):
                while agent.counters["handled"] < 1:
                    await anyio.sleep(0.05)
            elapsed = time.monotonic() - started
        await anyio.sleep(1.0)  # well past the progress expiration
        found = []
        async with researcher_side.consume(queue) as deliveries:
            with anyio.move_on_after(2.0):
                async for delivery in deliveries:
                    found.append(decode_message(unseal(delivery.body).body))
                    await delivery.ack()

    assert 1 <= len(progress_sent) <= elapsed / progress_module.PROGRESS_INTERVAL + 2
    assert all(m.expiration == 0.3 and not m.persistent for m in progress_sent)
    # Only the reply is left: the progress nobody read was dropped by the broker.
    assert [type(message) for message in found] == [TrainReply]
    assert isinstance(found[0], TrainReply) and found[0].success
