"""Many node agents in one process keep few descriptors: their SQLite files open on first use."""

from __future__ import annotations

import os
import resource
from collections.abc import Iterator
from contextlib import AsyncExitStack
from pathlib import Path

import pytest

from broker_net.memory import MemoryBroker, MemoryTransport
from broker_net.messages import PingRequest
from broker_net.topology import Topology
from node_agent.agent import NodeAgent
from node_agent.settings import NodeSettings
from researcher.requests.policies import DiscardOnTimeout, RequestStatus
from researcher.requests.router import Requests

pytestmark = pytest.mark.anyio
AGENTS = 300
COMMON_LIMIT = 1024
"""The usual soft limit of open files for a process."""


def _open_descriptors() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest.fixture
def common_file_limit() -> Iterator[None]:
    """The process's soft limit of open files lowered to 1,024 for the test."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(COMMON_LIMIT, hard), hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


async def test_300_agents_answer_a_ping_under_the_common_file_limit(
    tmp_path: Path, common_file_limit: None
) -> None:
    broker = MemoryBroker()
    nodes = [f"n{index:03d}" for index in range(AGENTS)]
    before = _open_descriptors()
    async with AsyncExitStack() as stack:
        transport = await stack.enter_async_context(MemoryTransport(broker))
        for node in nodes:
            settings = NodeSettings(
                node_id=node, data_dir=tmp_path / node, namespace="many", security=False
            )
            agent = await stack.enter_async_context(
                NodeAgent(settings, transport, shutdown_grace=1.0)
            )
            await agent.wait_ready()
        researcher = await stack.enter_async_context(MemoryTransport(broker))
        requests = await stack.enter_async_context(
            Requests(researcher, "alice", topology=Topology("many"))
        )
        fed = await requests.request(
            PingRequest(researcher_id="alice"), nodes, [DiscardOnTimeout(30)]
        )
        assert fed.status() == dict.fromkeys(nodes, RequestStatus.SUCCESS)
        # Every agent has started and sent its first heartbeat, and none holds a database
        # open: a ping needs none, and a node without datasets announces none without one.
        opened = _open_descriptors() - before
        assert opened < AGENTS // 10, f"{opened} descriptors for {AGENTS} agents"
        assert not any((tmp_path / node / "replies.sqlite").exists() for node in nodes)
