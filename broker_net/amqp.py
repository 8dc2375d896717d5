"""AmqpTransport: the Transport protocol on RabbitMQ through aio-pika.

It keeps one robust connection, one publishing channel with publisher confirms, and one channel
per consumer (so each consumer has its own prefetch). Publishing waits for the broker's confirm;
when the connection drops, aio-pika reconnects, re-declares what was declared and restarts the
consumers, and a publish caught by the drop is retried until its deadline. Every aio-pika and
aiormq error is translated into a :mod:`broker_net.errors` class here; nothing else imports
aio-pika.
"""

from __future__ import annotations

import logging
import math
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
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
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from broker_net.codec import CONTENT_TYPE
from broker_net.errors import (
    BrokerAccessError,
    ConnectionLostError,
    PublishError,
    TransportError,
    UnroutableError,
)
from broker_net.topology import ExchangeSpec, QueueSpec
from broker_net.transport import Delivery, OutgoingMessage

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
        url: AMQP URL, e.g. ``amqp://guest:guest@127.0.0.1:5672/``; ``amqps://`` for TLS.
        connection_name: shown in the RabbitMQ management UI's connection list.
        publish_timeout: seconds a publish may take, reconnections included.
        connect_timeout: seconds the first connection may take.
    """

    def __init__(
        self,
        url: str,
        *,
        connection_name: str = "broker-net",
        publish_timeout: float = 30.0,
        connect_timeout: float = 10.0,
    ) -> None:
        self.url = url
        self.connection_name = connection_name
        self.publish_timeout = publish_timeout
        self.connect_timeout = connect_timeout
        self._connection: AbstractRobustConnection | None = None
        self._channel: AbstractChannel | None = None
        self._exchanges: dict[str, AbstractExchange] = {}

    async def __aenter__(self) -> Self:
        try:
            with anyio.fail_after(self.connect_timeout):
                self._connection = await aio_pika.connect_robust(
                    self.url,
                    client_properties={"connection_name": self.connection_name},
                    fail_fast=True,
                )
                self._channel = await self._connection.channel(
                    publisher_confirms=True, on_return_raises=True
                )
        except TimeoutError as exc:
            await self._close()
            raise ConnectionLostError(
                f"could not reach the broker at {_redact(self.url)} within {self.connect_timeout} s"
            ) from exc
        except Exception as exc:
            await self._close()
            raise _translate(exc) from exc
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self._close()

    async def _close(self) -> None:
        connection, self._connection, self._channel = self._connection, None, None
        self._exchanges.clear()
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
        reconnect."""
        try:
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
        except TransportError:
            raise
        except Exception as exc:
            raise _translate(exc) from exc

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
        """Publish and wait for the broker's confirm, riding out reconnections.

        Raises:
            UnroutableError: ``mandatory`` is set and no queue takes the message.
            PublishError: the broker nacked the message.
            ConnectionLostError: no confirm within ``publish_timeout``.
        """
        amqp_message = aio_pika.Message(
            message.body,
            content_type=CONTENT_TYPE,
            message_id=message.message_id,
            correlation_id=message.correlation_id,
            reply_to=message.reply_to,
            type=message.type,
            headers=message.headers,
            app_id="broker-net",
            delivery_mode=(
                aio_pika.DeliveryMode.PERSISTENT
                if message.persistent
                else aio_pika.DeliveryMode.NOT_PERSISTENT
            ),
            expiration=message.expiration,
        )
        delay = 0.05
        try:
            with anyio.fail_after(self.publish_timeout):
                while True:
                    try:
                        target = await self._exchange(exchange)
                        await target.publish(
                            amqp_message, routing_key=routing_key, mandatory=mandatory
                        )
                        return
                    except aiormq.exceptions.PublishError as exc:
                        raise UnroutableError(exchange, routing_key) from exc
                    except aiormq.exceptions.DeliveryError as exc:
                        raise PublishError(
                            f"the broker refused a message for {exchange!r}/{routing_key!r}"
                        ) from exc
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

    @asynccontextmanager
    async def consume(
        self, queue: QueueSpec, *, prefetch: int = 16
    ) -> AsyncIterator[AsyncIterator[Delivery]]:
        """Declare and consume ``queue`` on a channel of its own with ``prefetch`` unacked
        messages; after a reconnect the channel declares it again and resumes consuming."""
        if self._connection is None:
            raise ConnectionLostError("the transport is not connected")
        send: MemoryObjectSendStream[Delivery]
        receive: MemoryObjectReceiveStream[Delivery]
        send, receive = anyio.create_memory_object_stream[Delivery](max_buffer_size=math.inf)
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

            async def on_message(incoming: AbstractIncomingMessage) -> None:
                try:
                    send.send_nowait(_delivery(incoming))
                except (anyio.ClosedResourceError, anyio.BrokenResourceError):
                    pass  # the consumer is closing; the broker redelivers unacked messages

            tag = await amqp_queue.consume(on_message)
        except TransportError:
            raise
        except Exception as exc:
            raise _translate(exc) from exc
        try:
            async with receive:
                yield receive
        finally:
            send.close()
            with anyio.move_on_after(5, shield=True):
                try:
                    await amqp_queue.cancel(tag)
                    await channel.close()
                except Exception as exc:  # closing a dead channel is not an error
                    logger.debug("closing consumer of %s: %s", queue.name, exc)

    async def consumer_count(self, queue: str) -> int | None:
        """Consumers on ``queue`` from a passive declare; ``None`` when it does not exist."""
        if self._connection is None:
            raise ConnectionLostError("the transport is not connected")
        try:
            channel = await self._connection.channel()
        except Exception as exc:
            raise _translate(exc) from exc
        try:
            declared = await channel.declare_queue(queue, passive=True)
            return int(declared.declaration_result.consumer_count or 0)
        except aiormq.exceptions.ChannelNotFoundEntity:
            return None
        except Exception as exc:
            raise _translate(exc) from exc
        finally:
            if not channel.is_closed:
                with anyio.move_on_after(2, shield=True):
                    await channel.close()


def _delivery(incoming: AbstractIncomingMessage) -> Delivery:
    async def ack() -> None:
        try:
            await incoming.ack()
        except Exception as exc:
            raise _translate(exc) from exc

    async def reject(requeue: bool) -> None:
        try:
            await incoming.reject(requeue=requeue)
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


def _redact(url: str) -> str:
    if "@" not in url:
        return url
    scheme, rest = url.split("://", 1) if "://" in url else ("", url)
    return f"{scheme}://***@{rest.split('@', 1)[1]}"
