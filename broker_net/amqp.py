"""AmqpTransport: the Transport protocol on RabbitMQ through aio-pika.

It keeps one robust connection, one publishing channel with publisher confirms, one channel
per consumer (so each consumer has its own prefetch) and one channel for queue checks. Bodies
above the chunk size are published as chunks and reassembled by the consumer (see
:mod:`broker_net.chunking`); while a consumer holds the chunks of a transfer its prefetch is
raised by starting a new consumer on the same channel with the higher prefetch (RabbitMQ applies
a new prefetch to new consumers only) and cancelling the old one, whose unacknowledged
deliveries stay valid on the channel. Publishing waits for the broker's confirm;
when the connection drops, aio-pika reconnects, re-declares what was declared and restarts the
consumers, and a publish caught by the drop is retried until its deadline. Given several
broker URLs (a cluster), the connection moves to the next node when its node goes (see
:mod:`broker_net.failover`), and a publish the broker nacks is republished for a while, as
a queue's new leader is elected. Every aio-pika and aiormq error is translated into a
:mod:`broker_net.errors` class here; nothing else but :mod:`broker_net.failover` imports
aio-pika.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from functools import partial
from typing import Any, Self

import aio_pika
import aiormq
import anyio
from aio_pika.abc import (
    AbstractChannel,
    AbstractExchange,
    AbstractIncomingMessage,
    AbstractRobustConnection,
)

from broker_net.chunking import (
    Chunking,
    ReassembledStream,
    Reassembler,
    publish_chunked,
)
from broker_net.codec import CONTENT_TYPE
from broker_net.errors import (
    BrokerAccessError,
    ConnectionLostError,
    PublishError,
    TransportError,
    UnroutableError,
)
from broker_net.failover import broker_urls, connect_failover, redact
from broker_net.inbox import Inbox
from broker_net.topology import ExchangeSpec, QueueSpec
from broker_net.transport import Delivery, OutgoingMessage, ProgressCallback

logger = logging.getLogger(__name__)

_RETRYABLE = (
    aiormq.exceptions.ChannelInvalidStateError,
    aiormq.exceptions.ConnectionClosed,
    aiormq.exceptions.AMQPConnectionError,
    ConnectionError,
    RuntimeError,
)


def _translate(exc: BaseException) -> TransportError:
    if isinstance(
        exc, aiormq.exceptions.ChannelAccessRefused | aiormq.exceptions.ProbableAuthenticationError
    ):
        return BrokerAccessError(str(exc))
    if isinstance(exc, aiormq.exceptions.ConnectionClosed | ConnectionError):
        return ConnectionLostError(str(exc))
    return TransportError(f"{type(exc).__name__}: {exc}")


class AmqpTransport:
    """A connection to RabbitMQ.

    Args:
        url: AMQP URL, e.g. ``amqp://guest:guest@127.0.0.1:5672/``; ``amqps://`` for TLS. For
            a cluster, the nodes' URLs separated by commas (later ones may be just
            ``host:port``, see :func:`broker_net.failover.broker_urls`): the first that
            answers is used, and the next ones in turn whenever the connection drops.
        connection_name: shown in the RabbitMQ management UI's connection list.
        publish_timeout: seconds a publish may take, reconnections included.
        connect_timeout: seconds the first connection may take.
        chunking: when bodies are split into chunks, and the limits on reassembling them.
        nack_retry: seconds a publish the broker nacks is republished, with backoff, before
            :class:`PublishError`. Defaults to 10 s with several URLs: a cluster nacks
            publishes for about a second while a quorum queue elects a new leader. With one
            URL it defaults to 0: a single broker nacks only what it refuses for good (a full
            queue), and a republish would dead-letter the refusal again.

    Raises:
        ValueError: ``url`` is an empty or malformed list.
    """

    def __init__(
        self,
        url: str,
        *,
        connection_name: str = "broker-net",
        publish_timeout: float = 30.0,
        connect_timeout: float = 10.0,
        chunking: Chunking | None = None,
        nack_retry: float | None = None,
    ) -> None:
        self.url = url
        self.urls = broker_urls(url)
        self.nack_retry = nack_retry if nack_retry is not None else _default_nack_retry(self.urls)
        self.connection_name = connection_name
        self.publish_timeout = publish_timeout
        self.connect_timeout = connect_timeout
        self.chunking = chunking or Chunking()
        self._connection: AbstractRobustConnection | None = None
        self._channel: AbstractChannel | None = None
        self._check_channel: AbstractChannel | None = None
        self._check_lock = anyio.Lock()
        self._exchanges: dict[str, AbstractExchange] = {}
        self._renew_lock = anyio.Lock()
        self._retired: list[AbstractChannel] = []

    async def __aenter__(self) -> Self:
        try:
            with anyio.fail_after(self.connect_timeout):
                self._connection = await connect_failover(
                    self.urls,
                    timeout=self.connect_timeout / len(self.urls),
                    client_properties={"connection_name": self.connection_name},
                )
                self._channel = await self._connection.channel(
                    publisher_confirms=True, on_return_raises=True
                )
        except TimeoutError as exc:
            await self._close()
            raise ConnectionLostError(
                f"could not reach the broker at {redact(self.url)} within {self.connect_timeout} s"
            ) from exc
        except Exception as exc:
            await self._close()
            raise _translate(exc) from exc
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self._close()

    async def _close(self) -> None:
        connection, self._connection, self._channel = self._connection, None, None
        self._check_channel = None
        self._exchanges.clear()
        self._retired = []
        if connection is not None:
            with anyio.move_on_after(5, shield=True):
                await connection.close()

    @property
    def channel(self) -> AbstractChannel:
        if self._channel is None:
            raise ConnectionLostError("the transport is not connected")
        return self._channel

    async def declare(self, *specs: ExchangeSpec | QueueSpec) -> None:
        """Declare exchanges and queues with their bindings; robust channels redo it on
        reconnect.

        While the channel is being restored (after a dropped connection, or after the broker
        closed it for an earlier error) the declarations are retried until
        ``publish_timeout``.

        Raises:
            ConnectionLostError: the channel did not come back within ``publish_timeout``.
            TransportError: the broker refused a declaration (e.g. different arguments).
        """
        delay = 0.05
        try:
            with anyio.fail_after(self.publish_timeout):
                while True:
                    try:
                        await self._declare(specs)
                        return
                    except _RETRYABLE as exc:
                        if self._connection is None:
                            raise ConnectionLostError("the transport is closed") from exc
                        logger.info("declare interrupted (%s); retrying", type(exc).__name__)
                        await anyio.sleep(delay)
                        delay = min(delay * 2, 1.0)
        except TimeoutError as exc:
            raise ConnectionLostError(
                f"the broker channel did not recover within {self.publish_timeout} s"
            ) from exc
        except TransportError:
            raise
        except Exception as exc:
            raise _translate(exc) from exc

    async def _declare(self, specs: tuple[ExchangeSpec | QueueSpec, ...]) -> None:
        for spec in specs:
            if isinstance(spec, ExchangeSpec):
                self._exchanges[spec.name] = await self.channel.declare_exchange(
                    spec.name, aio_pika.ExchangeType(spec.kind), durable=spec.durable
                )
            else:
                queue = await self.channel.declare_queue(
                    spec.name,
                    durable=spec.durable,
                    auto_delete=spec.auto_delete,
                    arguments=spec.arguments,
                )
                for exchange, key in spec.bindings:
                    await queue.bind(exchange, key)

    async def _exchange(self, name: str) -> AbstractExchange:
        if name == "":
            return self.channel.default_exchange
        if name not in self._exchanges:
            self._exchanges[name] = await self.channel.get_exchange(name, ensure=False)
        return self._exchanges[name]

    async def publish(
        self,
        exchange: str,
        routing_key: str,
        message: OutgoingMessage,
        *,
        mandatory: bool = False,
    ) -> None:
        """Publish and wait for the broker's confirm, riding out reconnections (and nacks,
        for ``nack_retry`` seconds); a body above the chunk size goes as chunks, each confirmed.

        Raises:
            UnroutableError: ``mandatory`` is set and no queue takes the message.
            PublishError: the broker nacked the message, still after ``nack_retry`` seconds.
            ConnectionLostError: no confirm within ``publish_timeout``.
        """
        if message.size <= self.chunking.chunk_size:
            # _publish_one joins a body in parts; no copy of the message is needed.
            await self._publish_one(exchange, routing_key, message, mandatory=mandatory)
            return
        publish_one = partial(self._publish_one, exchange, routing_key, mandatory=mandatory)
        await publish_chunked(publish_one, message, self.chunking)

    async def publish_many(
        self,
        exchange: str,
        messages: Sequence[tuple[str, OutgoingMessage]],
        *,
        mandatory: bool = False,
    ) -> list[TransportError | None]:
        """Publish every ``(routing_key, message)`` at once and wait for all the confirms;
        one outcome per message: ``None``, or the error :meth:`publish` raises."""
        # Plain asyncio tasks, as aio-pika uses: an anyio task per message would cost more
        # than the publish itself when a request goes to hundreds of nodes.
        outcomes = await asyncio.gather(
            *(
                self.publish(exchange, key, message, mandatory=mandatory)
                for key, message in messages
            ),
            return_exceptions=True,
        )
        errors: list[TransportError | None] = []
        for outcome in outcomes:
            if isinstance(outcome, TransportError) or outcome is None:
                errors.append(outcome)
            else:
                raise outcome
        return errors

    async def _publish_one(
        self, exchange: str, routing_key: str, message: OutgoingMessage, *, mandatory: bool
    ) -> None:
        # The frame properties are built here, once: an aio_pika.Message would cost more than
        # the rest of a small publish (see docs/performance.md).
        body = message.body_bytes()
        properties = aiormq.spec.Basic.Properties(
            app_id="broker-net",
            content_type=CONTENT_TYPE,
            correlation_id=message.correlation_id,
            delivery_mode=2 if message.persistent else 1,
            expiration=(
                None if message.expiration is None else str(int(message.expiration * 1000))
            ),
            headers=message.headers,
            message_id=message.message_id,
            message_type=message.type,
            reply_to=message.reply_to,
        )
        delay = 0.05
        nacked_until: float | None = None
        try:
            # asyncio's own timeout: this transport runs on asyncio only, and it is half the
            # cost of an anyio cancel scope on a path taken once per message.
            async with asyncio.timeout(self.publish_timeout):
                while True:
                    used = self._channel
                    try:
                        underlay = await self.channel.get_underlay_channel()
                        await underlay.basic_publish(
                            body, exchange=exchange, routing_key=routing_key,
                            properties=properties, mandatory=mandatory,
                        )  # fmt: skip
                        return
                    except aiormq.exceptions.PublishError as exc:
                        raise UnroutableError(exchange, routing_key) from exc
                    except aiormq.exceptions.DeliveryError as exc:
                        # A nack: the message is not in the queue. On a cluster that is often
                        # a leader election; the same message id goes again, and receivers
                        # drop the duplicate if the first copy got in after all.
                        now = anyio.current_time()
                        if nacked_until is None:
                            nacked_until = now + self.nack_retry
                        if now >= nacked_until:
                            raise PublishError(
                                f"the broker refused a message for {exchange!r}/{routing_key!r}"
                            ) from exc
                        logger.info("publish to %s/%s nacked; republishing", exchange,
                                    routing_key)  # fmt: skip
                        await self._renew_channel(used)
                        await anyio.sleep(min(delay, nacked_until - now))
                        delay = min(delay * 2, 1.0)
                    except aiormq.exceptions.ChannelAccessRefused as exc:
                        raise BrokerAccessError(str(exc)) from exc
                    except aiormq.exceptions.ChannelNotFoundEntity as exc:
                        raise PublishError(f"no exchange {exchange!r}: {exc}") from exc
                    except _RETRYABLE as exc:
                        if self._connection is None:
                            raise ConnectionLostError("the transport is closed") from exc
                        logger.info(
                            "publish to %s/%s interrupted (%s); retrying",
                            exchange, routing_key, type(exc).__name__,
                        )  # fmt: skip
                        await anyio.sleep(delay)
                        delay = min(delay * 2, 1.0)
                    except aiormq.exceptions.AMQPError as exc:
                        raise _translate(exc) from exc
        except TimeoutError as exc:
            raise ConnectionLostError(
                f"no confirm from the broker within {self.publish_timeout} s"
            ) from exc

    async def _renew_channel(self, used: AbstractChannel | None) -> None:
        """Publish on a fresh channel from now on, in place of ``used``, which was nacked.

        RabbitMQ 3.10 keeps nacking every publish on a channel that first sent to a quorum
        queue while the queue had no leader, even once a new leader is elected; a new channel
        is confirmed at once. The channel before ``used`` is closed now (its publishes have
        long settled); ``used`` itself waits for the next renewal or the transport's end, so
        publishes still in flight on it are nacked or confirmed, not cancelled.
        """
        async with self._renew_lock:
            if used is None or self._channel is not used or self._connection is None:
                return  # another publish renewed it already
            try:
                fresh = await self._connection.channel(
                    publisher_confirms=True, on_return_raises=True
                )
            except Exception as exc:  # reconnecting: the retry loop comes back here
                logger.info("no fresh publishing channel yet: %s", exc)
                return
            retired, self._retired = self._retired, [used]
            self._channel = fresh
            self._exchanges.clear()
        for channel in retired:
            with anyio.move_on_after(2, shield=True):
                try:
                    await channel.close()
                except Exception as exc:
                    logger.debug("closing a retired publishing channel: %s", exc)

    @asynccontextmanager
    async def consume(
        self,
        queue: QueueSpec,
        *,
        prefetch: int = 16,
        on_progress: ProgressCallback | None = None,
    ) -> AsyncIterator[AsyncIterator[Delivery]]:
        """Declare and consume ``queue`` on a channel of its own with ``prefetch`` unacked
        messages (a chunked message counts as one); after a reconnect the channel declares it
        again and resumes consuming. ``on_progress`` hears of every chunk that arrives."""
        if self._connection is None:
            raise ConnectionLostError("the transport is not connected")
        inbox = Inbox[Delivery]()

        async def deliver(incoming: AbstractIncomingMessage) -> None:
            try:
                inbox.put_nowait(_delivery(incoming))
            except anyio.ClosedResourceError:
                pass  # the consumer is closing; the broker redelivers unacked messages

        try:
            channel = await self._connection.channel()
            await channel.set_qos(prefetch_count=prefetch)
            amqp_queue = await channel.declare_queue(
                queue.name,
                durable=queue.durable,
                auto_delete=queue.auto_delete,
                arguments=queue.arguments,
            )
            for exchange, key in queue.bindings:
                await amqp_queue.bind(exchange, key)
            tag = await amqp_queue.consume(deliver)
        except BaseException as exc:
            inbox.close()
            if isinstance(exc, Exception) and not isinstance(exc, TransportError):
                raise _translate(exc) from exc
            raise

        async def set_prefetch(count: int) -> bool:
            # RabbitMQ applies a new prefetch to consumers started after it: start one, then
            # cancel the old one. Deliveries the old one holds stay unacked on this channel.
            nonlocal tag
            try:
                await channel.set_qos(prefetch_count=count)
                new_tag = await amqp_queue.consume(deliver)
                await amqp_queue.cancel(tag)
            except Exception as exc:
                logger.info("prefetch of %s not changed now: %s", queue.name, exc)
                return False
            tag = new_tag
            return True

        stream = ReassembledStream(
            inbox, Reassembler(self.chunking, on_progress=on_progress), prefetch, set_prefetch
        )
        try:
            yield stream
        finally:
            inbox.close()
            with anyio.move_on_after(5, shield=True):
                try:
                    await amqp_queue.cancel(tag)
                    await channel.close()
                except Exception as exc:  # closing a dead channel is not an error
                    logger.debug("closing consumer of %s: %s", queue.name, exc)

    async def consumer_count(self, queue: str) -> int | None:
        """Consumers on ``queue`` from a passive declare; ``None`` when it does not exist.

        Checks share one channel, opened on first use and again after the broker closes it,
        which a passive declare of a missing queue does.
        """
        if self._connection is None:
            raise ConnectionLostError("the transport is not connected")
        async with self._check_lock:
            try:
                if self._check_channel is None or self._check_channel.is_closed:
                    self._check_channel = await self._connection.channel()
                # robust=False: a robust channel caches a queue declared robustly, and would
                # answer the next passive declare from its cache.
                declared = await self._check_channel.declare_queue(  # type: ignore[call-arg]
                    queue, passive=True, robust=False
                )
                return int(declared.declaration_result.consumer_count or 0)
            except aiormq.exceptions.ChannelNotFoundEntity:
                await self._drop_check_channel()
                return None
            except Exception as exc:
                await self._drop_check_channel()
                raise _translate(exc) from exc

    async def _drop_check_channel(self) -> None:
        # Closed for good, so the robust connection does not restore it behind our back.
        channel, self._check_channel = self._check_channel, None
        if channel is not None:
            with anyio.move_on_after(2, shield=True):
                try:
                    await channel.close()
                except Exception as exc:
                    logger.debug("closing the queue-check channel: %s", exc)


def _delivery(incoming: AbstractIncomingMessage) -> Delivery:
    # Settling needs only the channel and the tag: holding on to ``incoming`` would keep its
    # body alive after a chunk has been copied into its reassembly buffer.
    channel, tag, message_id = incoming.channel, incoming.delivery_tag, incoming.message_id
    if tag is None:
        raise TransportError("the broker sent a delivery without a delivery tag")

    async def ack() -> None:
        try:
            await channel.basic_ack(delivery_tag=tag)
        except _RETRYABLE as exc:
            _log_stale(message_id, exc)
        except Exception as exc:
            raise _translate(exc) from exc

    async def reject(requeue: bool) -> None:
        try:
            await channel.basic_reject(delivery_tag=tag, requeue=requeue)
        except _RETRYABLE as exc:
            _log_stale(message_id, exc)
        except Exception as exc:
            raise _translate(exc) from exc

    headers: dict[str, Any] = dict(incoming.headers or {})
    return Delivery(
        body=incoming.body,
        message_id=incoming.message_id,
        type=incoming.type,
        correlation_id=incoming.correlation_id,
        reply_to=incoming.reply_to,
        headers=headers,
        redelivered=bool(incoming.redelivered),
        exchange=incoming.exchange or "",
        routing_key=incoming.routing_key or "",
        _ack=ack,
        _reject=reject,
    )


def _log_stale(message_id: str | None, exc: BaseException) -> None:
    # The delivery's channel closed (consumer left, connection dropped): the broker has already
    # put the message back and will redeliver it, exactly as MemoryTransport does.
    logger.info(
        "delivery %s was not settled, its channel is gone (%s); the broker redelivers it",
        message_id, type(exc).__name__,
    )  # fmt: skip


def _default_nack_retry(urls: list[str]) -> float:
    return 10.0 if len(urls) > 1 else 0.0
