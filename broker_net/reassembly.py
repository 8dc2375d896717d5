"""Reassembly: chunk deliveries put back together into whole deliveries, with limits.

The receiving side of :mod:`broker_net.chunking`. :class:`Reassembler` preallocates a buffer
of the announced size, copies each chunk into place (in a worker thread, hashing it on the
way), refuses transfers over the size and memory limits, checks the digest of the whole against
the last chunk's and drops idle transfers. :class:`ReassembledStream` is what a transport's
``consume`` yields: whole deliveries, its consumer's prefetch raised while chunks are held.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import replace
from typing import Any

import anyio
import numpy as np

from broker_net.chunking import (
    MAX_PREFETCH,
    TRANSFER_ERROR,
    TRANSFER_ERROR_REASON,
    TRANSFER_ID,
    ChunkHeader,
    Chunking,
)
from broker_net.inbox import Inbox
from broker_net.transfer_digest import HASH_IN_THREAD, digest_of, new_hasher
from broker_net.transport import Delivery, ProgressCallback, TransferProgress

logger = logging.getLogger(__name__)


class _Transfer:
    """One transfer being reassembled."""

    def __init__(self, header: ChunkHeader, first: Delivery, now: float) -> None:
        self.header = header
        self.digest_wanted = header.digest
        """The announced digest of the whole, once a chunk carrying it has arrived."""
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
        self._hasher: Any = new_hasher(header.algorithm)
        self._hashed = 0
        """Chunks hashed so far, in order; when one arrives out of order the whole buffer is
        hashed at the end instead."""

    async def add(self, header: ChunkHeader, delivery: Delivery, now: float) -> None:
        start, end = header.span()
        body = delivery.body
        if len(body) != end - start:
            raise ValueError(f"chunk {header.index} holds {len(body)} bytes, not {end - start}")
        self.digest_wanted = header.digest or self.digest_wanted
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

        if end - start < HASH_IN_THREAD:
            copy()
            return
        # numpy and the hashes release the GIL: the event loop reads the next chunk meanwhile.
        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(copy)

    @property
    def complete(self) -> bool:
        return self.received == self.header.count

    async def digest(self) -> str:
        if self._hasher is not None and self._hashed == self.header.count:
            return str(self._hasher.hexdigest())
        with anyio.CancelScope(shield=True):
            digest = await digest_of(self.header.algorithm, [self.buffer], self.header.size)
        return digest

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
            header = ChunkHeader.parse(delivery.headers)
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
        elif not header.same_transfer(replace(transfer.header, digest=transfer.digest_wanted)):
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
        if digest != transfer.digest_wanted:
            algorithm = transfer.header.algorithm
            logger.warning(
                "transfer %s (message %s) is corrupted: %s %s, announced %s", header.transfer_id,
                transfer.first.message_id, algorithm, digest, transfer.digest_wanted,
            )  # fmt: skip
            return self._whole(
                transfer,
                failed=("TRANSFER_CORRUPTED", f"the message's {algorithm} digest is wrong"),
            )
        return self._whole(transfer)

    def _admission(self, header: ChunkHeader) -> tuple[str, str] | None:
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

    def _start(self, header: ChunkHeader, delivery: Delivery, now: float) -> _Transfer:
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

    Several tasks may read it at once (the node's workers each take their next delivery from
    it): each gets a different delivery; the reassembly state is only touched under a lock,
    never held while waiting for the broker, so a chunk any reader takes completes its
    transfer for whichever reader is waiting.

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
        self._lock = asyncio.Lock()

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
            whole = await self._feed(first)
            if whole is not None:
                return whole
        while True:
            async with self._lock:
                await self._adjust_prefetch()
                due = None if len(self._raw) else reassembler.next_eviction()  # behind: not idle
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
            whole = await self._feed(delivery)
            if whole is not None:
                return whole

    async def _feed(self, delivery: Delivery) -> Delivery | None:
        """Feed one delivery to the reassembler, under the lock; the whole delivery, if any."""
        async with self._lock:
            whole = await self.reassembler.feed(delivery)
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
