"""ReplySender: the node's answers on the wire, and the settling of the requests they answer.

A request is acknowledged only once its reply is confirmed by the broker, so a crash at any
point leads to redelivery, never to loss. Replies to heavy requests are also written to disk, so
a redelivery after a restart is answered from the stored reply instead of running again.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from typing import Any

import anyio

from broker_net.codes import ErrorCode
from broker_net.crypto.authentication import Security
from broker_net.envelope import Authenticator, EnvelopeHeader
from broker_net.errors import CodecError, TransportError
from broker_net.frames import IncomingFrame, frame, frame_sealed
from broker_net.messages import ErrorMessage
from broker_net.topology import Topology
from broker_net.transport import Delivery, OutgoingMessage, Transport
from node_agent.replies import ReplyStore, StoredReply

logger = logging.getLogger(__name__)

STORED_REPLY_LIMIT = 64 * 1024**2
"""By default, replies larger than this many bytes are not kept for answering redeliveries
(``BROKER_NET_NODE_STORED_REPLY_LIMIT``)."""

LIGHT_TYPES = frozenset(
    {"ping_request", "list_request", "training_plan_status_request", "cancel_request"}
)
"""Requests answered from memory only: cheap to run again, so never written to disk."""


class ReplySender:
    """Seals, publishes and stores the node's replies; settles each request once answered.

    Args:
        node_id: this node's id (the sender of every reply).
        node_name: this node's display name, written on its errors.
        transport: a connected transport.
        topology: the names of exchanges and queues.
        security: this node's identity; ``None`` with security off.
        store: where replies are kept for answering redeliveries.
        counters: the agent's counters; ``errors`` counts every error reply.
        stored_reply_limit: replies larger than this many bytes are not kept (0: none is).
    """

    def __init__(
        self,
        node_id: str,
        node_name: str | None,
        transport: Transport,
        topology: Topology,
        security: Security | None,
        store: ReplyStore,
        counters: dict[str, int],
        *,
        stored_reply_limit: int = STORED_REPLY_LIMIT,
    ) -> None:
        self.node_id = node_id
        self.node_name = node_name
        self.transport = transport
        self.topology = topology
        self.security = security
        self.store = store
        self.counters = counters
        self.stored_reply_limit = stored_reply_limit

    def error(
        self,
        request_id: str | None,
        researcher_id: str | None,
        code: ErrorCode,
        text: str,
        details: dict[str, Any] | None = None,
    ) -> ErrorMessage:
        """An ErrorMessage from this node, counted and logged."""
        self.counters["errors"] += 1
        logger.warning("answering request %s with %s: %s", request_id, code.name, text)
        return ErrorMessage(
            request_id=request_id,
            researcher_id=researcher_id,
            node_id=self.node_id,
            node_name=self.node_name,
            code=code,
            message=text,
            details=details or {},
        )

    def address(self, delivery: Delivery, header: EnvelopeHeader) -> str | None:
        """Where the reply goes: with security on, always the claimed sender's own reply
        queue, whatever ``reply_to`` says, so a replayed request cannot divert an answer."""
        if self.security is None:
            return delivery.reply_to
        if header.sender_role != "researcher":
            return None
        try:
            return self.topology.researcher_queue(header.sender_id).name
        except ValueError:
            return None

    def authenticator(self, recipient: str) -> Authenticator | None:
        """How messages to ``recipient`` are authenticated (None with security off)."""
        return None if self.security is None else self.security.authenticator_for(recipient)

    def header(self, reply: Any, request_id: str, *, recipient: str) -> EnvelopeHeader:
        """The envelope header of ``reply`` to ``request_id``."""
        header = EnvelopeHeader.for_message(
            reply, sender_id=self.node_id, sender_role="node", recipient=recipient
        )
        if header.request_id is None:
            header = EnvelopeHeader(**{**header.as_dict(), "request_id": request_id})
        return header

    async def reply(self, incoming: IncomingFrame, request_id: str, reply: Any) -> None:
        """Send ``reply`` to the request in ``incoming``, store it, then settle the request."""
        delivery, request_header = incoming.delivery, incoming.header
        reply_to = self.address(delivery, request_header)
        if not reply_to:
            logger.warning("request %s has no reply_to; dead-lettering it", request_id)
            await settle_quietly(delivery.reject(requeue=False))
            return
        recipient = request_header.sender_id
        header = self.header(reply, request_id, recipient=recipient)
        authenticator = self.authenticator(recipient)
        try:
            outgoing = frame(header, reply, authenticator=authenticator)
        except CodecError as exc:
            logger.error("the reply to %s cannot be encoded: %s", request_id, exc)
            reply = self.error(
                request_id, getattr(reply, "researcher_id", None), ErrorCode.NODE_ERROR,
                "the node produced a reply that cannot be encoded",
            )  # fmt: skip
            header = self.header(reply, request_id, recipient=recipient)
            outgoing = frame(header, reply, authenticator=authenticator)
        if outgoing.size > self.stored_reply_limit:
            # Kept nowhere (the operator's choice: a copy on disk costs a write of its size).
            # A redelivery after a crash runs the request again.
            logger.info("the reply to %s (%d bytes) is sent without being stored", request_id,
                        outgoing.size)  # fmt: skip
            await self._send(delivery, request_id, reply_to, outgoing)
            return
        if reply.type != "error" and request_header.message_type not in LIGHT_TYPES:
            # Written to disk while the reply goes out, from the buffers being sent (never
            # joined): a redelivery, or the same request sent again by a researcher resuming a
            # job, is then answered from the disk; one that comes before the writing is done
            # runs the request again.
            stored = StoredReply(outgoing.body, reply_to, reply.type, header.message_id)
            async with anyio.create_task_group() as group:
                group.start_soon(self._persist, request_id, stored)
                await self._send(delivery, request_id, reply_to, outgoing)
            return
        body = outgoing.body_bytes()
        if body is not outgoing.body:
            outgoing = replace(outgoing, body=body)
        self.store.remember(request_id, StoredReply(body, reply_to, reply.type, header.message_id))
        await self._send(delivery, request_id, reply_to, outgoing)

    async def send_stored(self, delivery: Delivery, request_id: str, stored: StoredReply) -> None:
        """Answer a redelivered request with the reply sent the first time."""
        header = EnvelopeHeader(
            message_id=stored.message_id, sender_id=self.node_id, sender_role="node",
            recipient=stored.reply_to, message_type=stored.message_type, request_id=request_id,
        )  # fmt: skip
        await self._send(delivery, request_id, stored.reply_to, frame_sealed(header, stored.body))

    async def send_refusal(self, reply_to: str, header: EnvelopeHeader, error: Any) -> None:
        """Publish the answer to a refused message; nothing is stored.

        Raises:
            TransportError: the answer could not be published.
        """
        outgoing = frame(header, error, authenticator=self.authenticator(header.recipient))
        await self.transport.publish(self.topology.replies_exchange.name, reply_to, outgoing)

    async def stored_reply(
        self, request_id: str, *, look_on_disk: bool = True
    ) -> StoredReply | None:
        """The reply already sent to ``request_id``, if this node kept it."""
        recent = self.store.recent(request_id)
        if recent is not None or not look_on_disk:
            return recent
        return await anyio.to_thread.run_sync(self.store.get, request_id)

    async def _persist(self, request_id: str, stored: StoredReply) -> None:
        try:
            await anyio.to_thread.run_sync(self.store.persist, request_id, stored)
        except Exception as exc:  # the reply is sent all the same
            logger.warning("the reply to %s could not be stored: %s", request_id, exc)

    async def _send(
        self, delivery: Delivery, request_id: str, reply_to: str, outgoing: OutgoingMessage
    ) -> None:
        """Publish a reply, then settle its request: acked once the broker has the reply,
        given back when it could not be published."""
        try:
            await self.transport.publish(self.topology.replies_exchange.name, reply_to, outgoing)
        except TransportError as exc:
            # Not acked: the broker redelivers the request and the stored reply is sent then.
            logger.warning("could not publish the reply to %s: %s", request_id, exc)
            await settle_quietly(delivery.reject(requeue=True))
            return
        await settle_quietly(delivery.ack())


async def settle_quietly(settling: Any) -> None:
    """Await an ack or reject; a channel already gone is no error (the broker redelivers)."""
    try:
        await settling
    except TransportError as exc:
        logger.info("could not settle a delivery: %s", exc)
