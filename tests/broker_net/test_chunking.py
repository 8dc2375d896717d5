"""Chunked transfers on both transports: split, reassembly, limits, failures and progress.

Each transport here chunks above a few hundred bytes, so small bodies exercise the same code
as gigabyte ones. The end-to-end cases run a real NodeAgent and the Requests collector.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack
from dataclasses import replace
from pathlib import Path
from typing import Any

import anyio
import numpy as np
import pytest
import xxhash

from broker_net.amqp import AmqpTransport
from broker_net.chunking import (
    CHUNK_INDEX,
    TRANSFER_DIGEST,
    TRANSFER_HASH,
    TRANSFER_ID,
    TRANSFER_SHA256,
    Chunking,
    failure,
    publish_chunked,
)
from broker_net.codec import decode_message
from broker_net.codes import ErrorCode
from broker_net.envelope import EnvelopeHeader, seal, unseal
from broker_net.frames import amqp_headers
from broker_net.inbox import Inbox
from broker_net.memory import MemoryBroker, MemoryTransport
from broker_net.messages import ErrorMessage, PingReply, PingRequest, TrainReply, TrainRequest
from broker_net.reassembly import ReassembledStream, Reassembler
from broker_net.topology import Topology
from broker_net.transfer_digest import HASH_IN_THREAD
from broker_net.transport import Delivery, OutgoingMessage, TransferProgress, Transport
from node_agent.agent import NodeAgent
from node_agent.context import NodeContext
from node_agent.handlers import HANDLERS
from node_agent.settings import NodeSettings
from researcher.requests.policies import (
    DiscardOnTimeout,
    NodeState,
    RequestStatus,
    StopOnStall,
    StopOnTimeout,
)
from researcher.requests.router import Requests

pytestmark = pytest.mark.anyio

NODE = "hospital-a"
SMALL = Chunking(chunk_size=256, idle_timeout=0.4)

Publish = Callable[[OutgoingMessage], Awaitable[None]]


@pytest.fixture
def make_chunked(transport_kind: str, memory_broker: MemoryBroker, request: pytest.FixtureRequest):
    """Build unconnected transports of the parametrized kind with the given chunking."""

    def make(chunking: Chunking = SMALL, name: str = "party") -> Transport:
        if transport_kind == "memory":
            return MemoryTransport(memory_broker, chunking=chunking)
        url = request.getfixturevalue("amqp_url")
        return AmqpTransport(url, connection_name=f"{request.node.name}:{name}", chunking=chunking)

    return make


@pytest.fixture
async def chunked(make_chunked) -> AsyncIterator[Transport]:
    async with make_chunked() as transport:
        yield transport


def _message(body: bytes, message_id: str = "m1", **fields: Any) -> OutgoingMessage:
    return OutgoingMessage(body=body, message_id=message_id, type="ping_request", **fields)


async def _declare(transport: Transport, topology: Topology) -> None:
    await transport.declare(*topology.node_declarations(NODE))


def _to_node(transport: Transport, topology: Topology) -> Publish:
    async def publish(message: OutgoingMessage) -> None:
        await transport.publish(topology.requests_exchange.name, NODE, message)

    return publish


async def _chunks_of(message: OutgoingMessage, chunking: Chunking = SMALL) -> list[OutgoingMessage]:
    """The chunk messages ``publish_chunked`` would send, in order."""
    chunks: list[OutgoingMessage] = []

    async def collect(chunk: OutgoingMessage) -> None:
        chunks.append(chunk)

    await publish_chunked(collect, message, replace(chunking, publish_window=1))
    return chunks


async def _next(deliveries: AsyncIterator[Delivery], timeout: float = 10) -> Delivery:
    with anyio.fail_after(timeout):
        return await anext(deliveries)


async def _nothing_arrives(deliveries: AsyncIterator[Delivery], wait: float = 0.3) -> None:
    with anyio.move_on_after(wait):
        delivery = await anext(deliveries)
        pytest.fail(f"unexpected delivery {delivery.message_id}")


def _body(size: int) -> bytes:
    return bytes(np.random.default_rng(size).integers(0, 256, size, dtype=np.uint8))


# --- the transport contract, chunked -------------------------------------------------------------


@pytest.mark.parametrize("size", [0, 1, 255, 256, 257, 512, 513, 10_000])
async def test_sizes_around_the_threshold_arrive_whole(
    chunked: Transport, topology: Topology, size: int
) -> None:
    await _declare(chunked, topology)
    body = _body(size)
    await _to_node(chunked, topology)(_message(body, correlation_id="r1", headers={"k": "v"}))
    async with chunked.consume(topology.node_queue(NODE)) as deliveries:
        delivery = await _next(deliveries)
        assert bytes(delivery.body) == body
        assert (delivery.message_id, delivery.correlation_id) == ("m1", "r1")
        assert delivery.headers["k"] == "v"
        assert (TRANSFER_ID in delivery.headers) == (size > SMALL.chunk_size)
        await delivery.ack()
        await _nothing_arrives(deliveries)


async def test_chunks_carry_the_transfer_headers() -> None:
    body = _body(600)
    chunks = await _chunks_of(_message(body, correlation_id="r1"))
    assert [len(chunk.body) for chunk in chunks] == [256, 256, 88]
    assert [chunk.headers[CHUNK_INDEX] for chunk in chunks] == [0, 1, 2]
    assert len({chunk.headers[TRANSFER_ID] for chunk in chunks}) == 1
    for chunk in chunks:
        assert (chunk.message_id, chunk.correlation_id, chunk.type) == (
            "m1", "r1", "ping_request",
        )  # fmt: skip
        assert chunk.headers["x-chunk-count"] == 3
        assert chunk.headers["x-transfer-size"] == 600
    # Every chunk names the hash; the digest of the whole goes with the last chunk only.
    assert [chunk.headers[TRANSFER_HASH] for chunk in chunks] == ["xxh3-128"] * 3
    assert [TRANSFER_DIGEST in chunk.headers for chunk in chunks] == [False, False, True]
    assert chunks[-1].headers[TRANSFER_DIGEST] == xxhash.xxh3_128(body).hexdigest()
    assert not any(TRANSFER_SHA256 in chunk.headers for chunk in chunks)


async def test_a_sender_set_to_sha256_writes_the_headers_of_protocol_1_1() -> None:
    body = _body(600)
    chunks = await _chunks_of(_message(body), replace(SMALL, transfer_hash="sha256"))
    assert not any(TRANSFER_HASH in chunk.headers for chunk in chunks)
    assert [TRANSFER_SHA256 in chunk.headers for chunk in chunks] == [False, False, True]
    assert chunks[-1].headers[TRANSFER_SHA256] == hashlib.sha256(body).hexdigest()
    whole = await _fed(chunks[::-1])
    assert whole is not None and failure(whole) is None and bytes(whole.body) == body
    wrong = hashlib.sha256(b"other").hexdigest()
    chunks[-1] = replace(chunks[-1], headers={**chunks[-1].headers, TRANSFER_SHA256: wrong})
    refused = await _fed(chunks)
    assert getattr(failure(refused) if refused else None, "code", None) == "TRANSFER_CORRUPTED"


async def test_an_unknown_or_contradictory_transfer_hash_is_refused() -> None:
    chunks = await _chunks_of(_message(_body(600)))
    unknown = [replace(c, headers={**c.headers, TRANSFER_HASH: "md5"}) for c in chunks]
    refused = await _fed(unknown)
    assert getattr(failure(refused) if refused else None, "code", None) == "TRANSFER_ERROR"
    assert "md5" in getattr(failure(refused), "reason", "")
    chunks[1] = replace(chunks[1], headers={**chunks[1].headers, TRANSFER_HASH: "sha256"})
    refused = await _fed(chunks)
    assert getattr(failure(refused) if refused else None, "code", None) == "TRANSFER_CORRUPTED"
    with pytest.raises(ValueError, match="transfer_hash"):
        Chunking(transfer_hash="md5")


async def test_the_digest_is_computed_from_a_body_in_parts() -> None:
    body = _body(3000)
    parts = [memoryview(body)[:100], body[100:1700], memoryview(body)[1700:]]
    chunks = await _chunks_of(replace(_message(b""), body=parts))
    assert b"".join(bytes(chunk.body) for chunk in chunks) == body
    assert chunks[-1].headers[TRANSFER_DIGEST] == xxhash.xxh3_128(body).hexdigest()


async def test_a_large_transfer_is_hashed_in_worker_threads() -> None:
    # Chunks above HASH_IN_THREAD are joined and hashed off the event loop.
    body = _body(3 * HASH_IN_THREAD + 5)
    chunking = Chunking(chunk_size=HASH_IN_THREAD)
    chunks = await _chunks_of(_message(body), chunking)
    assert [chunk.headers[CHUNK_INDEX] for chunk in chunks] == [0, 1, 2, 3]
    assert chunks[-1].headers[TRANSFER_DIGEST] == xxhash.xxh3_128(body).hexdigest()
    reassembler = Reassembler(chunking)
    settled: list[str] = []
    wholes = [await reassembler.feed(_delivery(c, settled, str(i))) for i, c in enumerate(chunks)]
    assert wholes[-1] is not None and failure(wholes[-1]) is None
    assert bytes(wholes[-1].body) == body


async def _fed(chunks: list[OutgoingMessage]) -> Delivery | None:
    """Feed ``chunks`` in the order given to a fresh reassembler; the last thing it hands up."""
    reassembler = Reassembler(SMALL)
    whole = None
    for index, chunk in enumerate(chunks):
        whole = await reassembler.feed(_delivery(chunk, [], f"c{index}")) or whole
    return whole


async def test_a_last_chunk_without_the_digest_is_refused() -> None:
    chunks = await _chunks_of(_message(_body(600)))
    headers = {k: v for k, v in chunks[-1].headers.items() if k != TRANSFER_DIGEST}
    chunks[-1] = replace(chunks[-1], headers=headers)
    refused = await _fed(chunks)
    assert refused is not None and refused.body == b""
    assert getattr(failure(refused), "code", None) == "TRANSFER_ERROR"
    assert TRANSFER_DIGEST in getattr(failure(refused), "reason", "")


async def test_a_wrong_digest_on_the_last_chunk_is_detected_in_any_order() -> None:
    chunks = await _chunks_of(_message(_body(1000)))
    wrong = xxhash.xxh3_128(b"something else").hexdigest()
    chunks[-1] = replace(chunks[-1], headers={**chunks[-1].headers, TRANSFER_DIGEST: wrong})
    for order in (chunks, chunks[::-1], [chunks[2], chunks[0], chunks[3], chunks[1]]):
        refused = await _fed(order)
        assert refused is not None and refused.body == b""
        assert getattr(failure(refused), "code", None) == "TRANSFER_CORRUPTED"


async def test_a_truncated_transfer_is_never_handed_up() -> None:
    chunks = await _chunks_of(_message(_body(1000)))
    assert await _fed(chunks[:-1]) is None  # no digest, no end: waits, then goes idle
    assert await _fed(chunks[1:]) is None


async def test_chunks_of_the_1_0_layout_with_the_digest_on_every_chunk_are_accepted() -> None:
    body = _body(1000)
    chunks = await _chunks_of(_message(body), replace(SMALL, transfer_hash="sha256"))
    digest = chunks[-1].headers[TRANSFER_SHA256]
    old = [replace(c, headers={**c.headers, TRANSFER_SHA256: digest}) for c in chunks]
    whole = await _fed(old[::-1])
    assert whole is not None and failure(whole) is None and bytes(whole.body) == body
    # A chunk announcing another digest than the others contradicts them.
    old[1] = replace(old[1], headers={**old[1].headers, TRANSFER_SHA256: "0" * 64})
    refused = await _fed(old)
    assert getattr(failure(refused) if refused else None, "code", None) == "TRANSFER_CORRUPTED"


async def test_many_chunks_pass_a_small_prefetch(make_chunked, topology: Topology) -> None:
    # 400 chunks, consumed with prefetch 2: every chunk is held until the whole is settled.
    # No idle timeout of a fraction of a second here: a busy host may pause the transfer.
    async with make_chunked(replace(SMALL, idle_timeout=60)) as chunked:
        await _many_chunks_pass_a_small_prefetch(chunked, topology)


async def _many_chunks_pass_a_small_prefetch(chunked: Transport, topology: Topology) -> None:
    await _declare(chunked, topology)
    body = _body(400 * 256)
    async with chunked.consume(topology.node_queue(NODE), prefetch=2) as deliveries:
        assert isinstance(deliveries, ReassembledStream)
        await _to_node(chunked, topology)(_message(body))
        delivery = await _next(deliveries, timeout=60)
        assert bytes(delivery.body) == body
        assert deliveries.prefetch >= 2 + 399
        await delivery.ack()
        await _to_node(chunked, topology)(_message(b"small", "m2"))
        assert (await _next(deliveries)).message_id == "m2"
        assert deliveries.prefetch == 2


async def test_interleaved_transfers_are_told_apart(chunked: Transport, topology: Topology) -> None:
    await _declare(chunked, topology)
    first, second = _body(1000), _body(1001)
    a = await _chunks_of(_message(first, "a"))
    b = await _chunks_of(_message(second, "b"))
    publish = _to_node(chunked, topology)
    for pair in zip(a, b, strict=False):
        for chunk in pair:
            await publish(chunk)
    await publish(b[-1])
    received: dict[str | None, bytes] = {}
    async with chunked.consume(topology.node_queue(NODE), prefetch=1) as deliveries:
        for _ in range(2):
            delivery = await _next(deliveries)
            received[delivery.message_id] = bytes(delivery.body)
            await delivery.ack()
    assert received == {"a": first, "b": second}


async def test_chunks_out_of_order_are_put_in_place(chunked: Transport, topology: Topology) -> None:
    await _declare(chunked, topology)
    body = _body(2000)
    chunks = await _chunks_of(_message(body))
    for chunk in reversed(chunks):
        await _to_node(chunked, topology)(chunk)
    async with chunked.consume(topology.node_queue(NODE)) as deliveries:
        delivery = await _next(deliveries)
        assert bytes(delivery.body) == body
        await delivery.ack()


async def test_a_corrupted_chunk_is_detected(chunked: Transport, topology: Topology) -> None:
    await _declare(chunked, topology)
    chunks = await _chunks_of(_message(_body(1000), correlation_id="r1"))
    broken = bytearray(chunks[1].body)
    broken[7] ^= 0xFF
    chunks[1] = replace(chunks[1], body=bytes(broken))
    for chunk in chunks:
        await _to_node(chunked, topology)(chunk)
    async with chunked.consume(topology.node_queue(NODE)) as deliveries:
        delivery = await _next(deliveries)
        refused = failure(delivery)
        assert refused is not None and refused.code == "TRANSFER_CORRUPTED"
        assert refused.reason == "the message's xxh3-128 digest is wrong"
        assert delivery.correlation_id == "r1" and delivery.body == b""
        await delivery.ack()
        await _nothing_arrives(deliveries)


async def test_a_transfer_above_the_size_limit_is_refused_once(
    make_chunked, topology: Topology
) -> None:
    async with make_chunked(replace(SMALL, max_size=1000)) as transport:
        await _declare(transport, topology)
        await _to_node(transport, topology)(_message(_body(5000)))
        async with transport.consume(topology.node_queue(NODE)) as deliveries:
            delivery = await _next(deliveries)
            refused = failure(delivery)
            assert refused is not None and refused.code == "MESSAGE_TOO_LARGE"
            await delivery.ack()
            await _nothing_arrives(deliveries)


async def test_reassembly_memory_is_bounded(make_chunked, topology: Topology) -> None:
    # Room for one 2000-byte transfer at a time: the second, interleaved, is refused.
    async with make_chunked(replace(SMALL, memory_limit=3000)) as transport:
        await _declare(transport, topology)
        a = await _chunks_of(_message(_body(2000), "a"))
        b = await _chunks_of(_message(_body(2000), "b"))
        publish = _to_node(transport, topology)
        for first, second in zip(a, b, strict=True):
            await publish(first)
            await publish(second)
        async with transport.consume(topology.node_queue(NODE)) as deliveries:
            assert isinstance(deliveries, ReassembledStream)
            refused = await _next(deliveries)
            assert refused.message_id == "b"
            assert getattr(failure(refused), "code", None) == "TRANSFER_ERROR"
            assert deliveries.reassembler.in_progress_bytes <= 3000
            await refused.ack()
            whole = await _next(deliveries)
            assert whole.message_id == "a" and failure(whole) is None
            await whole.ack()
            assert deliveries.reassembler.in_progress_bytes == 0


async def test_an_abandoned_transfer_is_dropped_with_a_log_line(
    chunked: Transport, topology: Topology, caplog: pytest.LogCaptureFixture
) -> None:
    await _declare(chunked, topology)
    chunks = await _chunks_of(_message(_body(1000), "abandoned"))
    for chunk in chunks[:-1]:  # the sender died before the last chunk
        await _to_node(chunked, topology)(chunk)
    with caplog.at_level(logging.WARNING, logger="broker_net.reassembly"):
        async with chunked.consume(topology.node_queue(NODE)) as deliveries:
            assert isinstance(deliveries, ReassembledStream)
            await _nothing_arrives(deliveries, wait=SMALL.idle_timeout * 2)
            assert deliveries.reassembler.in_progress == 0
            await _to_node(chunked, topology)(_message(b"next", "next"))
            delivery = await _next(deliveries)
            assert delivery.message_id == "next"
            await delivery.ack()
    assert any("abandoning transfer" in record.message for record in caplog.records)
    async with chunked.consume(topology.node_queue(NODE)) as deliveries:
        await _nothing_arrives(deliveries)  # the abandoned chunks are gone from the queue


async def test_a_consumer_that_dies_mid_transfer_loses_nothing(
    make_chunked, topology: Topology
) -> None:
    body = _body(5000)
    seen: list[TransferProgress] = []
    async with make_chunked(replace(SMALL, idle_timeout=30)) as transport:
        await _declare(transport, topology)
        queue = topology.node_queue(NODE)
        async with transport.consume(queue, prefetch=1, on_progress=seen.append) as deliveries:
            chunks = await _chunks_of(_message(body))
            for chunk in chunks[:10]:
                await _to_node(transport, topology)(chunk)
            with anyio.move_on_after(5):
                while len(seen) < 10:  # half a transfer held, none of it settled
                    with anyio.move_on_after(0.05):
                        await anext(deliveries)
            assert len(seen) == 10
        for chunk in chunks[10:]:
            await _to_node(transport, topology)(chunk)
        async with transport.consume(queue, prefetch=1) as deliveries:
            delivery = await _next(deliveries)
            assert bytes(delivery.body) == body
            assert delivery.redelivered
            await delivery.ack()


async def test_reject_with_requeue_gives_every_chunk_back(
    chunked: Transport, topology: Topology
) -> None:
    await _declare(chunked, topology)
    body = _body(1500)
    await _to_node(chunked, topology)(_message(body))
    async with chunked.consume(topology.node_queue(NODE)) as deliveries:
        await (await _next(deliveries)).reject(requeue=True)
        again = await _next(deliveries)
        assert bytes(again.body) == body and again.redelivered
        await again.ack()


async def test_progress_is_reported_per_chunk() -> None:
    seen: list[TransferProgress] = []
    reassembler = Reassembler(SMALL, on_progress=seen.append)
    chunks = await _chunks_of(_message(_body(700), correlation_id="r1"))
    settled: list[str] = []
    wholes = []
    for index, chunk in enumerate(chunks):
        delivery = _delivery(chunk, settled, f"c{index}")
        wholes.append(await reassembler.feed(delivery))
    assert [p.received for p in seen] == [256, 512, 700]
    assert {p.correlation_id for p in seen} == {"r1"}
    assert wholes[:2] == [None, None] and wholes[2] is not None
    assert reassembler.reserved == 2
    await wholes[2].ack()
    assert sorted(settled) == ["ack c0", "ack c1", "ack c2"]
    assert reassembler.reserved == 0


async def test_a_consumer_that_fell_behind_keeps_the_transfer_whose_chunks_wait() -> None:
    # The first chunk was read long ago (the consumer was starved of CPU, or raising its
    # prefetch took a while): the transfer is overdue, but its other chunks are waiting.
    body = _body(700)
    settled: list[str] = []
    inbox = Inbox[Delivery]()
    for index, chunk in enumerate(await _chunks_of(_message(body))):
        inbox.put_nowait(_delivery(chunk, settled, f"c{index}"))
    readings = [time.monotonic() - 10 * SMALL.idle_timeout]

    def clock() -> float:
        return readings.pop() if readings else time.monotonic()

    async def set_prefetch(count: int) -> bool:
        return True

    stream = ReassembledStream(inbox, Reassembler(SMALL, clock=clock), 1, set_prefetch)
    whole = await _next(stream)
    assert bytes(whole.body) == body
    assert settled == []
    await whole.ack()
    assert sorted(settled) == ["ack c0", "ack c1", "ack c2"]


def _delivery(message: OutgoingMessage, settled: list[str], name: str) -> Delivery:
    async def ack() -> None:
        settled.append(f"ack {name}")

    async def reject(requeue: bool) -> None:
        settled.append(f"reject {name}")

    return Delivery(
        body=message.body, message_id=message.message_id, type=message.type,
        correlation_id=message.correlation_id, reply_to=message.reply_to,
        headers=dict(message.headers), redelivered=False, exchange="", routing_key="",
        _ack=ack, _reject=reject,
    )  # fmt: skip


# --- requests and node agents, chunked -----------------------------------------------------------


async def echo_train(request: TrainRequest, context: NodeContext) -> TrainReply:
    return TrainReply(
        request_id=request.request_id, researcher_id=request.researcher_id,
        node_id=context.node_id, experiment_id=request.experiment_id, round=request.round,
        success=True, params=request.params,
    )  # fmt: skip


def _train(params: dict[str, Any]) -> TrainRequest:
    return TrainRequest(
        researcher_id="alice", experiment_id="e", round=1, training_plan="class P: ...",
        training_plan_class="P", dataset_id="d", params=params,
    )  # fmt: skip


async def _agent(
    stack: AsyncExitStack, transport: Transport, topology: Topology, path: Path
) -> None:
    settings = NodeSettings(
        node_id=NODE, data_dir=path, namespace=topology.namespace, security=False
    )
    handlers = dict(HANDLERS, train_request=echo_train)
    agent = await stack.enter_async_context(
        NodeAgent(settings, transport, handlers=handlers, shutdown_grace=1)
    )
    await agent.wait_ready()


async def test_params_of_40_mb_go_out_and_back_through_a_node_agent(
    make_chunked, topology: Topology, tmp_path: Path
) -> None:
    rng = np.random.default_rng(0)
    params = {f"layer{i}": rng.standard_normal((1024, 2560), dtype=np.float32) for i in range(4)}
    chunking = Chunking(chunk_size=4 * 1024**2)
    async with AsyncExitStack() as stack:
        node_side = await stack.enter_async_context(make_chunked(chunking, "node"))
        await _agent(stack, node_side, topology, tmp_path)
        researcher_side = await stack.enter_async_context(make_chunked(chunking, "researcher"))
        requests = await stack.enter_async_context(
            Requests(researcher_side, "alice", topology=topology)
        )
        fed = await requests.request(_train(params), [NODE], [DiscardOnTimeout(25)])
    reply = fed.replies()[NODE]
    assert isinstance(reply, TrainReply)
    assert reply.params is not None and reply.params.keys() == params.keys()
    for name, array in params.items():
        assert np.array_equal(reply.params[name], array)


async def test_a_corrupted_request_is_answered_transfer_corrupted(
    make_chunked, topology: Topology, tmp_path: Path
) -> None:
    async with AsyncExitStack() as stack:
        node_side = await stack.enter_async_context(make_chunked(name="node"))
        await _agent(stack, node_side, topology, tmp_path)
        researcher = await stack.enter_async_context(make_chunked(name="researcher"))
        await researcher.declare(*topology.researcher_declarations("alice"))
        request = _train({"w": np.ones(500, dtype=np.float32)})
        header = EnvelopeHeader.for_message(
            request, sender_id="alice", sender_role="researcher", recipient=NODE
        )
        reply_queue = topology.researcher_queue("alice")
        message = OutgoingMessage(
            body=seal(header, request), message_id=header.message_id, type=request.type,
            correlation_id=request.request_id, reply_to=reply_queue.name,
        )  # fmt: skip
        chunks = await _chunks_of(message)
        chunks[-1] = replace(chunks[-1], body=b"\x00" * len(chunks[-1].body))
        for chunk in chunks:
            await _to_node(researcher, topology)(chunk)
        async with researcher.consume(reply_queue) as deliveries:
            delivery = await _next(deliveries)
            answer = decode_message(unseal(delivery.body).body)
            await delivery.ack()
    assert isinstance(answer, ErrorMessage)
    assert answer.code is ErrorCode.TRANSFER_CORRUPTED
    assert answer.request_id == request.request_id and answer.node_id == NODE


class SlowNode:
    """A node that answers pings with a chunked reply, one chunk every ``pause`` seconds,
    giving up after ``stop_after`` chunks when set."""

    def __init__(
        self, transport: Transport, topology: Topology, pause: float, stop_after: int | None = None
    ) -> None:
        self.transport = transport
        self.topology = topology
        self.pause = pause
        self.stop_after = stop_after

    async def serve_one(self) -> None:
        async with self.transport.consume(self.topology.node_queue(NODE)) as deliveries:
            delivery = await _next(deliveries)
            request = decode_message(unseal(delivery.body).body)
            assert isinstance(request, PingRequest)
            reply = PingReply(
                request_id=request.request_id, researcher_id="alice", node_id=NODE,
                node_name="x" * 2000,
            )  # fmt: skip
            header = EnvelopeHeader.for_message(
                reply, sender_id=NODE, sender_role="node", recipient="alice"
            )
            message = OutgoingMessage(
                body=seal(header, reply), message_id=header.message_id, type=reply.type,
                correlation_id=request.request_id, headers=amqp_headers(header, reply),
            )  # fmt: skip
            chunks = await _chunks_of(message)
            for chunk in chunks[: self.stop_after]:
                await self.transport.publish(
                    self.topology.replies_exchange.name, delivery.reply_to or "", chunk
                )
                await anyio.sleep(self.pause)
            await delivery.ack()


async def _ping_slow_node(
    make_chunked, topology: Topology, node: SlowNode, policies: list[Any]
) -> Any:
    async with AsyncExitStack() as stack:
        researcher_side = await stack.enter_async_context(make_chunked(name="researcher"))
        requests = await stack.enter_async_context(
            Requests(researcher_side, "alice", topology=topology)
        )
        await node.transport.declare(*topology.node_declarations(NODE))
        async with anyio.create_task_group() as group:
            group.start_soon(node.serve_one)
            fed = await requests.request(PingRequest(researcher_id="alice"), [NODE], policies)
            group.cancel_scope.cancel()
    return fed


async def test_a_reply_that_keeps_arriving_outlives_the_timeout(
    make_chunked, topology: Topology
) -> None:
    # Nine chunks, 0.15 s apart: 1.2 s in all, against a 0.5 s timeout measured from the
    # request and then from each chunk.
    async with make_chunked(name="node") as node_side:
        node = SlowNode(node_side, topology, pause=0.15)
        fed = await _ping_slow_node(make_chunked, topology, node, [StopOnTimeout(0.5)])
    assert fed.status() == {NODE: RequestStatus.SUCCESS}
    assert fed.replies()[NODE].node_name == "x" * 2000


async def test_a_stalled_reply_times_out_with_its_reason(make_chunked, topology: Topology) -> None:
    async with make_chunked(name="node") as node_side:
        node = SlowNode(node_side, topology, pause=0.05, stop_after=3)
        fed = await _ping_slow_node(make_chunked, topology, node, [DiscardOnTimeout(0.5)])
    assert fed.status() == {NODE: RequestStatus.TIMEOUT}
    assert "stalled" in fed.reasons()[NODE]


async def test_stop_on_stall_stops_sooner_than_the_timeout(
    make_chunked, topology: Topology
) -> None:
    async with make_chunked(name="node") as node_side:
        node = SlowNode(node_side, topology, pause=0.05, stop_after=3)
        fed = await _ping_slow_node(
            make_chunked, topology, node, [DiscardOnTimeout(30), StopOnStall(0.3)]
        )
    assert fed.status() == {NODE: RequestStatus.TIMEOUT}
    report = fed.policy_report()
    assert report is not None and report.policy == "StopOnStall" and "stalled" in report.reason


# --- progress in the policies --------------------------------------------------------------------


def test_timeouts_run_from_the_latest_chunk() -> None:
    silent = NodeState("silent", sent_at=0.0, status=RequestStatus.PENDING)
    arriving = NodeState("arriving", 0.0, RequestStatus.PENDING, last_progress=9.0)
    policy = DiscardOnTimeout(5)
    verdict = policy.evaluate({"silent": silent, "arriving": arriving}, now=10.0)
    assert dict(verdict.marks) == {"silent": RequestStatus.TIMEOUT}
    assert policy.next_deadline({"arriving": arriving}) == 14.0
    late = policy.evaluate({"arriving": arriving}, now=14.0)
    assert "stalled" in late.reasons["arriving"]


def test_stall_policies_ignore_replies_that_have_not_started() -> None:
    silent = NodeState("silent", sent_at=0.0, status=RequestStatus.PENDING)
    stalled = NodeState("stalled", 0.0, RequestStatus.PENDING, last_progress=1.0)
    verdict = StopOnStall(2).evaluate({"silent": silent, "stalled": stalled}, now=100.0)
    assert dict(verdict.marks) == {"stalled": RequestStatus.TIMEOUT}
    assert verdict.stop_because_of == "stalled"
    with pytest.raises(ValueError):
        StopOnStall(0)
