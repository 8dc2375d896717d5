"""Publishing on RabbitMQ: one channel with publisher confirms, renewed when the broker nacks.

A publish waits for the broker's confirm; when the connection drops, aio-pika reconnects and a
publish caught by the drop is retried until its deadline, and a publish the broker nacks is
republished for a while on a fresh channel, as a cluster's queue elects a new leader.
"""

from __future__ import annotations

import asyncio
import logging

import aiormq
import anyio
from aio_pika.abc import AbstractChannel, AbstractRobustConnection

from broker_net.amqp.errors import RETRYABLE, translate
from broker_net.codec import CONTENT_TYPE
from broker_net.errors import (
    BrokerAccessError,
    ConnectionLostError,
    PublishError,
    UnroutableError,
)
from broker_net.transport import OutgoingMessage

logger = logging.getLogger(__name__)


class ConfirmedPublisher:
    """The publishing channel of a connection, with publisher confirms.

    Args:
        publish_timeout: seconds a publish may take, reconnections included.
        nack_retry: seconds a nacked publish is republished before :class:`PublishError`.
    """

    def __init__(self, *, publish_timeout: float, nack_retry: float) -> None:
        self.publish_timeout = publish_timeout
        self.nack_retry = nack_retry
        self._connection: AbstractRobustConnection | None = None
        self._channel: AbstractChannel | None = None
        self._renew_lock = anyio.Lock()
        self._retired: list[AbstractChannel] = []

    async def open(self, connection: AbstractRobustConnection) -> None:
        """Open the publishing channel on ``connection``."""
        self._connection = connection
        self._channel = await connection.channel(publisher_confirms=True, on_return_raises=True)

    def forget(self) -> None:
        """Drop the channels; closing their connection closes them."""
        self._connection, self._channel, self._retired = None, None, []

    @property
    def channel(self) -> AbstractChannel:
        """The channel publishes go to now.

        Raises:
            ConnectionLostError: the transport is not connected.
        """
        if self._channel is None:
            raise ConnectionLostError("the transport is not connected")
        return self._channel

    async def publish(
        self, exchange: str, routing_key: str, message: OutgoingMessage, *, mandatory: bool
    ) -> None:
        """Publish one message (a whole body or a chunk) and wait for its confirm.

        Raises:
            UnroutableError: ``mandatory`` is set and no queue takes the message.
            PublishError: the broker nacked the message, still after ``nack_retry`` seconds.
            ConnectionLostError: no confirm within ``publish_timeout``.
        """
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
                    except RETRYABLE as exc:
                        if self._connection is None:
                            raise ConnectionLostError("the transport is closed") from exc
                        logger.info(
                            "publish to %s/%s interrupted (%s); retrying",
                            exchange, routing_key, type(exc).__name__,
                        )  # fmt: skip
                        await anyio.sleep(delay)
                        delay = min(delay * 2, 1.0)
                    except aiormq.exceptions.AMQPError as exc:
                        raise translate(exc) from exc
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
        for channel in retired:
            with anyio.move_on_after(2, shield=True):
                try:
                    await channel.close()
                except Exception as exc:
                    logger.debug("closing a retired publishing channel: %s", exc)
