"""The Transport contract, written once and run on MemoryTransport and on RabbitMQ.

Every test here takes the ``transport`` (or ``make_transport``) fixture, parametrized
``memory``/``amqp``; behaviour only RabbitMQ has is tested in ``test_amqp.py``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import anyio
import pytest

from broker_net.codec import decode_message
from broker_net.envelope import EnvelopeHeader, seal, unseal
from broker_net.errors import ConnectionLostError, PublishError, UnroutableError
from broker_net.messages import Heartbeat, PingReply, PingRequest
from broker_net.topology import QueueSpec, QueueType, Topology
from broker_net.transport import Delivery, OutgoingMessage, Transport

pytestmark = pytest.mark.anyio

NODE = "hospital-a"


def _message(message_id: str, body: bytes = b"payload", **fields: Any) -> OutgoingMessage:
    return OutgoingMessage(body=body, message_id=message_id, type="ping_request", **fields)


async def _next(deliveries: AsyncIterator[Delivery], timeout: float = 4) -> Delivery:
    with anyio.fail_after(timeout):
        return await anext(deliveries)


async def _assert_nothing_arrives(deliveries: AsyncIterator[Delivery], wait: float = 0.3) -> None:
    with anyio.move_on_after(wait):
        delivery = await anext(deliveries)
        pytest.fail(f"unexpected delivery {delivery.message_id}")


async def _drain_with_headers(
    transport: Transport, queue: QueueSpec
) -> list[tuple[str | None, dict[str, Any]]]:
    """Ack every message waiting in ``queue``; return their ids and headers, in order."""
    found = []
    async with transport.consume(queue) as deliveries:
        while True:
            with anyio.move_on_after(0.3):
                delivery = await anext(deliveries)
                await delivery.ack()
                found.append((delivery.message_id, delivery.headers))
                continue
            return found


async def _drain(transport: Transport, queue: QueueSpec) -> list[str | None]:
    return [message_id for message_id, _ in await _drain_with_headers(transport, queue)]


async def _declare_node(transport: Transport, topology: Topology) -> None:
    # the dead-letter queue is the researcher's to declare; these tests read it
    await transport.declare(*topology.node_declarations(NODE), topology.dead_letter_queue)


async def _send(transport: Transport, topology: Topology, message: OutgoingMessage) -> None:
    await transport.publish(topology.requests_exchange.name, NODE, message)


async def test_publish_consume_ack(transport: Transport, topology: Topology) -> None:
    await _declare_node(transport, topology)
    await _send(transport, topology, _message("m1", b"\x00hello\xff"))
    async with transport.consume(topology.node_queue(NODE)) as deliveries:
        delivery = await _next(deliveries)
        assert delivery.body == b"\x00hello\xff"
        assert delivery.message_id == "m1"
        assert delivery.exchange == topology.requests_exchange.name
        assert delivery.routing_key == NODE
        assert not delivery.redelivered
        assert not delivery.settled
        await delivery.ack()
        assert delivery.settled
    async with transport.consume(topology.node_queue(NODE)) as deliveries:
        await _assert_nothing_arrives(deliveries)


async def test_declare_is_idempotent(transport: Transport, topology: Topology) -> None:
    await _declare_node(transport, topology)
    await _declare_node(transport, topology)
    await transport.declare(*topology.researcher_declarations("alice"))
    assert await transport.consumer_count(topology.node_queue(NODE).name) == 0


async def test_messages_arrive_in_order(transport: Transport, topology: Topology) -> None:
    await _declare_node(transport, topology)
    for number in range(5):
        await _send(transport, topology, _message(f"m{number}"))
    async with transport.consume(topology.node_queue(NODE)) as deliveries:
        received = []
        for _ in range(5):
            delivery = await _next(deliveries)
            received.append(delivery.message_id)
            await delivery.ack()
    assert received == [f"m{number}" for number in range(5)]


async def test_reject_with_requeue_redelivers(transport: Transport, topology: Topology) -> None:
    await _declare_node(transport, topology)
    await _send(transport, topology, _message("m1"))
    async with transport.consume(topology.node_queue(NODE)) as deliveries:
        first = await _next(deliveries)
        await first.reject(requeue=True)
        again = await _next(deliveries)
        assert again.message_id == "m1"
        assert again.redelivered
        assert again.body == first.body
        await again.ack()


async def test_reject_without_requeue_dead_letters(
    transport: Transport, topology: Topology
) -> None:
    await _declare_node(transport, topology)
    await _send(transport, topology, _message("m1", headers={"request-id": "r1"}))
    async with transport.consume(topology.node_queue(NODE)) as deliveries:
        await (await _next(deliveries)).reject(requeue=False)
        await _assert_nothing_arrives(deliveries)
    async with transport.consume(topology.dead_letter_queue) as dead:
        delivery = await _next(dead)
        await delivery.ack()
    assert delivery.message_id == "m1"
    assert delivery.body == b"payload"
    assert delivery.headers["request-id"] == "r1"
    death = delivery.headers["x-death"][0]
    assert death["reason"] == "rejected"
    assert death["queue"] == topology.node_queue(NODE).name
    assert death["count"] == 1


async def test_settling_twice_is_harmless(transport: Transport, topology: Topology) -> None:
    await _declare_node(transport, topology)
    await _send(transport, topology, _message("m1"))
    async with transport.consume(topology.node_queue(NODE)) as deliveries:
        delivery = await _next(deliveries)
        await delivery.ack()
        await delivery.ack()
        await delivery.reject(requeue=True)
        await _assert_nothing_arrives(deliveries)


async def test_expired_message_is_dead_lettered(transport: Transport, topology: Topology) -> None:
    await _declare_node(transport, topology)
    await _send(transport, topology, _message("stale", expiration=0.05))
    await _send(transport, topology, _message("fresh"))
    await anyio.sleep(0.3)
    async with transport.consume(topology.dead_letter_queue) as dead:
        delivery = await _next(dead)
        await delivery.ack()
    assert delivery.message_id == "stale"
    assert delivery.headers["x-death"][0]["reason"] == "expired"
    assert delivery.headers["x-death"][0]["queue"] == topology.node_queue(NODE).name
    async with transport.consume(topology.node_queue(NODE)) as deliveries:
        delivery = await _next(deliveries)
        assert delivery.message_id == "fresh"
        await delivery.ack()


@pytest.mark.parametrize("queue_type", ["classic", "quorum"])
async def test_full_node_queue_refuses(
    transport: Transport, namespace: str, queue_type: QueueType
) -> None:
    topology = Topology(namespace, queue_type=queue_type, max_queue_length=2)
    await _declare_node(transport, topology)
    accepted = []
    with pytest.raises(PublishError):  # the refusal ends the loop
        for number in range(4):
            await _send(transport, topology, _message(f"m{number}"))
            accepted.append(f"m{number}")
    refused = f"m{len(accepted)}"
    if queue_type == "classic":
        assert accepted == ["m0", "m1"]
    else:
        # RabbitMQ checks a quorum queue's bound after enqueueing: one more may get in
        assert accepted in (["m0", "m1"], ["m0", "m1", "m2"])
    assert await _drain(transport, topology.node_queue(NODE)) == accepted
    # a classic queue also dead-letters the refused request; a quorum queue cannot
    dead = await _drain(transport, topology.dead_letter_queue)
    assert dead == ([refused] if queue_type == "classic" else [])


@pytest.mark.parametrize(
    ("overflow", "refused", "kept", "dead"),
    [
        (None, False, ["m2", "m3"], ["m1"]),
        ("drop-head", False, ["m2", "m3"], ["m1"]),
        ("reject-publish", True, ["m1", "m2"], []),
        ("reject-publish-dlx", True, ["m1", "m2"], ["m3"]),
    ],
)
async def test_bounded_queue_overflow(
    transport: Transport,
    topology: Topology,
    overflow: str | None,
    refused: bool,
    kept: list[str],
    dead: list[str],
) -> None:
    arguments: dict[str, Any] = {
        "x-max-length": 2,
        "x-dead-letter-exchange": topology.dead_letter_exchange.name,
    }
    if overflow is not None:
        arguments["x-overflow"] = overflow
    bounded = QueueSpec(
        f"{topology.namespace}.bounded",
        arguments=arguments,
        bindings=((topology.requests_exchange.name, "bounded"),),
    )
    await _declare_node(transport, topology)
    await transport.declare(bounded)
    exchange = topology.requests_exchange.name
    await transport.publish(exchange, "bounded", _message("m1"))
    await transport.publish(exchange, "bounded", _message("m2"))
    if refused:
        with pytest.raises(PublishError):
            await transport.publish(exchange, "bounded", _message("m3"))
    else:
        await transport.publish(exchange, "bounded", _message("m3"))
    assert await _drain(transport, bounded) == kept
    death_reasons = []
    for message_id, headers in await _drain_with_headers(transport, topology.dead_letter_queue):
        assert message_id in dead
        death_reasons.append(headers["x-death"][0]["reason"])
    assert death_reasons == ["maxlen"] * len(dead)


async def test_a_full_queue_does_not_stop_the_others(
    transport: Transport, topology: Topology
) -> None:
    fanout = topology.presence_exchange.name
    full = QueueSpec(
        f"{topology.namespace}.full",
        arguments={"x-max-length": 0, "x-overflow": "reject-publish"},
        bindings=((fanout, ""),),
    )
    open_ = QueueSpec(f"{topology.namespace}.open", bindings=((fanout, ""),))
    await transport.declare(topology.presence_exchange, full, open_)
    with pytest.raises(PublishError):
        await transport.publish(fanout, "", _message("m1"))
    assert await _drain(transport, open_) == ["m1"]
    assert await _drain(transport, full) == []


async def test_prefetch_bounds_unsettled_deliveries(
    transport: Transport, topology: Topology
) -> None:
    await _declare_node(transport, topology)
    for number in range(5):
        await _send(transport, topology, _message(f"m{number}"))
    async with transport.consume(topology.node_queue(NODE), prefetch=2) as deliveries:
        first = await _next(deliveries)
        second = await _next(deliveries)
        await _assert_nothing_arrives(deliveries)
        await first.ack()
        third = await _next(deliveries)
        await _assert_nothing_arrives(deliveries)
        assert [d.message_id for d in (first, second, third)] == ["m0", "m1", "m2"]
        await second.reject(requeue=False)
        fourth = await _next(deliveries)
        assert fourth.message_id == "m3"
        for delivery in (third, fourth):
            await delivery.ack()
        fifth = await _next(deliveries)
        assert fifth.message_id == "m4"
        await fifth.ack()


async def test_leaving_consume_requeues_unsettled(transport: Transport, topology: Topology) -> None:
    await _declare_node(transport, topology)
    await _send(transport, topology, _message("m1"))
    await _send(transport, topology, _message("m2"))
    async with transport.consume(topology.node_queue(NODE)) as deliveries:
        taken = await _next(deliveries)
        assert taken.message_id == "m1"
        assert not taken.redelivered
    async with transport.consume(topology.node_queue(NODE)) as deliveries:
        again = [await _next(deliveries), await _next(deliveries)]
        for delivery in again:
            await delivery.ack()
    by_id = {delivery.message_id: delivery for delivery in again}
    assert set(by_id) == {"m1", "m2"}
    assert by_id["m1"].redelivered


async def test_settling_after_the_consumer_left_does_nothing(
    transport: Transport, topology: Topology
) -> None:
    # the broker already took the delivery back; settling it late must neither fail nor
    # remove the message
    await _declare_node(transport, topology)
    await _send(transport, topology, _message("m1"))
    async with transport.consume(topology.node_queue(NODE)) as deliveries:
        stale = await _next(deliveries)
    await stale.ack()
    await stale.reject(requeue=False)
    async with transport.consume(topology.node_queue(NODE)) as deliveries:
        again = await _next(deliveries)
        assert again.message_id == "m1"
        assert again.redelivered
        await again.ack()


async def test_mandatory_publish_to_unbound_key_is_unroutable(
    transport: Transport, topology: Topology
) -> None:
    await _declare_node(transport, topology)
    exchange = topology.requests_exchange.name
    with pytest.raises(UnroutableError) as caught:
        await transport.publish(exchange, "no-such-node", _message("m1"), mandatory=True)
    assert caught.value.exchange == exchange
    assert caught.value.routing_key == "no-such-node"
    # without mandatory the message is dropped silently, and the transport still works
    await transport.publish(exchange, "no-such-node", _message("m2"))
    await transport.publish(exchange, NODE, _message("m3"), mandatory=True)
    async with transport.consume(topology.node_queue(NODE)) as deliveries:
        delivery = await _next(deliveries)
        assert delivery.message_id == "m3"
        await delivery.ack()


async def test_publish_many_reports_each_outcome(transport: Transport, topology: Topology) -> None:
    await _declare_node(transport, topology)
    exchange = topology.requests_exchange.name
    errors = await transport.publish_many(
        exchange,
        [(NODE, _message("m1")), ("no-such-node", _message("m2")), (NODE, _message("m3"))],
        mandatory=True,
    )
    # one unroutable message fails alone; the others are confirmed and delivered in order
    assert errors[0] is None and errors[2] is None
    assert isinstance(errors[1], UnroutableError)
    assert errors[1].routing_key == "no-such-node"
    assert await _drain(transport, topology.node_queue(NODE)) == ["m1", "m3"]
    assert await transport.publish_many(exchange, []) == []


async def test_publish_to_missing_exchange_fails(transport: Transport, topology: Topology) -> None:
    with pytest.raises(PublishError):
        await transport.publish(f"{topology.namespace}.missing", NODE, _message("m1"))
    await _declare_node(transport, topology)
    await _send(transport, topology, _message("m2"))
    async with transport.consume(topology.node_queue(NODE)) as deliveries:
        delivery = await _next(deliveries)
        assert delivery.message_id == "m2"
        await delivery.ack()


async def test_consumer_count(transport: Transport, topology: Topology) -> None:
    queue = topology.node_queue(NODE)
    assert await transport.consumer_count(queue.name) is None
    await _declare_node(transport, topology)
    assert await transport.consumer_count(queue.name) == 0
    async with transport.consume(queue):
        assert await transport.consumer_count(queue.name) == 1
    assert await transport.consumer_count(queue.name) == 0


async def test_headers_and_properties_survive(transport: Transport, topology: Topology) -> None:
    headers = {
        "text": "héllo",
        "number": 42,
        "negative": -7,
        "ratio": 0.5,
        "flag": True,
        "nothing": None,
        "list": [1, "two"],
        "map": {"key": "value"},
    }
    await _declare_node(transport, topology)
    await _send(
        transport,
        topology,
        OutgoingMessage(
            body=b"body",
            message_id="m1",
            type="train_request",
            correlation_id="request_1",
            reply_to="t.researcher.alice.replies",
            headers=headers,
            persistent=False,
        ),
    )
    async with transport.consume(topology.node_queue(NODE)) as deliveries:
        delivery = await _next(deliveries)
        await delivery.ack()
    assert delivery.message_id == "m1"
    assert delivery.type == "train_request"
    assert delivery.correlation_id == "request_1"
    assert delivery.reply_to == "t.researcher.alice.replies"
    assert delivery.headers == headers


async def test_missing_properties_arrive_as_none(transport: Transport, topology: Topology) -> None:
    await _declare_node(transport, topology)
    await _send(transport, topology, _message("m1"))
    async with transport.consume(topology.node_queue(NODE)) as deliveries:
        delivery = await _next(deliveries)
        await delivery.ack()
    assert delivery.correlation_id is None
    assert delivery.reply_to is None
    assert delivery.headers == {}


async def test_presence_reaches_every_researcher(make_transport, topology: Topology) -> None:
    async with make_transport("node") as node, make_transport("researchers") as researchers:
        await researchers.declare(*topology.researcher_declarations("alice"))
        await researchers.declare(*topology.researcher_declarations("bob"))
        async with (
            researchers.consume(topology.presence_queue("alice")) as alice,
            researchers.consume(topology.presence_queue("bob")) as bob,
        ):
            await node.publish(
                topology.presence_exchange.name, "", _message("beat", persistent=False)
            )
            for deliveries in (alice, bob):
                delivery = await _next(deliveries)
                assert delivery.message_id == "beat"
                await delivery.ack()


async def test_presence_queue_goes_away_with_its_consumer(
    transport: Transport, topology: Topology
) -> None:
    await transport.declare(*topology.researcher_declarations("alice"))
    name = topology.presence_queue("alice").name
    async with transport.consume(topology.presence_queue("alice")):
        assert await transport.consumer_count(name) == 1
    with anyio.fail_after(4):
        while await transport.consumer_count(name) is not None:
            await anyio.sleep(0.05)


async def test_namespaces_are_isolated(transport: Transport, namespace: str) -> None:
    first, second = Topology(f"{namespace}a"), Topology(f"{namespace}b")
    await _declare_node(transport, first)
    await _declare_node(transport, second)
    await _send(transport, first, _message("for-first"))
    async with transport.consume(second.node_queue(NODE)) as deliveries:
        await _assert_nothing_arrives(deliveries)
    async with transport.consume(first.node_queue(NODE)) as deliveries:
        delivery = await _next(deliveries)
        assert delivery.message_id == "for-first"
        await delivery.ack()


async def test_closed_transport_refuses_to_publish(make_transport, topology: Topology) -> None:
    transport = make_transport("closed")
    async with transport:
        await _declare_node(transport, topology)
    with pytest.raises(ConnectionLostError):
        await _send(transport, topology, _message("m1"))


async def test_request_reply_round_trip(make_transport, topology: Topology) -> None:
    """A researcher's request reaches the node's queue; the node's reply reaches the
    researcher's queue through ``reply_to``, with the request id echoed everywhere."""
    async with make_transport("researcher") as researcher, make_transport("node") as node:
        await node.declare(*topology.node_declarations(NODE))
        await researcher.declare(*topology.researcher_declarations("alice"))
        reply_queue = topology.researcher_queue("alice")

        request = PingRequest(researcher_id="alice")
        header = EnvelopeHeader.for_message(
            request, sender_id="alice", sender_role="researcher", recipient=NODE
        )
        await researcher.publish(
            topology.requests_exchange.name,
            NODE,
            OutgoingMessage(
                body=seal(header, request),
                message_id=header.message_id,
                type=request.type,
                correlation_id=request.request_id,
                reply_to=reply_queue.name,
            ),
            mandatory=True,
        )

        async with node.consume(topology.node_queue(NODE)) as requests:
            delivery = await _next(requests)
            envelope = unseal(delivery.body)
            received = decode_message(envelope.body)
            assert isinstance(received, PingRequest)
            assert received.request_id == envelope.header.request_id == delivery.correlation_id
            reply = PingReply(
                request_id=received.request_id,
                researcher_id=received.researcher_id,
                node_id=NODE,
                agent_version="test",
            )
            reply_header = EnvelopeHeader.for_message(
                reply, sender_id=NODE, sender_role="node", recipient=envelope.header.sender_id
            )
            assert delivery.reply_to is not None
            await node.publish(
                topology.replies_exchange.name,
                delivery.reply_to,
                OutgoingMessage(
                    body=seal(reply_header, reply),
                    message_id=reply_header.message_id,
                    type=reply.type,
                    correlation_id=received.request_id,
                ),
                mandatory=True,
            )
            await delivery.ack()

        async with researcher.consume(reply_queue) as replies:
            answer = await _next(replies)
            await answer.ack()
        envelope = unseal(answer.body)
        decoded = decode_message(envelope.body)
        assert isinstance(decoded, PingReply)
        assert decoded.request_id == request.request_id
        assert answer.correlation_id == request.request_id
        assert envelope.header.request_id == request.request_id
        assert envelope.header.sender_id == NODE
        assert answer.routing_key == reply_queue.name


async def test_heartbeat_envelope_on_presence_exchange(
    transport: Transport, topology: Topology
) -> None:
    await transport.declare(*topology.researcher_declarations("alice"))
    beat = Heartbeat(node_id=NODE, interval=5, datasets=["ds1"])
    header = EnvelopeHeader.for_message(beat, sender_id=NODE, sender_role="node", recipient="*")
    async with transport.consume(topology.presence_queue("alice")) as deliveries:
        await transport.publish(
            topology.presence_exchange.name,
            "",
            OutgoingMessage(
                body=seal(header, beat),
                message_id=header.message_id,
                type=beat.type,
                persistent=False,
            ),
        )
        delivery = await _next(deliveries)
        await delivery.ack()
    received = decode_message(unseal(delivery.body).body)
    assert isinstance(received, Heartbeat)
    assert received.datasets == ["ds1"]


async def test_a_held_message_given_back_after_its_expiry_is_dead_lettered(
    transport: Transport, topology: Topology
) -> None:
    # The in-memory broker looks for expired messages only once one may have expired: a
    # message a consumer held while the queue was looked at must still count.
    await _declare_node(transport, topology)
    await _send(transport, topology, _message("held", expiration=0.3))
    async with transport.consume(topology.node_queue(NODE), prefetch=1) as deliveries:
        held = await _next(deliveries)  # the others wait in the queue meanwhile
        assert held.message_id == "held"
        await _send(transport, topology, _message("short", expiration=0.05))
        await anyio.sleep(0.15)
        await _send(transport, topology, _message("later", expiration=60))  # a look
        await anyio.sleep(0.3)
    # The consumer went away without settling: "held" is back in the queue, expired.
    await _send(transport, topology, _message("fresh"))
    async with transport.consume(topology.dead_letter_queue) as dead:
        reasons = {}
        for _ in range(2):
            delivery = await _next(dead)
            reasons[delivery.message_id] = delivery.headers["x-death"][0]["reason"]
            await delivery.ack()
    assert reasons == {"short": "expired", "held": "expired"}
    async with transport.consume(topology.node_queue(NODE)) as deliveries:
        for wanted in ("later", "fresh"):
            delivery = await _next(deliveries)
            assert delivery.message_id == wanted
            await delivery.ack()
