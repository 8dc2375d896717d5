"""Chunked transfers: an envelope above a threshold travels as a stream of chunk messages.

RabbitMQ refuses messages above its ``max_message_size`` (16 MiB by default since 4.0), and
one huge message moves slower and needs more memory on both ends than a stream of mid-sized
ones. A transport therefore splits any body above :attr:`Chunking.chunk_size` into chunks and
puts them back together before a consumer sees anything, so the agent and the request layer
only ever see whole messages.

On the wire every chunk is an ordinary message with the same ``message_id``,
``correlation_id``, ``type``, ``reply_to`` and headers as the whole would have had, plus:

``x-transfer-id``
    a fresh id per transfer (a retried publish is a new transfer);
``x-chunk-index`` / ``x-chunk-count``
    the chunk's position, from 0, and how many there are;
``x-chunk-size``
    the size of every chunk but the last, so each chunk's offset is ``index * size``;
``x-transfer-size`` / ``x-transfer-sha256``
    the size and SHA-256 (hex) of the whole body.

The receiving side (:class:`Reassembler`) preallocates one buffer of the announced size and
copies each chunk into place (in a worker thread, hashing it on the way), so the whole body is
one buffer handed up as is, a ``memoryview``, with no further copy. It refuses a transfer
above :attr:`Chunking.max_size` and any transfer that would take the bytes being reassembled
at once above :attr:`Chunking.memory_limit`, checks the SHA-256 of the whole, and drops the
chunks of a transfer that has seen no chunk for :attr:`Chunking.idle_timeout` seconds, with a
log line.
A refused or corrupted transfer is still handed up once, with an empty body and the
``x-transfer-error`` header, so the consumer can answer the sender (see :func:`failure`).

At-least-once: chunk deliveries stay unacknowledged until the whole message is settled, and
settling the whole settles every chunk. A consumer that dies mid-transfer therefore loses
nothing: the broker redelivers every chunk to the next one. Holding all the chunks of a
256-chunk transfer needs more than a small prefetch allows, so the consumer's prefetch is
raised by the chunks of every transfer in progress or unsettled (see
:attr:`Reassembler.reserved`) and lowered again once they are settled; each transport knows
how to change its prefetch on a live consumer. The bodies of held chunks are released as soon
as they are copied, so holding them costs no memory.
"""

from __future__ import annotations

import hashlib
import logging
import math
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, replace
from typing import Any

import anyio
import numpy as np

from broker_net.inbox import Inbox
from broker_net.transport import Delivery, OutgoingMessage, ProgressCallback, TransferProgress

logger = logging.getLogger(__name__)

TRANSFER_ID = "x-transfer-id"
CHUNK_INDEX = "x-chunk-index"
CHUNK_COUNT = "x-chunk-count"
CHUNK_SIZE = "x-chunk-size"
TRANSFER_SIZE = "x-transfer-size"
TRANSFER_SHA256 = "x-transfer-sha256"
TRANSFER_ERROR = "x-transfer-error"
"""Header of a refused or corrupted transfer handed up with an empty body: an ErrorCode name."""
TRANSFER_ERROR_REASON = "x-transfer-error-reason"
"""Header giving the human-readable reason next to :data:`TRANSFER_ERROR`."""

MAX_PREFETCH = 65_535
"""The largest prefetch count AMQP can express."""

_HASH_IN_THREAD = 1024**2


@dataclass(frozen=True, slots=True)
class Chunking:
    """When and how bodies are split, and what a receiver accepts.

    Args:
        chunk_size: bodies above this many bytes travel in chunks of this size. Keep it well
            under the broker's ``max_message_size`` (16 MiB by default on RabbitMQ 4).
        max_size: the largest transfer a receiver accepts, in bytes.
        memory_limit: total bytes of transfers a receiver reassembles at once; a transfer that
            would go above it is refused.
        idle_timeout: seconds without a chunk after which a receiver abandons a transfer.
        publish_window: chunks a sender publishes ahead of the broker's confirms.
    """

    chunk_size: int = 4 * 1024**2
    max_size: int = 4 * 1024**3
    memory_limit: int = 8 * 1024**3
    idle_timeout: float = 60.0
    publish_window: int = 8

    def __post_init__(self) -> None:
        if self.chunk_size < 1 or self.max_size < 1 or self.memory_limit < 1:
            raise ValueError("chunk_size, max_size and memory_limit must be positive")
        if self.idle_timeout <= 0 or self.publish_window < 1:
            raise ValueError("idle_timeout and publish_window must be positive")


@dataclass(frozen=True, slots=True)
class TransferFailure:
    """Why a transfer handed up with an empty body was refused.

    Attributes:
        code: the name of the :class:`broker_net.messages.ErrorCode` to answer with.
        reason: what happened, for a person.
    """

    code: str
    reason: str


def failure(delivery: Delivery) -> TransferFailure | None:
    """The failure of a refused or corrupted transfer, or ``None`` for a usable delivery."""
    code = delivery.headers.get(TRANSFER_ERROR)
    if code is None:
        return None
    return TransferFailure(str(code), str(delivery.headers.get(TRANSFER_ERROR_REASON, "")))


# --- sending -----------------------------------------------------------------------------------


async def publish_chunked(
    publish: Callable[[OutgoingMessage], Awaitable[None]],
    message: OutgoingMessage,
    chunking: Chunking,
) -> None:
    """Publish ``message`` through ``publish``, split into chunks if it is above the threshold.

    ``publish`` always gets a body of bytes. Chunks are cut straight from the body's parts, so
    the whole is never joined; up to :attr:`Chunking.publish_window` chunks are published at
    once. The first failure stops the transfer and is raised; the receiver abandons the chunks
    already sent.
    """
    size = message.size
    if size <= chunking.chunk_size:
        body = message.body
        await publish(message if isinstance(body, bytes) else replace(message, body=b"".join(body)))
        return
    parts: list[bytes | memoryview] = (
        [message.body] if isinstance(message.body, bytes) else list(message.body)
    )
    chunk_size = chunking.chunk_size
    count = math.ceil(size / chunk_size)
    headers = {
        **message.headers,
        TRANSFER_ID: uuid.uuid4().hex,
        CHUNK_COUNT: count,
        CHUNK_SIZE: chunk_size,
        TRANSFER_SIZE: size,
        TRANSFER_SHA256: (await _sha256(parts, size)).hex(),
    }
    window = anyio.Semaphore(chunking.publish_window)

    async def send(index: int, body: bytes) -> None:
        try:
            await publish(replace(message, body=body, headers={**headers, CHUNK_INDEX: index}))
        finally:
            window.release()

    async with anyio.create_task_group() as group:
        for index, body in enumerate(_cut(parts, chunk_size)):
            # Taken here, in index order, so chunks reach the broker in order, and at most a
            # window of chunk copies exists at once.
            await window.acquire()
            group.start_soon(send, index, body)


def _cut(parts: list[bytes | memoryview], chunk_size: int) -> Iterator[bytes]:
    """Consecutive chunks of ``chunk_size`` bytes (the last one shorter) across ``parts``."""
    pending: list[memoryview] = []
    pending_size = 0
    for part in parts:
        view = memoryview(part).cast("B")
        while view.nbytes:
            take = min(chunk_size - pending_size, view.nbytes)
            pending.append(view[:take])
            pending_size += take
            view = view[take:]
            if pending_size == chunk_size:
                yield b"".join(pending)
                pending, pending_size = [], 0
    if pending_size:
        yield b"".join(pending)


async def _sha256(parts: list[bytes | memoryview], size: int) -> bytes:
    def digest() -> bytes:
        hasher = hashlib.sha256()
        for part in parts:
            hasher.update(part)
        return hasher.digest()

    if size < _HASH_IN_THREAD:
        return digest()
    # hashlib releases the GIL on large inputs: the event loop keeps running meanwhile.
    return await anyio.to_thread.run_sync(digest)


# --- receiving ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _ChunkHeader:
    transfer_id: str
    index: int
    count: int
    chunk_size: int
    size: int
    sha256: str

    @classmethod
    def parse(cls, headers: dict[str, Any]) -> _ChunkHeader:
        try:
            parsed = cls(
                transfer_id=str(headers[TRANSFER_ID]),
                index=int(headers[CHUNK_INDEX]),
                count=int(headers[CHUNK_COUNT]),
                chunk_size=int(headers[CHUNK_SIZE]),
                size=int(headers[TRANSFER_SIZE]),
                sha256=str(headers[TRANSFER_SHA256]),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"bad chunk headers: {exc!r}") from exc
        if parsed.count < 1 or parsed.chunk_size < 1 or not 0 <= parsed.index < parsed.count:
            raise ValueError(f"chunk {parsed.index} of {parsed.count} makes no sense")
        if parsed.count != math.ceil(parsed.size / parsed.chunk_size):
            raise ValueError(
                f"{parsed.size} bytes in chunks of {parsed.chunk_size} is not {parsed.count} chunks"
            )
        return parsed

    def span(self) -> tuple[int, int]:
        start = self.index * self.chunk_size
        return start, min(start + self.chunk_size, self.size)

    def same_transfer(self, other: _ChunkHeader) -> bool:
        return (self.count, self.chunk_size, self.size, self.sha256) == (
            other.count, other.chunk_size, other.size, other.sha256,
        )  # fmt: skip


class _Transfer:
    """One transfer being reassembled."""

    def __init__(self, header: _ChunkHeader, first: Delivery, now: float) -> None:
        self.header = header
        self.first = first
        # Not zero-filled as a bytearray would be: every byte is written by a chunk, and
        # zeroing a gigabyte first would touch every page twice.
        self._array = np.empty(header.size, dtype=np.uint8)
        self.buffer = memoryview(self._array.data)
        self.chunks: list[Delivery | None] = [None] * header.count
        self.received = 0
        self.received_bytes = 0
        self.last_chunk_at = now
        self.started_at = now
        self._hasher: Any = hashlib.sha256()
        self._hashed = 0
        """Chunks hashed so far, in order; when one arrives out of order the whole buffer is
        hashed at the end instead."""

    async def add(self, header: _ChunkHeader, delivery: Delivery, now: float) -> None:
        start, end = header.span()
        body = delivery.body
        if len(body) != end - start:
            raise ValueError(f"chunk {header.index} holds {len(body)} bytes, not {end - start}")
        if self.chunks[header.index] is None:
            self.received += 1
            self.received_bytes += end - start
        hasher = self._hasher if header.index == self._hashed else None
        if hasher is not None:
            self._hashed += 1
        elif header.index > self._hashed:
            self._hasher = None  # out of order: the whole buffer is hashed at the end
        # Recorded before the copy, so a cancellation cannot lose track of the delivery; the
        # chunk only waits to be settled from now on.
        delivery.body = b""
        self.chunks[header.index] = delivery
        self.last_chunk_at = now

        def copy() -> None:
            self._array[start:end] = np.frombuffer(body, dtype=np.uint8)
            if hasher is not None:
                hasher.update(body)

        if end - start < _HASH_IN_THREAD:
            copy()
            return
        # numpy and hashlib release the GIL: the event loop reads the next chunk meanwhile.
        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(copy)

    @property
    def complete(self) -> bool:
        return self.received == self.header.count

    async def digest(self) -> str:
        if self._hasher is not None and self._hashed == self.header.count:
            return str(self._hasher.hexdigest())
        with anyio.CancelScope(shield=True):
            digest = await _sha256([self.buffer], self.header.size)
        return digest.hex()

    def deliveries(self) -> list[Delivery]:
        return [chunk for chunk in self.chunks if chunk is not None]


class Reassembler:
    """Turns chunk deliveries back into whole deliveries; other deliveries pass through.

    Args:
        chunking: the limits to enforce.
        on_progress: called for each chunk that arrives, e.g. to keep a request alive.
        clock: the monotonic time source.
    """

    def __init__(
        self,
        chunking: Chunking,
        *,
        on_progress: ProgressCallback | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.chunking = chunking
        self.on_progress = on_progress
        self._clock = clock
        self._transfers: dict[str, _Transfer] = {}
        self._refused: dict[str, float] = {}
        self._bytes = 0
        self.reserved = 0
        """Prefetch slots, beyond one per whole message, held by transfers in progress or
        handed up and not yet settled: the consumer's prefetch must be raised by this much."""

    @property
    def in_progress(self) -> int:
        """Number of transfers being reassembled."""
        return len(self._transfers)

    @property
    def in_progress_bytes(self) -> int:
        """Bytes of the buffers of transfers being reassembled."""
        return self._bytes

    async def feed(self, delivery: Delivery) -> Delivery | None:
        """Take one delivery; return a whole delivery when there is one to hand up."""
        if TRANSFER_ID not in delivery.headers:
            return delivery
        now = self._clock()
        try:
            header = _ChunkHeader.parse(delivery.headers)
        except ValueError as exc:
            transfer_id = str(delivery.headers.get(TRANSFER_ID))
            return self._refuse(delivery, transfer_id, "TRANSFER_ERROR", str(exc), now)
        if header.transfer_id in self._refused:
            # The rest of a transfer already refused and answered: drop it.
            self._refused[header.transfer_id] = now
            await delivery.ack()
            return None
        transfer = self._transfers.get(header.transfer_id)
        if transfer is None:
            refusal = self._admission(header)
            if refusal is not None:
                code, reason = refusal
                return self._refuse(delivery, header.transfer_id, code, reason, now)
            transfer = self._start(header, delivery, now)
        elif not header.same_transfer(transfer.header):
            reason = "chunks of one transfer disagree on its size, chunking or digest"
            return await self._fail(transfer, delivery, "TRANSFER_CORRUPTED", reason, now)
        previous = transfer.chunks[header.index]
        try:
            await transfer.add(header, delivery, now)
        except ValueError as exc:
            return await self._fail(transfer, delivery, "TRANSFER_CORRUPTED", str(exc), now)
        if previous is not None:
            # A redelivery (after a reconnect) or a retried publish: the same bytes again. The
            # newest delivery is the live one; settling the other is harmless either way.
            await previous.ack()
        if self.on_progress is not None:
            self.on_progress(
                TransferProgress(
                    header.transfer_id, delivery.message_id, delivery.correlation_id,
                    delivery.headers, transfer.received_bytes, header.size,
                )
            )  # fmt: skip
        if not transfer.complete:
            return None
        self._forget(transfer)
        digest = await transfer.digest()
        if digest != header.sha256:
            logger.warning(
                "transfer %s (message %s) is corrupted: SHA-256 %s, announced %s",
                header.transfer_id, transfer.first.message_id, digest, header.sha256,
            )  # fmt: skip
            return self._whole(
                transfer, failed=("TRANSFER_CORRUPTED", "the SHA-256 of the message is wrong")
            )
        return self._whole(transfer)

    def _admission(self, header: _ChunkHeader) -> tuple[str, str] | None:
        if header.size > self.chunking.max_size:
            return (
                "MESSAGE_TOO_LARGE",
                f"a message of {header.size} bytes is above the limit of "
                f"{self.chunking.max_size} bytes",
            )
        if self._bytes + header.size > self.chunking.memory_limit:
            return (
                "TRANSFER_ERROR",
                f"busy: {self._bytes} bytes are being received already, a message of "
                f"{header.size} more would pass the limit of {self.chunking.memory_limit}",
            )
        return None

    def _start(self, header: _ChunkHeader, delivery: Delivery, now: float) -> _Transfer:
        transfer = _Transfer(header, delivery, now)
        self._transfers[header.transfer_id] = transfer
        self._bytes += header.size
        self.reserved += header.count - 1
        return transfer

    def _forget(self, transfer: _Transfer) -> None:
        if self._transfers.pop(transfer.header.transfer_id, None) is not None:
            self._bytes -= transfer.header.size

    def _whole(self, transfer: _Transfer, *, failed: tuple[str, str] | None = None) -> Delivery:
        """The delivery handed up for a complete transfer; settling it settles every chunk."""
        chunks = transfer.deliveries()
        held = transfer.header.count - 1
        released = False

        def release() -> None:
            nonlocal released
            if not released:
                released = True
                self.reserved -= held

        async def ack() -> None:
            release()
            for chunk in chunks:
                await chunk.ack()

        async def reject(requeue: bool) -> None:
            release()
            for chunk in chunks:
                await chunk.reject(requeue=requeue)

        first = transfer.first
        headers = dict(first.headers)
        body: bytes | bytearray | memoryview = transfer.buffer
        if failed is not None:
            headers[TRANSFER_ERROR], headers[TRANSFER_ERROR_REASON] = failed
            body = b""
        return Delivery(
            body=body,
            message_id=first.message_id,
            type=first.type,
            correlation_id=first.correlation_id,
            reply_to=first.reply_to,
            headers=headers,
            redelivered=any(chunk.redelivered for chunk in chunks),
            exchange=first.exchange,
            routing_key=first.routing_key,
            _ack=ack,
            _reject=reject,
        )

    def _refuse(
        self, delivery: Delivery, transfer_id: str, code: str, reason: str, now: float
    ) -> Delivery:
        """Hand up one chunk of a refused transfer as a failure; drop the others."""
        logger.warning(
            "refusing transfer %s (message %s, correlation %s): %s",
            transfer_id, delivery.message_id, delivery.correlation_id, reason,
        )  # fmt: skip
        self._refused[transfer_id] = now
        headers = dict(delivery.headers)
        headers[TRANSFER_ERROR], headers[TRANSFER_ERROR_REASON] = code, reason
        delivery.headers = headers
        delivery.body = b""
        return delivery

    async def _fail(
        self, transfer: _Transfer, delivery: Delivery, code: str, reason: str, now: float
    ) -> Delivery:
        """Give up on a transfer whose chunks contradict each other."""
        self._forget(transfer)
        self.reserved -= transfer.header.count - 1
        for chunk in transfer.deliveries():
            await chunk.ack()
        return self._refuse(delivery, transfer.header.transfer_id, code, reason, now)

    @property
    def busy(self) -> bool:
        """True while a transfer is being reassembled or a refused one is remembered."""
        return bool(self._transfers or self._refused or self.reserved)

    def next_eviction(self) -> float | None:
        """The monotonic time the next idle transfer is due to be abandoned, if any."""
        if not self._transfers and not self._refused:
            return None
        idle = self.chunking.idle_timeout
        times = [t.last_chunk_at + idle for t in self._transfers.values()]
        if self._refused:
            times.append(min(self._refused.values()) + idle)
        return min(times, default=None)

    async def evict_idle(self) -> None:
        """Drop (ack) the chunks of every transfer idle for longer than the idle timeout."""
        now = self._clock()
        idle = self.chunking.idle_timeout
        self._refused = {tid: at for tid, at in self._refused.items() if now - at < idle}
        for transfer in [t for t in self._transfers.values() if now - t.last_chunk_at >= idle]:
            header = transfer.header
            logger.warning(
                "abandoning transfer %s (message %s, correlation %s): %d of %d chunks, %d of "
                "%d bytes, nothing for %.1f s; its chunks are dropped",
                header.transfer_id, transfer.first.message_id, transfer.first.correlation_id,
                transfer.received, header.count, transfer.received_bytes, header.size,
                now - transfer.last_chunk_at,
            )  # fmt: skip
            self._forget(transfer)
            self.reserved -= header.count - 1
            self._refused[header.transfer_id] = now
            for chunk in transfer.deliveries():
                await chunk.ack()


class ReassembledStream:
    """The deliveries of one consumer, with chunked transfers put back together.

    It reads raw deliveries from ``raw``, feeds them to a :class:`Reassembler`, abandons idle
    transfers while waiting, and asks ``set_prefetch`` for the prefetch the transfers in
    progress need (``prefetch`` plus :attr:`Reassembler.reserved`).

    Args:
        raw: the consumer's deliveries as the broker sends them.
        reassembler: the reassembly state of this consumer.
        prefetch: the prefetch the consumer asked for.
        set_prefetch: changes the prefetch of the live consumer; False when it could not
            (the connection is being restored), to be tried again on the next delivery.
    """

    def __init__(
        self,
        raw: Inbox[Delivery],
        reassembler: Reassembler,
        prefetch: int,
        set_prefetch: Callable[[int], Awaitable[bool]],
    ) -> None:
        self._raw = raw
        self.reassembler = reassembler
        self._base = prefetch
        self.prefetch = prefetch
        """The prefetch the consumer currently runs with."""
        self._set_prefetch = set_prefetch

    def __aiter__(self) -> AsyncIterator[Delivery]:
        return self

    async def __anext__(self) -> Delivery:
        reassembler = self.reassembler
        if self.prefetch == self._base and not reassembler.busy:
            # The common case, no chunked transfer in sight: the next delivery as it is.
            try:
                first = await self._raw.receive()
            except anyio.EndOfStream:
                raise StopAsyncIteration from None
            if TRANSFER_ID not in first.headers:
                return first
            whole = await reassembler.feed(first)
            if whole is not None:
                await self._adjust_prefetch()
                return whole
        while True:
            await self._adjust_prefetch()
            due = reassembler.next_eviction()
            if due is not None and due <= time.monotonic():
                await reassembler.evict_idle()
                continue
            delivery: Delivery | None = None
            try:
                if due is None:
                    delivery = await self._raw.receive()
                else:
                    with anyio.move_on_after(due - time.monotonic()):
                        delivery = await self._raw.receive()
            except anyio.EndOfStream:
                raise StopAsyncIteration from None
            if delivery is None:
                continue
            whole = await reassembler.feed(delivery)
            if whole is not None:
                await self._adjust_prefetch()
                return whole

    def receive_nowait(self) -> Delivery:
        """A raw delivery already received and not yet handed up (to give it back at shutdown).

        Raises:
            anyio.WouldBlock: there is none.
        """
        return self._raw.receive_nowait()

    async def _adjust_prefetch(self) -> None:
        if self.prefetch == self._base and not self.reassembler.reserved:
            return  # the common case: no chunked message in sight
        needed = self._base + self.reassembler.reserved
        if needed > self.prefetch:
            # Raised with headroom, so a burst of transfers does not re-consume for each one.
            target = min(max(needed, self.prefetch + self._base), MAX_PREFETCH)
        elif self.reassembler.reserved == 0 and self.prefetch != self._base:
            target = self._base
        else:
            return
        if target != self.prefetch and await self._set_prefetch(target):
            logger.debug("prefetch %d -> %d", self.prefetch, target)
            self.prefetch = target
