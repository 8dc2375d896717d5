"""Consuming a queue on RabbitMQ: a channel per consumer, chunked messages reassembled.

Each consumer has a channel of its own, so its prefetch is its own. While it holds the chunks
of a transfer its prefetch is raised by starting a new consumer on the same channel with the
higher prefetch (RabbitMQ applies a new prefetch to new consumers only) and cancelling the old
one, whose unacknowledged deliveries stay valid on the channel.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
from aio_pika.abc import AbstractIncomingMessage, AbstractRobustConnection

from broker_net.amqp.errors import RETRYABLE, translate
from broker_net.chunking import Chunking
from broker_net.errors import TransportError
from broker_net.inbox import Inbox
from broker_net.reassembly import ReassembledStream, Reassembler
from broker_net.topology import QueueSpec
from broker_net.transport import Delivery, ProgressCallback

logger = logging.getLogger(__name__)


@asynccontextmanager
async def consume_queue(
    connection: AbstractRobustConnection,
    queue: QueueSpec,
    *,
    prefetch: int,
    chunking: Chunking,
    on_progress: ProgressCallback | None = None,
) -> AsyncIterator[AsyncIterator[Delivery]]:
    """Declare and consume ``queue`` on a new channel of ``connection`` with ``prefetch``
    unacked messages (a chunked message counts as one); after a reconnect the robust channel
    declares it again and resumes consuming. ``on_progress`` hears of every chunk."""
    inbox = Inbox[Delivery]()

    async def deliver(incoming: AbstractIncomingMessage) -> None:
        try:
            inbox.put_nowait(_delivery(incoming))
        except anyio.ClosedResourceError:
            pass  # the consumer is closing; the broker redelivers unacked messages

    try:
        channel = await connection.channel()
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
            raise translate(exc) from exc
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
        inbox, Reassembler(chunking, on_progress=on_progress), prefetch, set_prefetch
    )
    try:
        yield stream
    finally:
        inbox.close()
        # On a connection closed for good nothing is restored, so there is no consumer to
        # cancel (and cancelling would wait for a broker that may be gone).
        if not connection.is_closed:
            with anyio.move_on_after(5, shield=True):
                try:
                    await amqp_queue.cancel(tag)
                    await channel.close()
                except Exception as exc:  # closing a dead channel is not an error
                    logger.debug("closing consumer of %s: %s", queue.name, exc)


def _delivery(incoming: AbstractIncomingMessage) -> Delivery:
    # Settling needs only the channel and the tag: holding on to ``incoming`` would keep its
    # body alive after a chunk has been copied into its reassembly buffer.
    channel, tag, message_id = incoming.channel, incoming.delivery_tag, incoming.message_id
    if tag is None:
        raise TransportError("the broker sent a delivery without a delivery tag")

    async def ack() -> None:
        try:
            await channel.basic_ack(delivery_tag=tag)
        except RETRYABLE as exc:
            _log_stale(message_id, exc)
        except Exception as exc:
            raise translate(exc) from exc

    async def reject(requeue: bool) -> None:
        try:
            await channel.basic_reject(delivery_tag=tag, requeue=requeue)
        except RETRYABLE as exc:
            _log_stale(message_id, exc)
        except Exception as exc:
            raise translate(exc) from exc

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
