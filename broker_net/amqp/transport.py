"""AmqpTransport: the Transport protocol on RabbitMQ through aio-pika.

It keeps one robust connection, one publishing channel with publisher confirms
(:mod:`broker_net.amqp.publisher`), one channel per consumer, so each consumer has its own
prefetch (:mod:`broker_net.amqp.consumer`), and one channel for queue checks. Bodies above the
chunk size are published as chunks and reassembled by the consumer (see
:mod:`broker_net.chunking`). When the connection drops, aio-pika reconnects, re-declares what
was declared and restarts the consumers. Given several broker URLs (a cluster), the connection
moves to the next node when its node goes (see :mod:`broker_net.amqp.failover`). Every aio-pika
and aiormq error is translated into a :mod:`broker_net.errors` class
(:mod:`broker_net.amqp.errors`); only the modules of this package import aio-pika.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Sequence
from contextlib import AbstractAsyncContextManager
from functools import partial
from typing import Self

import aio_pika
import aiormq
import anyio
from aio_pika.abc import (
    AbstractChannel,
    AbstractRobustConnection,
)

from broker_net.amqp.consumer import consume_queue
from broker_net.amqp.errors import RETRYABLE, translate
from broker_net.amqp.failover import broker_urls, connect_failover, redact
from broker_net.amqp.publisher import ConfirmedPublisher
from broker_net.chunking import Chunking, publish_chunked
from broker_net.errors import (
    ConnectionLostError,
    TransportError,
)
from broker_net.topology import ExchangeSpec, QueueSpec
from broker_net.transport import Delivery, OutgoingMessage, ProgressCallback

logger = logging.getLogger(__name__)


class AmqpTransport:
    """A connection to RabbitMQ.

    Args:
        url: AMQP URL, e.g. ``amqp://guest:guest@127.0.0.1:5672/``; ``amqps://`` for TLS. For
            a cluster, the nodes' URLs separated by commas (later ones may be just
            ``host:port``, see :func:`broker_net.amqp.failover.broker_urls`): the first that
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
        self._publisher = ConfirmedPublisher(
            publish_timeout=publish_timeout, nack_retry=self.nack_retry
        )
        self._check_channel: AbstractChannel | None = None
        self._check_lock = anyio.Lock()

    async def __aenter__(self) -> Self:
        try:
            with anyio.fail_after(self.connect_timeout):
                self._connection = await connect_failover(
                    self.urls,
                    timeout=self.connect_timeout / len(self.urls),
                    client_properties={"connection_name": self.connection_name},
                )
                await self._publisher.open(self._connection)
        except TimeoutError as exc:
            await self._close()
            raise ConnectionLostError(
                f"could not reach the broker at {redact(self.url)} within {self.connect_timeout} s"
            ) from exc
        except Exception as exc:
            await self._close()
            raise translate(exc) from exc
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self._close()

    async def _close(self) -> None:
        connection, self._connection = self._connection, None
        self._publisher.forget()
        self._check_channel = None
        if connection is not None:
            with anyio.move_on_after(5, shield=True):
                await connection.close()

    @property
    def connected(self) -> bool:
        """True while the connection to the broker is up; False while it is being restored
        (or once closed)."""
        return self._connection is not None and self._connection.connected.is_set()

    @property
    def channel(self) -> AbstractChannel:
        """The publishing channel (declarations go there too)."""
        return self._publisher.channel

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
                    except RETRYABLE as exc:
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
            raise translate(exc) from exc

    async def _declare(self, specs: tuple[ExchangeSpec | QueueSpec, ...]) -> None:
        for spec in specs:
            if isinstance(spec, ExchangeSpec):
                await self.channel.declare_exchange(
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
            # The publisher joins a body in parts; no copy of the message is needed.
            await self._publisher.publish(exchange, routing_key, message, mandatory=mandatory)
            return
        publish_one = partial(self._publisher.publish, exchange, routing_key, mandatory=mandatory)
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

    def consume(
        self,
        queue: QueueSpec,
        *,
        prefetch: int = 16,
        on_progress: ProgressCallback | None = None,
    ) -> AbstractAsyncContextManager[AsyncIterator[Delivery]]:
        """Declare and consume ``queue`` on a channel of its own with ``prefetch`` unacked
        messages (a chunked message counts as one); after a reconnect the channel declares it
        again and resumes consuming. ``on_progress`` hears of every chunk that arrives."""
        if self._connection is None:
            raise ConnectionLostError("the transport is not connected")
        return consume_queue(
            self._connection, queue, prefetch=prefetch, chunking=self.chunking,
            on_progress=on_progress,
        )  # fmt: skip

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
                raise translate(exc) from exc

    async def _drop_check_channel(self) -> None:
        # Closed for good, so the robust connection does not restore it behind our back.
        channel, self._check_channel = self._check_channel, None
        if channel is not None:
            with anyio.move_on_after(2, shield=True):
                try:
                    await channel.close()
                except Exception as exc:
                    logger.debug("closing the queue-check channel: %s", exc)


def _default_nack_retry(urls: list[str]) -> float:
    return 10.0 if len(urls) > 1 else 0.0
