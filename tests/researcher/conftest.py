"""Fixtures of the researcher tests that talk to node agent processes."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from broker_net.amqp import AmqpTransport
from broker_net.topology import Topology
from researcher.requests.router import Requests
from tests.support.processes import AgentProcesses


@pytest.fixture
def agents(amqp_url: str, namespace: str, tmp_path: Path) -> Iterator[AgentProcesses]:
    """Node agent processes of this test (see tests/support/agent_process.py)."""
    processes = AgentProcesses(amqp_url, namespace, tmp_path)
    try:
        yield processes
    finally:
        processes.stop_all()


@pytest.fixture
async def requests(amqp_url: str, topology: Topology) -> AsyncIterator[Requests]:
    """Researcher ``alice``'s request layer, without message authentication."""
    async with (
        AmqpTransport(amqp_url, connection_name="researcher") as transport,
        Requests(transport, "alice", topology=topology, presence_check_interval=0.2) as reqs,
    ):
        yield reqs
