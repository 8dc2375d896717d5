"""What only RabbitMQ does: wire properties, declarations, recovery and vhost isolation.

The shared Transport contract is in ``test_transport_contract.py``; these tests check what the
broker itself sees, through the management API, and how AmqpTransport rides out a broker that
drops its connections.
"""

from __future__ import annotations

import base64
import re
import shutil
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any
from urllib.parse import quote

import anyio
import pytest

from broker_net.admin.management import ManagementClient
from broker_net.amqp import AmqpTransport
from broker_net.errors import BrokerAccessError, ConnectionLostError, TransportError
from broker_net.topology import Topology
from broker_net.transport import Delivery, OutgoingMessage
from tests.conftest import ADMIN, AMQP_HOST, AMQP_PORT, MANAGEMENT_URL

pytestmark = [pytest.mark.anyio, pytest.mark.rabbitmq]

NODE = "hospital-a"
Connect = Callable[..., AmqpTransport]


@pytest.fixture
def connect(amqp_url: str, request: pytest.FixtureRequest) -> Connect:
    """Build AmqpTransports named after the test; they reconnect quickly after a drop."""

    def make(name: str, url: str | None = None, **options: Any) -> AmqpTransport:
        return AmqpTransport(
            f"{url or amqp_url}?reconnect_interval=0.2",
            connection_name=f"{request.node.name}:{name}",
            **options,
        )

    return make


@pytest.fixture
async def management() -> AsyncIterator[ManagementClient]:
    async with ManagementClient(MANAGEMENT_URL, *ADMIN) as client:
        yield client


def _message(message_id: str, **fields: object) -> OutgoingMessage:
    return OutgoingMessage(body=f"body of {message_id}".encode(), message_id=message_id,
                           type="ping_request", **fields)  # type: ignore[arg-type]  # fmt: skip


async def _next(deliveries: AsyncIterator[Delivery], timeout: float = 4) -> Delivery:
    with anyio.fail_after(timeout):
        return await anext(deliveries)


async def _close_vhost_connections(vhost: str) -> int:
    """Drop every client connection of this test session's vhost, as a broker restart would;
    return how many were closed."""
    rabbitmqctl = shutil.which("rabbitmqctl")
    assert rabbitmqctl is not None, "rabbitmqctl is needed to drop connections"
    done = await anyio.run_process([rabbitmqctl, "close_all_connections", "-p", vhost, "test"])
    found = re.search(r"Closed (\d+) connection", done.stdout.decode())
    assert found is not None, done.stdout
    return int(found.group(1))


async def test_messages_are_persistent_msgpack(
    connect: Connect, topology: Topology, management: ManagementClient, rabbitmq_vhost: str
) -> None:
    async with connect("publisher") as transport:
        await transport.declare(*topology.node_declarations(NODE))
        exchange = topology.requests_exchange.name
        await transport.publish(
            exchange,
            NODE,
            _message("m1", correlation_id="request_1", reply_to="queue", headers={"round": 3}),
        )
        await transport.publish(exchange, NODE, _message("m2", persistent=False, expiration=60))
    queue = topology.node_queue(NODE).name
    messages = await management.get_messages(rabbitmq_vhost, queue, count=2)
    assert [m["properties"]["message_id"] for m in messages] == ["m1", "m2"]
    first, second = (m["properties"] for m in messages)
    assert first["content_type"] == second["content_type"] == "application/msgpack"
    assert first["delivery_mode"] == 2
    assert second["delivery_mode"] == 1
    assert second["expiration"] == "60000"
    assert first["type"] == "ping_request"
    assert first["app_id"] == "broker-net"
    assert first["correlation_id"] == "request_1"
    assert first["reply_to"] == "queue"
    assert first["headers"] == {"round": 3}
    assert base64.b64decode(messages[0]["payload"]) == b"body of m1"
    assert messages[0]["exchange"] == topology.requests_exchange.name
    assert messages[0]["routing_key"] == NODE


async def test_declarations_match_the_topology(
    connect: Connect, namespace: str, management: ManagementClient, rabbitmq_vhost: str
) -> None:
    topology = Topology(namespace, queue_type="quorum", max_queue_length=100)
    async with connect("declarer") as transport:
        await transport.declare(*topology.node_declarations(NODE))
        await transport.declare(*topology.researcher_declarations("alice"))
        node = await management.queue(rabbitmq_vhost, topology.node_queue(NODE).name)
        replies = await management.queue(rabbitmq_vhost, topology.researcher_queue("alice").name)
        presence = await management.queue(rabbitmq_vhost, topology.presence_queue("alice").name)
    assert node is not None and replies is not None and presence is not None
    assert node["type"] == replies["type"] == "quorum"
    assert node["durable"] and not node["auto_delete"]
    assert node["arguments"] == topology.node_queue(NODE).arguments
    assert presence["type"] == "classic"
    assert not presence["durable"] and presence["auto_delete"]
    assert presence["arguments"] == topology.presence_queue("alice").arguments


async def test_redeclaring_with_other_arguments_is_refused(
    connect: Connect, namespace: str
) -> None:
    async with connect("declarer") as transport:
        await transport.declare(*Topology(namespace).node_declarations(NODE))
        with pytest.raises(TransportError, match="PRECONDITION_FAILED"):
            await transport.declare(Topology(namespace, max_queue_length=5).node_queue(NODE))
        # the broker closed the channel; the transport reopens it and carries on
        await transport.declare(*Topology(namespace).node_declarations(NODE))
        assert await transport.consumer_count(Topology(namespace).node_queue(NODE).name) == 0


async def test_recovers_after_the_broker_drops_connections(
    connect: Connect, topology: Topology, rabbitmq_vhost: str
) -> None:
    count = 30
    expected = {f"m{number}" for number in range(count)}
    received: list[str] = []
    async with connect("publisher") as publisher, connect("consumer") as consumer:
        await publisher.declare(*topology.node_declarations(NODE))
        async with consumer.consume(topology.node_queue(NODE)) as deliveries:

            async def receive_all() -> None:
                unsettled: list[Delivery] = []
                async for delivery in deliveries:
                    received.append(delivery.message_id or "")
                    unsettled.append(delivery)
                    # settle late, so that deliveries are in flight when the connection drops;
                    # acks on the dead channel do nothing and the broker redelivers
                    while len(unsettled) > 3 or (unsettled and expected <= set(received)):
                        await unsettled.pop(0).ack()
                    if expected <= set(received):
                        return

            with anyio.fail_after(4.5):
                async with anyio.create_task_group() as tasks:
                    tasks.start_soon(receive_all)
                    exchange = topology.requests_exchange.name
                    for number in range(count):
                        if number == count // 2:
                            dropped = await _close_vhost_connections(rabbitmq_vhost)
                        # the first publish after the drop waits for the reconnection
                        await publisher.publish(exchange, NODE, _message(f"m{number}"))
    assert dropped >= 2  # the publisher's and the consumer's
    assert set(received) == expected
    assert len(received) >= count


async def test_vhosts_are_isolated(
    connect: Connect, namespace: str, management: ManagementClient, amqp_url: str
) -> None:
    other_vhost = f"test-{uuid.uuid4().hex[:12]}"
    await management.create_vhost(other_vhost)
    try:
        await management.set_permissions(
            other_vhost, ADMIN[0], configure=".*", write=".*", read=".*"
        )
        other_url = f"amqp://guest:guest@{AMQP_HOST}:{AMQP_PORT}/{quote(other_vhost, safe='')}"
        topology = Topology(namespace)  # the very same names in both vhosts
        async with connect("here") as here, connect("there", other_url) as there:
            for transport in (here, there):
                await transport.declare(*topology.node_declarations(NODE))
            await here.publish(topology.requests_exchange.name, NODE, _message("here-only"))
            async with there.consume(topology.node_queue(NODE)) as deliveries:
                with anyio.move_on_after(0.3):
                    delivery = await anext(deliveries)
                    pytest.fail(f"{delivery.message_id} crossed vhosts")
            async with here.consume(topology.node_queue(NODE)) as deliveries:
                delivery = await _next(deliveries)
                await delivery.ack()
            assert delivery.message_id == "here-only"
    finally:
        await management.delete_vhost(other_vhost)


async def test_wrong_password_is_an_access_error(rabbitmq_vhost: str) -> None:
    url = f"amqp://guest:wrong@{AMQP_HOST}:{AMQP_PORT}/{quote(rabbitmq_vhost, safe='')}"
    with pytest.raises(BrokerAccessError):
        async with AmqpTransport(url, connect_timeout=3):
            pass


async def test_unreachable_broker_is_a_lost_connection() -> None:
    with pytest.raises(ConnectionLostError):
        async with AmqpTransport("amqp://guest:guest@127.0.0.1:1/", connect_timeout=3):
            pass
