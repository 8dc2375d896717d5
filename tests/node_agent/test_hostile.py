"""Hostile clients: every refusal path of an authenticating node, from raw aio-pika."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import replace
from pathlib import Path

import aio_pika
import anyio
import pytest

from broker_net.codec import decode_message
from broker_net.codes import ErrorCode
from broker_net.crypto.authentication import Security
from broker_net.crypto.introductions import introduce
from broker_net.envelope import EnvelopeHeader, seal, unseal
from broker_net.messages import ErrorMessage, PingReply, PingRequest
from broker_net.topology import Topology
from tests.support.processes import AgentProcesses

pytestmark = [pytest.mark.rabbitmq, pytest.mark.anyio]
NODE = "guarded"


@pytest.fixture
def alice(tmp_path: Path) -> Security:
    introduce("alice", tmp_path / "alice", {NODE: tmp_path / NODE})
    return Security.load(
        tmp_path / "alice" / "identity", "alice", "researcher", tmp_path / "alice" / "trusted-nodes"
    )


@pytest.fixture
def agent(alice: Security, amqp_url: str, namespace: str, tmp_path: Path) -> Iterator[None]:
    processes = AgentProcesses(amqp_url, namespace, tmp_path)
    try:
        processes.start(NODE, "--security")
        yield
    finally:
        processes.stop_all()


class Client:
    """A raw aio-pika researcher that crafts its own envelopes."""

    def __init__(self, channel: aio_pika.abc.AbstractChannel, topology: Topology) -> None:
        self.channel = channel
        self.topology = topology
        self.replies: aio_pika.abc.AbstractQueue | None = None

    async def start(self) -> None:
        queue = self.topology.researcher_queue("alice")
        self.replies = await self.channel.declare_queue(
            queue.name, durable=True, arguments=queue.arguments
        )
        await self.replies.bind(self.topology.replies_exchange.name, queue.name)

    async def send(self, body: bytes, request_id: str) -> None:
        exchange = await self.channel.get_exchange(self.topology.requests_exchange.name)
        await exchange.publish(
            aio_pika.Message(body, correlation_id=request_id, reply_to="somewhere-else"),
            routing_key=NODE,
        )

    async def answer(self, security: Security) -> PingReply | ErrorMessage:
        assert self.replies is not None
        with anyio.fail_after(10):
            async with self.replies.iterator() as incoming:
                async for delivery in incoming:
                    await delivery.ack()
                    envelope = unseal(delivery.body)
                    security.verify(envelope)  # the node's answers are authenticated too
                    message = decode_message(envelope.body)
                    assert isinstance(message, PingReply | ErrorMessage)
                    return message
        raise AssertionError("no answer")


@pytest.fixture
async def client(agent: None, amqp_url: str, topology: Topology) -> AsyncIterator[Client]:
    async with await aio_pika.connect(amqp_url) as connection:
        raw = Client(await connection.channel(), topology)
        await raw.start()
        yield raw


def _ping(header_changes: dict[str, object] | None = None) -> tuple[PingRequest, EnvelopeHeader]:
    message = PingRequest(researcher_id="alice")
    header = EnvelopeHeader.for_message(
        message, sender_id="alice", sender_role="researcher", recipient=NODE
    )
    return message, replace(header, **(header_changes or {}))


async def _refused(client: Client, alice: Security, body: bytes, request_id: str) -> ErrorCode:
    await client.send(body, request_id)
    answer = await client.answer(alice)
    assert isinstance(answer, ErrorMessage), answer
    assert answer.request_id == request_id
    return answer.code


async def _still_answers(client: Client, alice: Security) -> None:
    message, header = _ping()
    body = seal(header, message, authenticator=alice.authenticator_for(NODE))
    await client.send(body, message.request_id)
    answer = await client.answer(alice)
    assert isinstance(answer, PingReply) and answer.request_id == message.request_id


async def test_a_signed_request_is_answered(client: Client, alice: Security) -> None:
    await _still_answers(client, alice)


async def test_an_unsigned_request_is_refused(client: Client, alice: Security) -> None:
    message, header = _ping()
    code = await _refused(client, alice, seal(header, message), message.request_id)
    assert code is ErrorCode.UNSIGNED_MESSAGE
    await _still_answers(client, alice)


async def test_a_tampered_body_byte_is_refused(client: Client, alice: Security) -> None:
    message, header = _ping()
    body = bytearray(seal(header, message, authenticator=alice.authenticator_for(NODE)))
    body[-3] ^= 0x01  # inside the encoded message
    code = await _refused(client, alice, bytes(body), message.request_id)
    assert code is ErrorCode.BAD_SIGNATURE
    await _still_answers(client, alice)


async def test_a_tampered_header_byte_is_refused(client: Client, alice: Security) -> None:
    message, header = _ping()
    body = bytearray(seal(header, message, authenticator=alice.authenticator_for(NODE)))
    position = bytes(body).index(header.message_id.encode()) + 5
    body[position] = ord("x") if body[position] != ord("x") else ord("y")
    code = await _refused(client, alice, bytes(body), message.request_id)
    assert code is ErrorCode.BAD_SIGNATURE
    await _still_answers(client, alice)


async def test_a_wrong_key_is_refused(client: Client, alice: Security, tmp_path: Path) -> None:
    # Mallory has keys of her own and claims to be alice.
    mallory = Security.load(tmp_path / "mallory", "alice", "researcher", tmp_path / "none")
    message, header = _ping()
    body = seal(header, message, authenticator=mallory.authenticators.signer)
    code = await _refused(client, alice, body, message.request_id)
    assert code in {ErrorCode.UNKNOWN_KEY, ErrorCode.BAD_SIGNATURE}
    await _still_answers(client, alice)


async def test_an_expired_request_is_refused(client: Client, alice: Security) -> None:
    message, header = _ping({"created_at": time.time() - 3600})
    body = seal(header, message, authenticator=alice.authenticator_for(NODE))
    code = await _refused(client, alice, body, message.request_id)
    assert code is ErrorCode.EXPIRED_MESSAGE
    await _still_answers(client, alice)


async def test_a_replayed_request_is_refused(client: Client, alice: Security) -> None:
    message, header = _ping()
    body = seal(header, message, authenticator=alice.authenticator_for(NODE))
    await client.send(body, message.request_id)
    first = await client.answer(alice)
    assert isinstance(first, PingReply)
    code = await _refused(client, alice, body, message.request_id)
    assert code is ErrorCode.REPLAYED_MESSAGE
    await _still_answers(client, alice)


async def test_a_message_for_another_node_is_refused(client: Client, alice: Security) -> None:
    message, header = _ping({"recipient": "someone-else"})
    body = seal(header, message, authenticator=alice.authenticators.signer)
    code = await _refused(client, alice, body, message.request_id)
    assert code in {ErrorCode.REPLAYED_MESSAGE, ErrorCode.BAD_SIGNATURE, ErrorCode.SECURITY_ERROR}
    await _still_answers(client, alice)
