"""Whom a request cancels, on the in-memory transport: a node given up on under a Discard
policy, every node when the awaiting task is cancelled, and the nodes named to
``FederatedRequest.cancel`` while it waits."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path

import anyio
import pytest

from broker_net.codes import ErrorCode
from broker_net.memory import MemoryBroker, MemoryTransport
from broker_net.messages import ErrorMessage
from broker_net.topology import Topology
from node_agent.agent import NodeAgent
from researcher.requests.policies import DiscardOnTimeout, RequestStatus
from researcher.requests.router import Requests
from tests.node_agent.test_agent import FakeAnalytics, _agent, _fa

pytestmark = pytest.mark.anyio


@asynccontextmanager
async def _node_and_researcher(
    broker: MemoryBroker, data_dir: Path, handler: FakeAnalytics
) -> AsyncIterator[tuple[NodeAgent, Requests]]:
    async with AsyncExitStack() as stack:
        agent = await _agent(stack, broker, data_dir, handler)
        await agent.wait_ready()
        transport = await stack.enter_async_context(MemoryTransport(broker))
        requests = await stack.enter_async_context(
            Requests(transport, "alice", topology=Topology("agent"))
        )
        yield agent, requests


def _cancelled(requests: Requests, request_id: str) -> bool:
    return any(
        late.request_id == request_id and isinstance(late.message, ErrorMessage)
        and late.message.code is ErrorCode.CANCELLED
        for late in requests.late_replies
    )  # fmt: skip


async def _until(condition: object, seconds: float = 1.0) -> None:
    with anyio.fail_after(seconds):
        while not condition():  # type: ignore[operator]
            await anyio.sleep(0.01)


async def test_a_node_given_up_on_is_cancelled(memory_broker: MemoryBroker, tmp_path: Path) -> None:
    async with _node_and_researcher(memory_broker, tmp_path, FakeAnalytics(60)) as (
        agent,
        requests,
    ):
        fed = await requests.request(_fa(), ["n1"], [DiscardOnTimeout(0.3)])
        assert fed.status() == {"n1": RequestStatus.TIMEOUT}
        await _until(lambda: _cancelled(requests, fed.request_id))
        assert agent.counters["cancelled"] == 1


async def test_a_cancelled_awaiting_task_still_cancels_the_node(
    memory_broker: MemoryBroker, tmp_path: Path
) -> None:
    async with _node_and_researcher(memory_broker, tmp_path, FakeAnalytics(60)) as (
        agent,
        requests,
    ):
        message = _fa()
        started = time.monotonic()
        with anyio.move_on_after(0.3):
            await requests.request(message, ["n1"], [DiscardOnTimeout(30)])
        assert time.monotonic() - started < 2.5  # the shielded cancel is bounded
        await _until(lambda: agent.counters["cancelled"] == 1)


async def test_fed_cancel_while_waiting_gives_the_node_a_cancelled_error(
    memory_broker: MemoryBroker, tmp_path: Path
) -> None:
    async with _node_and_researcher(memory_broker, tmp_path, FakeAnalytics(60)) as (_, requests):
        fed = requests.send(_fa(), ["n1"], [DiscardOnTimeout(30)])
        async with anyio.create_task_group() as group:

            async def wait() -> None:
                async with fed:
                    pass

            group.start_soon(wait)
            await anyio.sleep(0.3)
            assert await fed.cancel() == ["n1"]
            assert await fed.cancel() == []  # each node is asked once
        assert fed.errors()["n1"].code is ErrorCode.CANCELLED
