"""The request id a caller reads is the one on the wire, and a request nobody consumes is
dead-lettered when its policies stop waiting, not a minute later."""

from __future__ import annotations

import time

import anyio
import pytest

from broker_net.amqp.transport import AmqpTransport
from broker_net.messages import PingRequest
from broker_net.topology import Topology
from researcher import DiscardOnTimeout, Requests, RequestStatus
from tests.support.processes import AgentProcesses

pytestmark = [pytest.mark.rabbitmq, pytest.mark.anyio]


async def test_the_message_request_id_is_the_one_on_the_wire(
    agents: AgentProcesses, requests: Requests
) -> None:
    await agents.astart("n1")
    ping = PingRequest(researcher_id="alice")
    fed = await requests.request(ping, ["n1"], [DiscardOnTimeout(5)])
    assert fed.request_id == ping.request_id
    assert fed.replies()["n1"].request_id == ping.request_id
    # The same message object sent again is a new request, with an id of its own.
    again = await requests.request(ping, ["n1"], [DiscardOnTimeout(5)])
    assert again.request_id != ping.request_id
    assert again.status() == {"n1": RequestStatus.SUCCESS}
    assert again.replies()["n1"].request_id == again.request_id


async def test_an_explicit_request_id_wins(agents: AgentProcesses, requests: Requests) -> None:
    await agents.astart("n1")
    fed = await requests.request(
        PingRequest(researcher_id="alice"), ["n1"], [DiscardOnTimeout(5)], request_id="request_x1"
    )
    assert fed.request_id == "request_x1"
    assert fed.replies()["n1"].request_id == "request_x1"


async def test_an_unconsumed_request_expires_with_its_timeout(
    requests: Requests, topology: Topology, amqp_url: str
) -> None:
    # A node that declared its queue, then stopped: nobody consumes the request.
    async with AmqpTransport(amqp_url, connection_name="stopped-node") as node:
        await node.declare(*topology.node_declarations("stopped"))
        started = time.monotonic()
        fed = await requests.request(
            PingRequest(researcher_id="alice"), ["stopped"], [DiscardOnTimeout(1)]
        )
        assert fed.status() == {"stopped": RequestStatus.TIMEOUT}
        async with node.consume(topology.dead_letter_queue) as deliveries:
            with anyio.fail_after(5):
                async for delivery in deliveries:
                    await delivery.ack()
                    if delivery.correlation_id == fed.request_id:
                        break
        assert time.monotonic() - started < 5
        assert delivery.headers["x-death"][0]["reason"] == "expired"
        assert await node.consumer_count(topology.node_queue("stopped").name) == 0
