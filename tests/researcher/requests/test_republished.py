"""A request published twice, and a broker that never confirms, on the in-memory transport.

A publisher that lost a confirm with its connection publishes the message again, so a node
may receive two copies of one request. With authentication on, the node answers the first and
refuses the second with REPLAYED_MESSAGE; that refusal must not become the node's answer,
whichever arrives first. A broker that lost the majority of its cluster neither confirms nor
refuses a publish: the request must still end at its policy's timeout.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import pytest

from broker_net.codes import ErrorCode
from broker_net.crypto.authentication import Security
from broker_net.crypto.introductions import introduce
from broker_net.envelope import EnvelopeHeader, seal
from broker_net.frames import amqp_headers
from broker_net.memory import MemoryBroker, MemoryTransport
from broker_net.messages import ErrorMessage, PingReply, PingRequest
from broker_net.topology import Topology
from broker_net.transport import OutgoingMessage
from node_agent.agent import NodeAgent
from node_agent.context import NodeContext
from node_agent.handlers import HANDLERS
from node_agent.settings import NodeSettings
from researcher.requests.policies import DiscardOnTimeout, RequestStatus
from researcher.requests.router import Requests

pytestmark = pytest.mark.anyio
TOPOLOGY = Topology("republished")
NODE = "n1"


class RepublishingTransport(MemoryTransport):
    """Publishes every request twice with the same message id, as a publisher does whose
    first confirm was lost with its connection."""

    async def publish(
        self, exchange: str, routing_key: str, message: OutgoingMessage, *, mandatory: bool = False
    ) -> None:
        await super().publish(exchange, routing_key, message, mandatory=mandatory)
        if exchange == TOPOLOGY.requests_exchange.name:
            await super().publish(exchange, routing_key, message, mandatory=mandatory)


class UnconfirmingTransport(MemoryTransport):
    """Never confirms a request, as a cluster without a majority of its nodes."""

    async def publish(
        self, exchange: str, routing_key: str, message: OutgoingMessage, *, mandatory: bool = False
    ) -> None:
        if exchange == TOPOLOGY.requests_exchange.name:
            await anyio.sleep_forever()
        await super().publish(exchange, routing_key, message, mandatory=mandatory)


def _slow_ping(delay: float):
    async def handle(request: PingRequest, context: NodeContext) -> PingReply:
        await anyio.sleep(delay)
        return await HANDLERS["ping_request"](request, context)

    return handle


@pytest.fixture
def parties(tmp_path: Path) -> tuple[Security, NodeSettings]:
    introduce("alice", tmp_path / "alice", {NODE: tmp_path / NODE})
    alice = Security.load(
        tmp_path / "alice" / "identity", "alice", "researcher", tmp_path / "alice" / "trusted-nodes"
    )
    node = NodeSettings(node_id=NODE, data_dir=tmp_path / NODE, namespace=TOPOLOGY.namespace)
    return alice, node


@pytest.fixture
def broker() -> MemoryBroker:
    return MemoryBroker()


@pytest.fixture
async def agent(
    broker: MemoryBroker, parties: tuple[Security, NodeSettings]
) -> AsyncIterator[NodeAgent]:
    _, settings = parties
    handlers = dict(HANDLERS, ping_request=_slow_ping(0.3))
    async with (
        MemoryTransport(broker) as transport,
        NodeAgent(settings, transport, handlers=handlers, shutdown_grace=0.1) as agent,
    ):
        yield agent


async def test_a_request_received_twice_is_answered_once(
    broker: MemoryBroker, parties: tuple[Security, NodeSettings], agent: NodeAgent
) -> None:
    alice, _ = parties
    async with (
        RepublishingTransport(broker) as transport,
        Requests(transport, "alice", topology=TOPOLOGY, security=alice) as requests,
    ):
        fed = await requests.request(
            PingRequest(researcher_id="alice"), [NODE], [DiscardOnTimeout(5)]
        )
        assert fed.status() == {NODE: RequestStatus.SUCCESS}
        assert fed.errors() == {}
        # The node refuses the second copy once the first is answered.
        with anyio.fail_after(2):
            while agent.counters["errors"] == 0:
                await anyio.sleep(0.02)
        assert agent.counters["errors"] == 1
        assert fed.status() == {NODE: RequestStatus.SUCCESS}


async def test_a_replay_refusal_arriving_first_is_not_the_answer(
    broker: MemoryBroker, parties: tuple[Security, NodeSettings], agent: NodeAgent, tmp_path: Path
) -> None:
    alice, settings = parties
    node = Security.load(
        settings.identity_dir, NODE, "node", settings.trust_path, window=settings.message_window
    )
    async with (
        MemoryTransport(broker) as transport,
        Requests(transport, "alice", topology=TOPOLOGY, security=alice) as requests,
    ):
        async with anyio.create_task_group() as group:

            async def refuse_a_copy(request_id: str) -> None:
                # What the agent sends for a second copy, here while it still runs the first.
                await anyio.sleep(0.05)
                refusal = ErrorMessage(
                    request_id=request_id, researcher_id="alice", node_id=NODE,
                    code=ErrorCode.REPLAYED_MESSAGE, message="already accepted",
                )  # fmt: skip
                header = EnvelopeHeader.for_message(
                    refusal, sender_id=NODE, sender_role="node", recipient="alice"
                )
                await transport.publish(
                    TOPOLOGY.replies_exchange.name,
                    requests.reply_queue,
                    OutgoingMessage(
                        body=seal(header, refusal, authenticator=node.authenticator_for("alice")),
                        message_id=header.message_id,
                        type=refusal.type,
                        correlation_id=request_id,
                        headers=amqp_headers(header, refusal),
                    ),
                )

            fed = requests.send(PingRequest(researcher_id="alice"), [NODE], [DiscardOnTimeout(5)])
            group.start_soon(refuse_a_copy, fed.request_id)
            async with fed:
                pass
        assert fed.status() == {NODE: RequestStatus.SUCCESS}
        assert isinstance(fed.replies()[NODE], PingReply)
        assert fed.errors() == {}


async def test_an_unconfirmed_request_ends_at_its_timeout(
    broker: MemoryBroker, parties: tuple[Security, NodeSettings], agent: NodeAgent
) -> None:
    alice, _ = parties
    async with (
        UnconfirmingTransport(broker) as transport,
        Requests(transport, "alice", topology=TOPOLOGY, security=alice) as requests,
    ):
        started = time.monotonic()
        fed = await requests.request(
            PingRequest(researcher_id="alice"), [NODE], [DiscardOnTimeout(0.5)]
        )
        assert 0.5 <= time.monotonic() - started < 1.5
        assert fed.status() == {NODE: RequestStatus.TIMEOUT}
        assert "did not confirm the request within 0.5 s" in fed.reasons()[NODE]


async def test_a_reply_seen_twice_is_dropped_without_a_warning(
    broker: MemoryBroker,
    parties: tuple[Security, NodeSettings],
    agent: NodeAgent,
    caplog: pytest.LogCaptureFixture,
) -> None:
    alice, settings = parties
    node = Security.load(
        settings.identity_dir, NODE, "node", settings.trust_path, window=settings.message_window
    )
    async with (
        MemoryTransport(broker) as transport,
        Requests(transport, "alice", topology=TOPOLOGY, security=alice) as requests,
    ):
        fed = await requests.request(
            PingRequest(researcher_id="alice"), [NODE], [DiscardOnTimeout(5)]
        )
        reply = fed.replies()[NODE]
        header = EnvelopeHeader.for_message(
            reply, sender_id=NODE, sender_role="node", recipient="alice"
        )
        copy = OutgoingMessage(
            body=seal(header, reply, authenticator=node.authenticator_for("alice")),
            message_id=header.message_id, type=reply.type, correlation_id=fed.request_id,
        )  # fmt: skip
        caplog.set_level("INFO", logger="researcher.requests.router")
        for _ in range(2):  # the same envelope twice, as after a reconnect
            await transport.publish(TOPOLOGY.replies_exchange.name, requests.reply_queue, copy)
        with anyio.fail_after(2):
            while not any("seen before" in r.getMessage() for r in caplog.records):
                await anyio.sleep(0.02)
    warnings = [r for r in caplog.records if r.levelname == "WARNING" and "seen" in r.message]
    assert warnings == []
    assert [r.levelname for r in caplog.records if "seen before" in r.getMessage()] == ["INFO"]
