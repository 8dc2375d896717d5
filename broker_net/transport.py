"""The Transport protocol both sides speak through, and the messages it carries.

Two implementations: :class:`broker_net.amqp.AmqpTransport` (RabbitMQ through aio-pika) and
:class:`broker_net.memory.MemoryTransport` (in-process, for simulation and fast tests).
A transport is an async context manager; leaving it closes every consumer and the connection.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, Self, TypeAlias

from broker_net.topology import ExchangeSpec, QueueSpec

if TYPE_CHECKING:
    from broker_net.errors import TransportError


Body: TypeAlias = bytes | tuple[bytes | memoryview, ...]
"""A message body: bytes, or the buffers that make it up, in order (see
:attr:`OutgoingMessage.body`)."""


@dataclass(frozen=True, slots=True)
class OutgoingMessage:
    """A message to publish: the envelope bytes and the AMQP properties around them."""

    body: Body
    """The envelope: bytes, or the buffers that make it up (as :func:`seal_parts` returns
    them). A transport cuts chunks straight from the buffers, so a large envelope is never
    joined into one object: that would cost a copy and its size in memory."""
    message_id: str
    type: str
    correlation_id: str | None = None
    reply_to: str | None = None
    headers: dict[str, Any] = field(default_factory=dict)
    expiration: float | None = None
    """Seconds after which an unconsumed message is dead-lettered instead of delivered."""
    persistent: bool = True

    @property
    def size(self) -> int:
        """The body's length in bytes."""
        return body_size(self.body)

    def body_bytes(self) -> bytes:
        """The body as one bytes object (joined if it is in parts)."""
        return joined_body(self.body)


def body_size(body: Body) -> int:
    """The length in bytes of ``body``, whole or in parts."""
    if isinstance(body, bytes):
        return len(body)
    return sum(memoryview(part).nbytes for part in body)


def joined_body(body: Body) -> bytes:
    """``body`` as one bytes object (joined if it is in parts)."""
    return body if isinstance(body, bytes) else b"".join(body)


@dataclass(slots=True, eq=False)
class Delivery:
    """A message received from a queue. Settle it exactly once with :meth:`ack` or
    :meth:`reject`; an unsettled delivery is redelivered when its consumer goes away.

    Settling a delivery whose consumer or connection is already gone does nothing: the broker
    has taken the message back and delivers it again, with ``redelivered`` set.

    A message that arrived in chunks has a ``memoryview`` of the buffer it was reassembled
    into as its body, handed over without a copy.
    """

    body: bytes | bytearray | memoryview
    message_id: str | None
    type: str | None
    correlation_id: str | None
    reply_to: str | None
    headers: dict[str, Any]
    redelivered: bool
    exchange: str
    routing_key: str
    _ack: Callable[[], Awaitable[None]]
    _reject: Callable[[bool], Awaitable[None]]
    settled: bool = False

    async def ack(self) -> None:
        """Tell the broker the message is handled; it is removed from the queue."""
        if not self.settled:
            self.settled = True
            await self._ack()

    async def reject(self, *, requeue: bool = False) -> None:
        """Give the message back (``requeue``) or dead-letter it."""
        if not self.settled:
            self.settled = True
            await self._reject(requeue)


@dataclass(frozen=True, slots=True)
class TransferProgress:
    """A chunk of a transfer arrived: who is sending what, and how far it is.

    Attributes:
        transfer_id: the transfer's ``x-transfer-id``.
        message_id: the AMQP message id every chunk carries.
        correlation_id: the request id every chunk carries.
        headers: the AMQP headers of the chunk (the sender's, plus the chunk headers).
        received: bytes received so far.
        size: bytes announced.
    """

    transfer_id: str
    message_id: str | None
    correlation_id: str | None
    headers: dict[str, Any]
    received: int
    size: int


ProgressCallback = Callable[[TransferProgress], None]
"""What a consumer calls with each chunk of a transfer (see :mod:`broker_net.chunking`)."""


class Transport(Protocol):
    """What broker-net needs from a message broker."""

    publish_timeout: float
    """Seconds a :meth:`publish` may wait for the broker before it raises
    :class:`~broker_net.errors.ConnectionLostError`."""

    async def __aenter__(self) -> Self: ...

    async def __aexit__(self, *exc_info: object) -> None: ...

    async def declare(self, *specs: ExchangeSpec | QueueSpec) -> None:
        """Declare exchanges and queues (with their bindings), idempotently."""
        ...

    async def publish(
        self,
        exchange: str,
        routing_key: str,
        message: OutgoingMessage,
        *,
        mandatory: bool = False,
    ) -> None:
        """Publish and wait until the broker has taken responsibility for the message; a
        body above the transport's chunk size goes as a stream of chunks.

        Raises:
            UnroutableError: ``mandatory`` is set and no queue is bound for ``routing_key``.
            PublishError: the broker refused the message.
            ConnectionLostError: the broker stayed unreachable past the publish deadline.
        """
        ...

    async def publish_many(
        self,
        exchange: str,
        messages: Sequence[tuple[str, OutgoingMessage]],
        *,
        mandatory: bool = False,
    ) -> list[TransportError | None]:
        """Publish ``(routing_key, message)`` pairs together and wait for every confirm.

        Returns one outcome per message, in order: ``None`` once the broker has the message,
        or the error :meth:`publish` would have raised for it. One failure does not stop the
        others.
        """
        ...

    def consume(
        self,
        queue: QueueSpec,
        *,
        prefetch: int = 16,
        on_progress: ProgressCallback | None = None,
    ) -> AbstractAsyncContextManager[AsyncIterator[Delivery]]:
        """Declare and consume ``queue``:
        ``async with t.consume(q) as deliveries: async for d in deliveries: ...``.

        At most ``prefetch`` deliveries are unsettled at once; a message that arrived in chunks
        counts as one (see :mod:`broker_net.chunking`) and ``on_progress`` hears of each chunk.
        Leaving the block cancels the consumer; unsettled deliveries go back to the queue.
        """
        ...

    async def consumer_count(self, queue: str) -> int | None:
        """Number of consumers on ``queue``, or ``None`` if the queue does not exist."""
        ...
