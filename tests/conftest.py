"""Fixtures shared by the whole suite.

Broker tests run in a fresh RabbitMQ vhost created for the test session through the management
API and deleted afterwards, and every test uses a namespace of its own, so two runs on one
broker never see each other's queues.
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from urllib.parse import quote

import httpx
import pytest

from broker_net.amqp import AmqpTransport
from broker_net.memory import MemoryBroker, MemoryTransport
from broker_net.topology import Topology

AMQP_HOST = os.environ.get("BROKER_NET_TEST_AMQP_HOST", "127.0.0.1")
AMQP_PORT = int(os.environ.get("BROKER_NET_TEST_AMQP_PORT", "5672"))
MANAGEMENT_URL = os.environ.get("BROKER_NET_TEST_MANAGEMENT_URL", "http://127.0.0.1:15672")
ADMIN = ("guest", "guest")


@pytest.fixture
def anyio_backend() -> str:
    # aio-pika runs on asyncio only.
    return "asyncio"


@pytest.fixture(scope="session")
def rabbitmq_vhost() -> Iterator[str]:
    """A vhost of this test session's own, removed at the end."""
    vhost = f"test-{uuid.uuid4().hex[:12]}"
    with httpx.Client(base_url=MANAGEMENT_URL + "/api", auth=ADMIN, timeout=10) as client:
        client.put(f"/vhosts/{quote(vhost, safe='')}", json={}).raise_for_status()
        client.put(
            f"/permissions/{quote(vhost, safe='')}/guest",
            json={"configure": ".*", "write": ".*", "read": ".*"},
        ).raise_for_status()
        try:
            yield vhost
        finally:
            _delete_vhost(client, vhost)


def _delete_vhost(client: httpx.Client, vhost: str, patience: float = 300.0) -> None:
    """Delete ``vhost`` and wait until it is gone. The broker deletes a vhost's queues and
    exchanges one by one, which on a busy machine can outlast one HTTP timeout; it goes on
    deleting after the request times out, so the vhost is polled until it is gone."""
    path = f"/vhosts/{quote(vhost, safe='')}"
    deadline = time.monotonic() + patience
    try:
        response = client.delete(path, timeout=120)
        if response.status_code not in (204, 404):
            response.raise_for_status()
    except httpx.TimeoutException:
        pass
    while client.get(path).status_code != 404:
        if time.monotonic() > deadline:
            raise RuntimeError(f"the test vhost {vhost} was not deleted within {patience} s")
        time.sleep(0.5)


@pytest.fixture(scope="session")
def amqp_url(rabbitmq_vhost: str) -> str:
    """AMQP URL of the session's vhost."""
    return f"amqp://guest:guest@{AMQP_HOST}:{AMQP_PORT}/{quote(rabbitmq_vhost, safe='')}"


@pytest.fixture
def namespace(request: pytest.FixtureRequest) -> str:
    """A namespace no other test uses."""
    return f"t{uuid.uuid4().hex[:10]}"


@pytest.fixture
def topology(namespace: str) -> Topology:
    return Topology(namespace)


@pytest.fixture(params=["memory", pytest.param("amqp", marks=pytest.mark.rabbitmq)])
def transport_kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def memory_broker() -> MemoryBroker:
    return MemoryBroker()


@pytest.fixture
def make_transport(
    transport_kind: str, memory_broker: MemoryBroker, request: pytest.FixtureRequest
):
    """Build unconnected transports of the parametrized kind, all on the same broker."""

    def make(name: str = "party") -> AmqpTransport | MemoryTransport:
        if transport_kind == "memory":
            return MemoryTransport(memory_broker)
        url = request.getfixturevalue("amqp_url")
        return AmqpTransport(url, connection_name=f"{request.node.name}:{name}")

    return make


@pytest.fixture
async def transport(make_transport) -> AsyncIterator[AmqpTransport | MemoryTransport]:
    async with make_transport("main") as connected:
        yield connected


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    return tmp_path
