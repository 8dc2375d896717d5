"""The node agent's dispatch on the in-memory transport: lanes, errors, stored replies."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import anyio
import pytest

from broker_net.codec import decode_message
from broker_net.codes import ErrorCode
from broker_net.envelope import EnvelopeHeader, seal, unseal
from broker_net.memory import MemoryBroker, MemoryTransport
from broker_net.messages import ErrorMessage, FAReply, FARequest, PingRequest
from broker_net.topology import Topology
from broker_net.transport import OutgoingMessage
from node_agent.agent import NodeAgent
from node_agent.context import NodeContext
from node_agent.handlers import HANDLERS
from node_agent.settings import NodeSettings
from researcher.requests.policies import DiscardOnTimeout, RequestStatus
from researcher.requests.router import Requests

pytestmark = pytest.mark.anyio
TOPOLOGY = Topology("agent")


class FakeAnalytics:
    """An fa_request handler that counts its runs and can be slow or broken."""

    def __init__(self, delay: float = 0.0, fail: bool = False, pad: int = 0) -> None:
        self.delay = delay
        self.fail = fail
        self.pad = pad
        self.runs = 0

    async def __call__(self, request: FARequest, context: NodeContext) -> FAReply:
        self.runs += 1
        await anyio.sleep(self.delay)
        if self.fail:
            raise RuntimeError("secret patient data in a traceback")
        return FAReply(
            request_id=request.request_id, researcher_id=request.researcher_id,
            node_id=context.node_id, experiment_id=request.experiment_id,
            fa_id=request.fa_id, output={"runs": self.runs, "pad": "x" * self.pad},
        )  # fmt: skip


def _fa(request_id: str | None = None) -> FARequest:
    extra: dict[str, Any] = {"request_id": request_id} if request_id else {}
    return FARequest(
        researcher_id="alice", experiment_id="e", fa_id="f", dataset_id="d", stats=["mean"],
        **extra,
    )  # fmt: skip


async def _agent(
    stack: AsyncExitStack, broker: MemoryBroker, data_dir: Path, handler: FakeAnalytics,
    **settings_args: Any,
) -> NodeAgent:  # fmt: skip
    settings = NodeSettings(
        node_id="n1", data_dir=data_dir, namespace="agent", security=False, **settings_args
    )
    transport = await stack.enter_async_context(MemoryTransport(broker))
    handlers = dict(HANDLERS, fa_request=handler)
    return await stack.enter_async_context(
        NodeAgent(settings, transport, handlers=handlers, shutdown_grace=0.2)
    )


@pytest.fixture
async def researcher(memory_broker: MemoryBroker) -> AsyncIterator[Requests]:
    async with (
        MemoryTransport(memory_broker) as transport,
        Requests(transport, "alice", topology=TOPOLOGY) as requests,
    ):
        yield requests


async def test_heavy_work_does_not_block_pings(
    memory_broker: MemoryBroker, researcher: Requests, tmp_path: Path
) -> None:
    async with AsyncExitStack() as stack:
        await _agent(stack, memory_broker, tmp_path, FakeAnalytics(delay=3))
        async with anyio.create_task_group() as group:
            group.start_soon(researcher.request, _fa(), ["n1"], [DiscardOnTimeout(0.5)])
            await anyio.sleep(0.1)
            started = time.monotonic()
            fed = await researcher.request(
                PingRequest(researcher_id="alice"), ["n1"], [DiscardOnTimeout(2)]
            )
            assert time.monotonic() - started < 0.5
            assert fed.status() == {"n1": RequestStatus.SUCCESS}


async def test_requests_in_flight_run_at_once_on_as_many_workers(
    memory_broker: MemoryBroker, researcher: Requests, tmp_path: Path
) -> None:
    delay = {"seconds": 0.5}

    async def slow_ping(request: PingRequest, context: NodeContext) -> Any:
        await anyio.sleep(delay["seconds"])
        return await HANDLERS["ping_request"](request, context)

    settings = NodeSettings(node_id="n1", data_dir=tmp_path, namespace="agent", security=False)
    async with (
        MemoryTransport(memory_broker) as transport,
        NodeAgent(settings, transport, handlers=dict(HANDLERS, ping_request=slow_ping)) as agent,
    ):
        started = time.monotonic()
        async with anyio.create_task_group() as group:
            for _ in range(4):
                group.start_soon(researcher.ping, ["n1"], 5)
        # four half-second requests together, not one after the other
        assert time.monotonic() - started < 1.5
        workers = agent.intake.idle_workers
        # every worker is idle again: one per request that ran at once, plus the one that
        # waits for the next delivery; none was started in vain
        assert 2 <= workers <= 5
        delay["seconds"] = 0
        for _ in range(20):
            ping = await researcher.ping(["n1"], timeout=2)
            assert ping.status() == {"n1": RequestStatus.SUCCESS}
        assert agent.intake.idle_workers == workers  # sequential requests reuse the idle workers


async def test_a_handler_exception_becomes_an_error_without_traceback(
    memory_broker: MemoryBroker, researcher: Requests, tmp_path: Path
) -> None:
    async with AsyncExitStack() as stack:
        await _agent(stack, memory_broker, tmp_path, FakeAnalytics(fail=True))
        fed = await researcher.request(_fa(), ["n1"], [DiscardOnTimeout(2)])
        error = fed.errors()["n1"]
        assert error.code is ErrorCode.NODE_ERROR
        assert error.request_id == fed.request_id
        assert "secret" not in error.message and "Traceback" not in error.message
        ping = await researcher.ping(["n1"], timeout=2)
        assert ping.status() == {"n1": RequestStatus.SUCCESS}


@pytest.mark.parametrize(
    ("pad", "settings_args", "runs"),
    [
        (0, {}, [1, 1]),  # kept in SQLite
        (2 * 1024**2, {}, [1, 1]),  # kept in a file of its own
        (0, {"stored_reply_limit": 0}, [1, 2]),  # kept nowhere: the request runs again
    ],
    ids=["small", "large", "not-kept"],
)
async def test_a_redelivered_request_is_answered_from_the_stored_reply_after_a_restart(
    memory_broker: MemoryBroker, tmp_path: Path, pad: int, settings_args: dict[str, Any],
    runs: list[int],
) -> None:  # fmt: skip
    handler = FakeAnalytics(pad=pad)
    request = _fa("request_fixed")
    header = EnvelopeHeader.for_message(
        request, sender_id="alice", sender_role="researcher", recipient="n1"
    )
    body = seal(header, request)
    reply_queue = TOPOLOGY.researcher_queue("alice")
    outgoing = OutgoingMessage(
        body=body, message_id=header.message_id, type=request.type,
        correlation_id=request.request_id, reply_to=reply_queue.name,
    )  # fmt: skip
    async with MemoryTransport(memory_broker) as researcher_side:
        await researcher_side.declare(*TOPOLOGY.researcher_declarations("alice"))
        for _ in range(2):
            async with AsyncExitStack() as stack:  # two runs of the agent, same data folder
                await _agent(stack, memory_broker, tmp_path, handler, **settings_args)
                await researcher_side.publish(TOPOLOGY.requests_exchange.name, "n1", outgoing)
                await anyio.sleep(0.2)
        replies = []
        async with researcher_side.consume(reply_queue) as deliveries:
            with anyio.move_on_after(0.5):
                async for delivery in deliveries:
                    replies.append(decode_message(unseal(delivery.body).body))
                    await delivery.ack()
    assert handler.runs == max(runs)
    assert [reply.output["runs"] for reply in replies if isinstance(reply, FAReply)] == runs
    assert all(len(reply.output["pad"]) == pad for reply in replies)
    kept_in_files = list((tmp_path / "replies-bodies").glob("*.reply"))
    assert len(kept_in_files) == (1 if pad else 0)


async def test_unreadable_bytes_without_reply_address_are_dead_lettered(
    memory_broker: MemoryBroker, tmp_path: Path
) -> None:
    async with AsyncExitStack() as stack:
        agent = await _agent(stack, memory_broker, tmp_path, FakeAnalytics())
        transport = await stack.enter_async_context(MemoryTransport(memory_broker))
        await transport.publish(
            TOPOLOGY.requests_exchange.name, "n1",
            OutgoingMessage(body=b"junk", message_id="m1", type="junk"),
        )  # fmt: skip
        dead = TOPOLOGY.dead_letter_queue
        async with transport.consume(dead) as deliveries:
            with anyio.fail_after(2):
                async for delivery in deliveries:
                    assert delivery.body == b"junk"
                    assert delivery.headers["x-death"][0]["reason"] == "rejected"
                    await delivery.ack()
                    break
        assert agent.counters["handled"] == 0


async def test_an_error_reply_carries_the_node_and_request(
    memory_broker: MemoryBroker, researcher: Requests, tmp_path: Path
) -> None:
    async with AsyncExitStack() as stack:
        await _agent(stack, memory_broker, tmp_path, FakeAnalytics())
        message = _fa().model_copy(update={"protocol_version": "9.0"})
        fed = await researcher.request(message, ["n1"], [DiscardOnTimeout(2)])
        error = fed.errors()["n1"]
        assert isinstance(error, ErrorMessage)
        assert (error.code, error.node_id, error.request_id) == (
            ErrorCode.UNSUPPORTED_VERSION, "n1", fed.request_id,
        )  # fmt: skip
