"""MemoryTransport: the Transport protocol over in-process queues.

A :class:`MemoryBroker` plays RabbitMQ inside one process: direct and fanout exchanges, the
default exchange, durable queues, prefetch, acks, redelivery of unsettled messages when a
consumer goes away, per-message expiration and dead-lettering. Several parties share one broker,
each through its own :class:`MemoryTransport`. It runs simulations and fast unit tests; nothing
here is persisted.
"""

from __future__ import annotations

import itertools
import math
import time
from collections import deque
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, replace
from typing import Any, Self

import anyio

from broker_net.chunking import Chunking, publish_chunked
from broker_net.errors import ConnectionLostError, PublishError, TransportError, UnroutableError
from broker_net.inbox import Inbox
from broker_net.reassembly import ReassembledStream, Reassembler
from broker_net.topology import ExchangeKind, ExchangeSpec, QueueSpec
from broker_net.transport import Delivery, OutgoingMessage, ProgressCallback


@dataclass(slots=True)
class _Stored:
    message: OutgoingMessage
    exchange: str
    routing_key: str
    expires_at: float | None
    redelivered: bool = False


@dataclass(eq=False, slots=True)
class _Consumer:
    queue: _Queue
    prefetch: int
    inbox: Inbox[Delivery]
    outstanding: dict[int, tuple[_Stored, Delivery]] = field(default_factory=dict)

    @property
    def has_room(self) -> bool:
        return len(self.outstanding) < self.prefetch


@dataclass(eq=False)
class _Queue:
    spec: QueueSpec
    broker: MemoryBroker
    ready: deque[_Stored] = field(default_factory=deque)
    consumers: list[_Consumer] = field(default_factory=list)
    _turn: int = 0

    def put(self, stored: _Stored) -> None:
        limit = self.spec.arguments.get("x-max-length")
        overflow = self.spec.arguments.get("x-overflow", "drop-head")
        if limit is not None and len(self.ready) >= limit and overflow != "drop-head":
            if overflow == "reject-publish-dlx":
                self.broker.dead_letter(self, stored, "maxlen")
            raise PublishError(f"queue {self.spec.name!r} is full ({limit} messages)")
        self.ready.append(stored)
        while limit is not None and len(self.ready) > limit:
            self.broker.dead_letter(self, self.ready.popleft(), "maxlen")
        self.dispatch()

    def dispatch(self) -> None:
        while self.ready:
            consumer = self._next_consumer()
            if consumer is None:
                return
            stored = self.ready.popleft()
            if stored.expires_at is not None and stored.expires_at <= time.monotonic():
                self.broker.dead_letter(self, stored, "expired")
                continue
            self._deliver(consumer, stored)

    def _next_consumer(self) -> _Consumer | None:
        for _ in range(len(self.consumers)):
            self._turn = (self._turn + 1) % len(self.consumers)
            candidate = self.consumers[self._turn]
            if candidate.has_room:
                return candidate
        return None

    def _deliver(self, consumer: _Consumer, stored: _Stored) -> None:
        tag = next(self.broker.tags)
        message = stored.message

        async def ack() -> None:
            self._settle(consumer, tag)

        async def reject(requeue: bool) -> None:
            entry = self._settle(consumer, tag)
            if entry is None:
                return
            if requeue:
                entry.redelivered = True
                self.ready.appendleft(entry)
                self.dispatch()
            else:
                self.broker.dead_letter(self, entry, "rejected")

        delivery = Delivery(
            body=message.body_bytes(),
            message_id=message.message_id,
            type=message.type,
            correlation_id=message.correlation_id,
            reply_to=message.reply_to,
            headers=dict(message.headers),
            redelivered=stored.redelivered,
            exchange=stored.exchange,
            routing_key=stored.routing_key,
            _ack=ack,
            _reject=reject,
        )
        consumer.outstanding[tag] = (stored, delivery)
        consumer.inbox.put_nowait(delivery)

    def _settle(self, consumer: _Consumer, tag: int) -> _Stored | None:
        entry = consumer.outstanding.pop(tag, None)
        self.dispatch()
        return entry[0] if entry else None

    def remove_consumer(self, consumer: _Consumer) -> None:
        self.consumers.remove(consumer)
        consumer.inbox.close()
        unsettled = list(consumer.outstanding.values())
        consumer.outstanding.clear()
        for stored, delivery in reversed(unsettled):
            delivery.settled = True
            stored.redelivered = True
            self.ready.appendleft(stored)
        if self.spec.auto_delete and not self.consumers:
            self.broker.delete_queue(self.spec.name)
        else:
            self.dispatch()


class MemoryBroker:
    """An in-process stand-in for RabbitMQ shared by several :class:`MemoryTransport`."""

    def __init__(self) -> None:
        self.exchanges: dict[str, tuple[ExchangeKind, list[tuple[str, str]]]] = {}
        self.queues: dict[str, _Queue] = {}
        self.tags = itertools.count(1)
        self._next_expiry = math.inf
        """No message expires before this time: :meth:`expire` looks at no queue until then."""

    def declare_exchange(self, spec: ExchangeSpec) -> None:
        self.exchanges.setdefault(spec.name, (spec.kind, []))

    def declare_queue(self, spec: QueueSpec) -> None:
        if spec.name not in self.queues:
            self.queues[spec.name] = _Queue(spec, self)
        for exchange, key in spec.bindings:
            if exchange not in self.exchanges:
                raise PublishError(f"cannot bind to unknown exchange {exchange!r}")
            bindings = self.exchanges[exchange][1]
            if (spec.name, key) not in bindings:
                bindings.append((spec.name, key))

    def delete_queue(self, name: str) -> None:
        self.queues.pop(name, None)
        for _, bindings in self.exchanges.values():
            bindings[:] = [(queue, key) for queue, key in bindings if queue != name]

    def route(self, exchange: str, routing_key: str) -> list[_Queue]:
        if exchange == "":
            queue = self.queues.get(routing_key)
            return [queue] if queue else []
        if exchange not in self.exchanges:
            raise PublishError(f"no exchange {exchange!r}")
        kind, bindings = self.exchanges[exchange]
        names = [q for q, key in bindings if kind == "fanout" or key == routing_key]
        return [self.queues[name] for name in dict.fromkeys(names) if name in self.queues]

    def publish(
        self, exchange: str, routing_key: str, message: OutgoingMessage, mandatory: bool
    ) -> None:
        queues = self.route(exchange, routing_key)
        if not queues:
            if mandatory:
                raise UnroutableError(exchange, routing_key)
            return
        refused: PublishError | None = None
        for queue in queues:
            ttl = _expiration(message, queue.spec.arguments)
            if ttl is not None and ttl < self._next_expiry:
                self._next_expiry = ttl
            try:
                queue.put(_Stored(message, exchange, routing_key, ttl))
            except PublishError as exc:  # the other queues still take the message
                refused = exc
        if refused is not None:
            raise refused

    def expire(self) -> None:
        """Dead-letter the expired messages waiting in every queue.

        RabbitMQ does this on a timer; here it happens whenever a transport uses the broker, so
        a message sent to a node that never consumes still reaches the dead-letter queue.
        """
        now = time.monotonic()
        if now < self._next_expiry:
            return
        self._next_expiry = math.inf
        for queue in list(self.queues.values()):
            expired = [s for s in queue.ready if s.expires_at is not None and s.expires_at <= now]
            if expired:
                gone = {id(stored) for stored in expired}
                queue.ready = deque(s for s in queue.ready if id(s) not in gone)
                for stored in expired:
                    self.dead_letter(queue, stored, "expired")
            # Held messages count too: a consumer that goes away gives them back.
            held = (stored for c in queue.consumers for stored, _ in c.outstanding.values())
            for stored in itertools.chain(queue.ready, held):
                if stored.expires_at is not None and stored.expires_at < self._next_expiry:
                    self._next_expiry = stored.expires_at

    def dead_letter(self, queue: _Queue, stored: _Stored, reason: str) -> None:
        exchange = queue.spec.arguments.get("x-dead-letter-exchange")
        if exchange is None or exchange not in self.exchanges:
            return
        death = {"queue": queue.spec.name, "reason": reason, "count": 1}
        headers = dict(stored.message.headers)
        headers["x-death"] = [death, *headers.get("x-death", [])]
        message = replace(stored.message, headers=headers, expiration=None)
        self.publish(exchange, stored.routing_key, message, mandatory=False)


def _expiration(message: OutgoingMessage, arguments: dict[str, Any]) -> float | None:
    ttls = [message.expiration] if message.expiration is not None else []
    if "x-message-ttl" in arguments:
        ttls.append(arguments["x-message-ttl"] / 1000)
    return time.monotonic() + min(ttls) if ttls else None


class MemoryTransport:
    """One party's connection to a :class:`MemoryBroker`.

    Args:
        broker: the broker shared with the other parties.
        chunking: when bodies are split into chunks, and the limits on reassembling them;
            the same as on RabbitMQ, so simulations and tests exercise the same path.
    """

    publish_timeout = 30.0
    """As on RabbitMQ; a publish here is routed at once and never comes near it."""

    def __init__(self, broker: MemoryBroker, *, chunking: Chunking | None = None) -> None:
        self.broker = broker
        self.chunking = chunking or Chunking()
        self._consumers: set[_Consumer] = set()
        self._open = False

    async def __aenter__(self) -> Self:
        self._open = True
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self._open = False
        for consumer in list(self._consumers):
            self._cancel(consumer)

    def _check_open(self) -> None:
        if not self._open:
            raise ConnectionLostError("the memory transport is closed")

    async def declare(self, *specs: ExchangeSpec | QueueSpec) -> None:
        """Declare exchanges and queues."""
        self._check_open()
        self.broker.expire()
        for spec in specs:
            if isinstance(spec, ExchangeSpec):
                self.broker.declare_exchange(spec)
            else:
                self.broker.declare_queue(spec)
        await anyio.lowlevel.checkpoint()

    async def publish(
        self,
        exchange: str,
        routing_key: str,
        message: OutgoingMessage,
        *,
        mandatory: bool = False,
    ) -> None:
        """Route ``message`` to its queues at once (as chunks above the chunk size)."""
        await publish_chunked(
            lambda part: self._publish_one(exchange, routing_key, part, mandatory),
            message,
            self.chunking,
        )

    async def publish_many(
        self,
        exchange: str,
        messages: Sequence[tuple[str, OutgoingMessage]],
        *,
        mandatory: bool = False,
    ) -> list[TransportError | None]:
        """Publish each ``(routing_key, message)`` in turn; one outcome per message."""
        errors: list[TransportError | None] = []
        for routing_key, message in messages:
            try:
                await self.publish(exchange, routing_key, message, mandatory=mandatory)
            except TransportError as exc:
                errors.append(exc)
            else:
                errors.append(None)
        return errors

    async def _publish_one(
        self, exchange: str, routing_key: str, message: OutgoingMessage, mandatory: bool
    ) -> None:
        # publish_chunked hands every message over with a body of bytes.
        self._check_open()
        self.broker.expire()
        self.broker.publish(exchange, routing_key, message, mandatory)
        await anyio.lowlevel.checkpoint()

    @asynccontextmanager
    async def consume(
        self,
        queue: QueueSpec,
        *,
        prefetch: int = 16,
        on_progress: ProgressCallback | None = None,
    ) -> AsyncIterator[AsyncIterator[Delivery]]:
        """Declare and consume ``queue``, reassembling chunked messages; unsettled deliveries
        are requeued when the block exits."""
        self._check_open()
        self.broker.expire()
        self.broker.declare_queue(queue)
        # Unbounded: the consumer's prefetch, which chunked transfers raise, bounds it.
        inbox = Inbox[Delivery]()
        target = self.broker.queues[queue.name]
        consumer = _Consumer(target, prefetch, inbox)
        target.consumers.append(consumer)
        self._consumers.add(consumer)
        target.dispatch()

        async def set_prefetch(count: int) -> bool:
            consumer.prefetch = count
            target.dispatch()
            await anyio.lowlevel.checkpoint()
            return True

        reassembler = Reassembler(self.chunking, on_progress=on_progress)
        try:
            yield ReassembledStream(inbox, reassembler, prefetch, set_prefetch)
        finally:
            inbox.close()
            self._cancel(consumer)

    def _cancel(self, consumer: _Consumer) -> None:
        if consumer in self._consumers:
            self._consumers.discard(consumer)
            consumer.queue.remove_consumer(consumer)

    async def consumer_count(self, queue: str) -> int | None:
        """Number of consumers on ``queue``, or None when it does not exist."""
        self._check_open()
        self.broker.expire()
        target = self.broker.queues.get(queue)
        return None if target is None else len(target.consumers)

    def drop(self) -> None:
        """Simulate a lost connection: every consumer goes away, unsettled work is requeued."""
        for consumer in list(self._consumers):
            self._cancel(consumer)
