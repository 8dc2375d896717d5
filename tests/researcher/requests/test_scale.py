"""250 node agents answer one request, collected through one consumer and fixed channels."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest

from bench.swarm import swarm
from broker_net.amqp import AmqpTransport
from broker_net.messages import PingRequest
from broker_net.topology import Topology
from researcher.requests.policies import DiscardOnTimeout, RequestStatus, StopOnDisconnect
from researcher.requests.router import Requests
from tests.conftest import ADMIN, MANAGEMENT_URL

pytestmark = [pytest.mark.rabbitmq, pytest.mark.anyio, pytest.mark.slow]

NODES = [f"node-{index:03d}" for index in range(250)]


@pytest.fixture
def management(rabbitmq_vhost: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=MANAGEMENT_URL + "/api", auth=ADMIN, timeout=10) as client:
        yield client


def _queues(management: httpx.Client, vhost: str, namespace: str) -> set[str]:
    response = management.get(f"/queues/{quote(vhost, safe='')}", params={"columns": "name"})
    response.raise_for_status()
    return {q["name"] for q in response.json() if q["name"].startswith(namespace + ".")}


def _count_channel_opens(transport: AmqpTransport, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Count the channels the transport's connection opens from now on."""
    connection = transport._connection
    assert connection is not None
    opened: list[int] = []
    open_channel = connection.channel

    def counting(*args: Any, **kwargs: Any) -> Any:
        opened.append(1)
        return open_channel(*args, **kwargs)

    monkeypatch.setattr(connection, "channel", counting)
    return opened


async def test_250_nodes_answer_one_request(
    amqp_url: str,
    rabbitmq_vhost: str,
    topology: Topology,
    management: httpx.Client,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async with (
        swarm(amqp_url, topology.namespace, NODES, tmp_path, connections=2),
        AmqpTransport(amqp_url, connection_name="researcher") as transport,
        Requests(transport, "alice", topology=topology, presence_check_interval=0.2) as requests,
    ):
        queues_before = _queues(management, rabbitmq_vhost, topology.namespace)
        reply_queue = topology.researcher_queue("alice").name
        assert await transport.consumer_count(reply_queue) == 1  # one consumer for every reply
        opened = _count_channel_opens(transport, monkeypatch)

        fed = await requests.request(
            PingRequest(researcher_id="alice"), NODES, [DiscardOnTimeout(40), StopOnDisconnect(5)]
        )

        assert fed.status() == dict.fromkeys(NODES, RequestStatus.SUCCESS)
        assert all(reply.request_id == fed.request_id for reply in fed.replies().values())
        # StopOnDisconnect checked the nodes' consumers on the existing queue-check channel,
        # and the request declared nothing.
        assert opened == []
        assert _queues(management, rabbitmq_vhost, topology.namespace) == queues_before
