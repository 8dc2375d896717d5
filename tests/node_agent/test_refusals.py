"""Refusals reach the researcher that sent the request: an oversized or unreadable request,
sent through ``Requests`` with authentication on, ends as the node's error code in
``errors()``, not as a timeout. On both transports."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from broker_net.amqp.transport import AmqpTransport
from broker_net.codes import ErrorCode
from broker_net.crypto.authentication import Security
from broker_net.crypto.introductions import introduce
from broker_net.memory import MemoryTransport
from broker_net.messages import TrainRequest
from broker_net.topology import Topology
from broker_net.transport import OutgoingMessage
from node_agent.agent import NodeAgent
from node_agent.settings import NodeSettings
from researcher import DiscardOnTimeout, Requests, RequestStatus

pytestmark = pytest.mark.anyio
NODE = "n1"


def _corrupting(transport: AmqpTransport | MemoryTransport, topology: Topology) -> Any:
    """``transport``, but every request it publishes arrives as bytes that are no envelope."""
    publish = transport.publish
    requests_exchange = topology.requests_exchange.name

    async def corrupt(exchange: str, key: str, message: OutgoingMessage, **kw: Any) -> None:
        if exchange == requests_exchange:
            message = replace(message, body=b"\x93 not an envelope")
        await publish(exchange, key, message, **kw)

    transport.publish = corrupt  # type: ignore[method-assign]
    transport.publish_many = None  # type: ignore[assignment]  # one node: publish is used
    return transport


def _train_request(size: int) -> TrainRequest:
    return TrainRequest(
        researcher_id="alice", experiment_id="exp", round=0, training_plan="class P: ...",
        training_plan_class="P", dataset_id="d1",
        params={"w": np.zeros(size // 8, dtype=np.float64)},
    )  # fmt: skip


@pytest.fixture
async def parties(
    make_transport: Any, namespace: str, tmp_path: Path
) -> AsyncIterator[tuple[Requests, Topology]]:
    topology = Topology(namespace)
    introduce("alice", tmp_path / "alice", {NODE: tmp_path / NODE})
    alice = Security.load(
        tmp_path / "alice" / "identity", "alice", "researcher", tmp_path / "alice" / "trusted-nodes"
    )
    settings = NodeSettings(
        node_id=NODE, data_dir=tmp_path / NODE, namespace=namespace, max_message_size=64 * 1024
    )
    async with AsyncExitStack() as stack:
        node_transport = await stack.enter_async_context(make_transport("node"))
        agent = await stack.enter_async_context(NodeAgent(settings, node_transport))
        await agent.wait_ready()
        transport = await stack.enter_async_context(make_transport("researcher"))
        requests = await stack.enter_async_context(
            Requests(transport, "alice", topology=topology, security=alice)
        )
        yield requests, topology


async def test_an_oversized_request_reports_message_too_large(
    parties: tuple[Requests, Topology],
) -> None:
    requests, _ = parties
    started = time.monotonic()
    fed = await requests.request(_train_request(256 * 1024), [NODE], [DiscardOnTimeout(10)])
    assert time.monotonic() - started < 5
    assert fed.status() == {NODE: RequestStatus.ERROR}
    error = fed.errors()[NODE]
    assert error.code is ErrorCode.MESSAGE_TOO_LARGE
    assert error.request_id == fed.request_id


async def test_an_unreadable_request_reports_malformed_message(
    parties: tuple[Requests, Topology],
) -> None:
    requests, topology = parties
    _corrupting(requests.transport, topology)  # type: ignore[arg-type]
    fed = await requests.request(_train_request(1024), [NODE], [DiscardOnTimeout(10)])
    assert fed.status() == {NODE: RequestStatus.ERROR}
    error = fed.errors()[NODE]
    assert error.code is ErrorCode.MALFORMED_MESSAGE
    assert error.request_id == fed.request_id
    assert error.node_id == NODE
