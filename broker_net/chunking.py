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
``x-transfer-size``
    the size of the whole body;
``x-transfer-hash``
    on every chunk (since protocol 1.2): the hash of ``x-transfer-digest``, ``xxh3-128`` by
    default (see :mod:`broker_net.transfer_digest`);
``x-transfer-digest``
    on the last chunk only: the digest (hex) of the whole body.

Senders of protocol 1.0 and 1.1 send no ``x-transfer-hash`` and ``x-transfer-sha256`` instead
of ``x-transfer-digest`` (1.0 on every chunk, 1.1 on the last); a receiver takes both forms, and
a sender set to ``Chunking(transfer_hash="sha256")`` writes the 1.1 form for older receivers.

The sender hashes each chunk as it cuts it (in a worker thread, while the chunks before it are
on their way), so the digest is ready when the last chunk goes and hashing overlaps the network
instead of preceding it. The receiving side (:class:`~broker_net.reassembly.Reassembler`)
preallocates one buffer of the announced size and copies each chunk into place (in a worker
thread, hashing it on the way), so the whole body is one buffer handed up as is, a
``memoryview``, with no further copy. It refuses a transfer above :attr:`Chunking.max_size` and
any transfer that would take the bytes being reassembled at once above
:attr:`Chunking.memory_limit`, checks the digest of the whole against the last chunk's, and
drops the chunks of a transfer that has seen no chunk for :attr:`Chunking.idle_timeout` seconds,
with a log line. A refused or corrupted transfer is still handed up once, with an empty body and
the ``x-transfer-error`` header, so the consumer can answer the sender (see :func:`failure`).

At-least-once: chunk deliveries stay unacknowledged until the whole message is settled, and
settling the whole settles every chunk. A consumer that dies mid-transfer therefore loses
nothing: the broker redelivers every chunk to the next one. Holding all the chunks of a
256-chunk transfer needs more than a small prefetch allows, so the consumer's prefetch is raised
by the chunks of every transfer in progress or unsettled (see
:attr:`~broker_net.reassembly.Reassembler.reserved`) and lowered again once they are settled;
each transport knows how to change its prefetch on a live consumer. The bodies of held chunks
are released as soon as they are copied, so holding them costs no memory.
"""

from __future__ import annotations

import logging
import math
import uuid
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, replace
from typing import Any

import anyio

from broker_net.transfer_digest import (
    ALGORITHMS,
    HASH_IN_THREAD,
    SHA256,
    XXH3_128,
    Hasher,
    new_hasher,
)
from broker_net.transport import Delivery, OutgoingMessage

logger = logging.getLogger(__name__)

TRANSFER_ID = "x-transfer-id"
CHUNK_INDEX = "x-chunk-index"
CHUNK_COUNT = "x-chunk-count"
CHUNK_SIZE = "x-chunk-size"
TRANSFER_SIZE = "x-transfer-size"
TRANSFER_HASH = "x-transfer-hash"
TRANSFER_DIGEST = "x-transfer-digest"
TRANSFER_SHA256 = "x-transfer-sha256"
"""The digest header of senders of protocol 1.0 and 1.1 (always SHA-256)."""
TRANSFER_ERROR = "x-transfer-error"
"""Header of a refused or corrupted transfer handed up with an empty body: an ErrorCode name."""
TRANSFER_ERROR_REASON = "x-transfer-error-reason"
"""Header giving the human-readable reason next to :data:`TRANSFER_ERROR`."""

MAX_PREFETCH = 65_535
"""The largest prefetch count AMQP can express."""


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
        transfer_hash: the hash a sender puts on its transfers: ``xxh3-128``, or ``sha256``
            in the headers of protocol 1.1 for receivers older than 1.2.
    """

    chunk_size: int = 4 * 1024**2
    max_size: int = 4 * 1024**3
    memory_limit: int = 8 * 1024**3
    idle_timeout: float = 60.0
    publish_window: int = 8
    transfer_hash: str = XXH3_128

    def __post_init__(self) -> None:
        if self.chunk_size < 1 or self.max_size < 1 or self.memory_limit < 1:
            raise ValueError("chunk_size, max_size and memory_limit must be positive")
        if self.idle_timeout <= 0 or self.publish_window < 1:
            raise ValueError("idle_timeout and publish_window must be positive")
        if self.transfer_hash not in ALGORITHMS:
            raise ValueError(f"transfer_hash must be one of {', '.join(ALGORITHMS)}")


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
    once. Each chunk is hashed as it is cut, while the chunks before it are being published,
    and the digest of the whole goes with the last chunk. The first failure stops the transfer
    and is raised; the receiver abandons the chunks already sent.
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
    }
    digest_header = TRANSFER_SHA256  # the form of protocol 1.1, for older receivers
    if chunking.transfer_hash != SHA256:
        headers[TRANSFER_HASH] = chunking.transfer_hash
        digest_header = TRANSFER_DIGEST
    hasher = new_hasher(chunking.transfer_hash)
    window = anyio.Semaphore(chunking.publish_window)

    async def send(body: bytes, chunk_headers: dict[str, Any]) -> None:
        try:
            await publish(replace(message, body=body, headers=chunk_headers))
        finally:
            window.release()

    async with anyio.create_task_group() as group:
        for index, pieces in enumerate(_cut(parts, chunk_size)):
            # The next chunk is joined and hashed while the window is full, then the window is
            # taken, in index order, so chunks reach the broker in order, and at most a window
            # of chunk copies (and the one being prepared) exists at once.
            body = await _join_hashing(pieces, hasher)
            await window.acquire()
            chunk_headers = {**headers, CHUNK_INDEX: index}
            if index == count - 1:
                chunk_headers[digest_header] = hasher.hexdigest()
            group.start_soon(send, body, chunk_headers)


def _cut(parts: list[bytes | memoryview], chunk_size: int) -> Iterator[list[memoryview]]:
    """The pieces of consecutive chunks of ``chunk_size`` bytes (the last one shorter) across
    ``parts``: views into them, not copies."""
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
                yield pending
                pending, pending_size = [], 0
    if pending_size:
        yield pending


async def _join_hashing(pieces: list[memoryview], hasher: Hasher) -> bytes:
    """The pieces joined into one chunk, fed to ``hasher`` on the way."""

    def join() -> bytes:
        body = b"".join(pieces)
        hasher.update(body)
        return body

    if sum(piece.nbytes for piece in pieces) < HASH_IN_THREAD:
        return join()
    # bytes.join and the hashes release the GIL on large inputs: the event loop keeps
    # publishing the chunks before this one meanwhile.
    return await anyio.to_thread.run_sync(join)


# --- reading chunk headers ----------------------------------------------------------------------


def _optional_str(value: Any) -> str | None:
    return None if value is None else str(value)


@dataclass(frozen=True, slots=True)
class ChunkHeader:
    """The chunk headers of one chunk, checked for sense."""

    transfer_id: str
    index: int
    count: int
    chunk_size: int
    size: int
    algorithm: str
    """The transfer's hash (``x-transfer-hash``; ``sha256`` when a sender older than 1.2
    names none)."""
    digest: str | None
    """The digest of the whole body: always on the last chunk, on the others only from senders
    of protocol 1.0 (which put it on every chunk)."""

    @classmethod
    def parse(cls, headers: dict[str, Any]) -> ChunkHeader:
        """Read a chunk's headers.

        Raises:
            ValueError: a header is missing or the numbers make no sense together.
        """
        try:
            parsed = cls(
                transfer_id=str(headers[TRANSFER_ID]),
                index=int(headers[CHUNK_INDEX]),
                count=int(headers[CHUNK_COUNT]),
                chunk_size=int(headers[CHUNK_SIZE]),
                size=int(headers[TRANSFER_SIZE]),
                algorithm=str(headers.get(TRANSFER_HASH, SHA256)),
                digest=_optional_str(headers.get(TRANSFER_DIGEST, headers.get(TRANSFER_SHA256))),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"bad chunk headers: {exc!r}") from exc
        if parsed.count < 1 or parsed.chunk_size < 1 or not 0 <= parsed.index < parsed.count:
            raise ValueError(f"chunk {parsed.index} of {parsed.count} makes no sense")
        if parsed.count != math.ceil(parsed.size / parsed.chunk_size):
            raise ValueError(
                f"{parsed.size} bytes in chunks of {parsed.chunk_size} is not {parsed.count} chunks"
            )
        if parsed.algorithm not in ALGORITHMS:
            raise ValueError(f"unknown {TRANSFER_HASH} {parsed.algorithm!r}")
        if parsed.digest is None and parsed.index == parsed.count - 1:
            wanted = TRANSFER_SHA256 if TRANSFER_HASH not in headers else TRANSFER_DIGEST
            raise ValueError(f"the last chunk has no {wanted} header")
        return parsed

    def span(self) -> tuple[int, int]:
        """The chunk's first and past-the-end byte offsets in the whole body."""
        start = self.index * self.chunk_size
        return start, min(start + self.chunk_size, self.size)

    def same_transfer(self, other: ChunkHeader) -> bool:
        """Whether ``other`` describes the same whole body (digests compared when both have
        one)."""
        if None not in (self.digest, other.digest) and self.digest != other.digest:
            return False
        return (self.count, self.chunk_size, self.size, self.algorithm) == (
            other.count, other.chunk_size, other.size, other.algorithm,
        )  # fmt: skip
