"""1,000 node agents, in four processes sharing two connections each, answer one request."""

from __future__ import annotations

from functools import partial
from pathlib import Path

import anyio
import pytest

from bench.bench_network import node_processes
from broker_net.amqp import AmqpTransport
from broker_net.messages import PingRequest
from broker_net.topology import Topology
from researcher.requests.policies import DiscardOnTimeout, RequestStatus
from researcher.requests.router import Requests

pytestmark = [pytest.mark.rabbitmq, pytest.mark.anyio, pytest.mark.slow, pytest.mark.timeout(300)]

NODES = [f"node-{index:03d}" for index in range(1000)]


async def test_1000_nodes_answer_one_request(
    amqp_url: str, topology: Topology, tmp_path: Path
) -> None:
    # Security off and heartbeats every 30 s, as in the benchmark (bench.parties nodes).
    processes = await anyio.to_thread.run_sync(
        partial(node_processes, "ours", amqp_url, topology.namespace, len(NODES), tmp_path,
                parallel=True)
    )  # fmt: skip
    try:
        async with (
            AmqpTransport(amqp_url, connection_name="researcher") as transport,
            Requests(transport, "alice", topology=topology) as requests,
        ):
            fed = await requests.request(
                PingRequest(researcher_id="alice"), NODES, [DiscardOnTimeout(60)]
            )
            assert fed.status() == dict.fromkeys(NODES, RequestStatus.SUCCESS)
            assert {reply.node_id for reply in fed.replies().values()} == set(NODES)
    finally:
        stopped = [await anyio.to_thread.run_sync(process.stop) for process in processes]
    # Each process says how much memory it took at its peak: 250 agents fit in far less than
    # the 1.1 MB each that four SQLite files per agent cost before they opened lazily.
    assert all(result["peak_rss"] < 250 * 1024**2 for result in stopped)
