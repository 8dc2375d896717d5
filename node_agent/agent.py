"""NodeAgent: consume the node's queue, verify, dispatch, reply, in one task group.

Each request is acknowledged only once its reply is confirmed by the broker, so a crash at any
point leads to redelivery, never to loss; a redelivered request is answered from the stored
reply instead of being run again. Heavy requests (training, analytics, preprocessing) run in a
lane of their own, so pings and status requests are answered while a node trains.
"""

from __future__ import annotations

import logging
import math
from functools import partial
from typing import Any, Self

import anyio
from anyio.abc import TaskGroup

from broker_net.chunking import TransferFailure, failure
from broker_net.codec import MessageValidationError, decode_message, encode_parts
from broker_net.crypto.authentication import Security
from broker_net.crypto.identities import MisdirectedMessageError, ReplayedMessageError
from broker_net.envelope import (
    Authenticator,
    Envelope,
    EnvelopeHeader,
    amqp_headers,
    seal,
    seal_parts,
    unseal,
)
from broker_net.errors import (
    CodecError,
    DecodeError,
    MessageTooLargeError,
    ProtocolVersionError,
    SecurityError,
    TransportError,
)
from broker_net.inbox import Inbox
from broker_net.messages import (
    REPLY_TYPES,
    ErrorCode,
    ErrorMessage,
    Heartbeat,
    field_value,
    utc_now,
)
from broker_net.topology import Topology
from broker_net.transport import Body, Delivery, OutgoingMessage, Transport
from broker_net.version import __version__
from node_agent.context import HandlerError, NodeContext
from node_agent.handlers import HANDLERS, HEAVY_MESSAGE_TYPES, Handler
from node_agent.replies import ReplyStore, StoredReply
from node_agent.settings import NodeSettings

logger = logging.getLogger(__name__)

_DECODE_CODES: list[tuple[type[Exception], ErrorCode]] = [
    (MessageTooLargeError, ErrorCode.MESSAGE_TOO_LARGE),
    (ProtocolVersionError, ErrorCode.UNSUPPORTED_VERSION),
    (MessageValidationError, ErrorCode.INVALID_MESSAGE),
    (DecodeError, ErrorCode.MALFORMED_MESSAGE),
]


class NodeAgent:
    """The daemon a data holder runs.

    Use it as an async context manager and call :meth:`serve` (or :meth:`stop` from elsewhere)::

        async with AmqpTransport(url) as transport, NodeAgent(settings, transport) as agent:
            await agent.serve()

    Args:
        settings: the node's configuration.
        transport: a connected transport.
        handlers: handler per request type (defaults to the built-in ones).
        shutdown_grace: seconds in-flight requests may take to finish when stopping; requests
            still running after that are given back to the queue.
        security: this node's identity and trusted researchers; loaded from the data folder
            when omitted and ``settings.security`` is on.
    """

    def __init__(
        self,
        settings: NodeSettings,
        transport: Transport,
        *,
        handlers: dict[str, Handler] | None = None,
        shutdown_grace: float = 30.0,
        security: Security | None = None,
    ) -> None:
        self.settings = settings
        self.security = security
        self.transport = transport
        self.topology = Topology(settings.namespace, settings.queue_type)
        self.handlers = dict(HANDLERS if handlers is None else handlers)
        self.shutdown_grace = shutdown_grace
        self.context: NodeContext | None = None
        self.replies: ReplyStore | None = None
        self.counters: dict[str, int] = {"handled": 0, "errors": 0, "duplicates": 0}
        self._heavy = anyio.CapacityLimiter(settings.heavy_concurrency)
        self._inflight: dict[str, anyio.Event | None] = {}
        self._idle_workers = 0
        self._stopping = anyio.Event()
        self._ready = anyio.Event()
        self._task_group: TaskGroup | None = None

    @property
    def node_id(self) -> str:
        """This node's id."""
        return self.settings.node_id

    async def __aenter__(self) -> Self:
        if self.security is None and self.settings.security:
            self.security = await anyio.to_thread.run_sync(
                partial(
                    Security.load, self.settings.identity_dir, self.node_id, "node",
                    self.settings.trust_path, window=self.settings.message_window,
                )
            )  # fmt: skip
        self.context = await anyio.to_thread.run_sync(
            partial(NodeContext.open, self.settings, security=self.security)
        )
        self.replies = ReplyStore(self.settings.data_dir / "replies.sqlite")
        await self.transport.declare(*self.topology.node_declarations(self.node_id))
        self._task_group = anyio.create_task_group()
        await self._task_group.__aenter__()
        self._task_group.start_soon(self._heartbeats)
        self._task_group.start_soon(self._receive)
        return self

    async def __aexit__(self, *exc_info: Any) -> None:
        self.stop()
        assert self._task_group is not None
        try:
            await self._task_group.__aexit__(*exc_info)
        finally:
            if self.replies is not None:
                self.replies.close()
            if self.context is not None:
                self.context.close()

    async def wait_ready(self) -> None:
        """Wait until the agent consumes its queue."""
        await self._ready.wait()

    async def serve(self) -> None:
        """Run until :meth:`stop` is called."""
        await self._stopping.wait()

    def stop(self) -> None:
        """Stop taking requests; in-flight ones finish within the shutdown grace."""
        self._stopping.set()

    # --- receiving -----------------------------------------------------------------------------

    async def _receive(self) -> None:
        """Consume the queue and hand each delivery to a worker.

        Workers are tasks of their own that take deliveries one after the other; one more is
        started whenever a delivery finds every worker busy, so there are as many as requests
        were ever in flight at once (at most the prefetch, give or take chunked transfers).
        A task per delivery would be simpler, but starting an anyio task costs more than
        answering a ping.
        """
        queue = self.topology.node_queue(self.node_id)
        work = Inbox[Delivery]()
        async with self.transport.consume(queue, prefetch=self.settings.prefetch) as deliveries:
            with anyio.CancelScope() as handlers_scope:
                async with anyio.create_task_group() as handlers:
                    with anyio.CancelScope() as receiving:
                        handlers.start_soon(_cancel_when_set, self._stopping, receiving)
                        self._ready.set()
                        logger.info("node %s consuming %s", self.node_id, queue.name)
                        async for delivery in deliveries:
                            work.put_nowait(delivery)
                            if len(work) > self._idle_workers:
                                self._idle_workers += 1  # counted idle until it takes one
                                handlers.start_soon(self._work, work)
                    self._stopping.set()
                    # Deliveries no worker has started go back to the queue; the workers
                    # finish what they hold within the grace period, then see the end.
                    while len(work):
                        await _settle_quietly(work.receive_nowait().reject(requeue=True))
                    work.close()
                    handlers_scope.deadline = anyio.current_time() + self.shutdown_grace
            if handlers_scope.cancelled_caught:
                logger.warning("requests still running after the grace period go back to the queue")
            # Deliveries prefetched but never handed up go back to the queue.
            while True:
                try:
                    delivery = deliveries.receive_nowait()  # type: ignore[attr-defined]
                except (anyio.WouldBlock, anyio.EndOfStream, anyio.ClosedResourceError):
                    break
                await _settle_quietly(delivery.reject(requeue=True))
        self._task_group_cancel()

    async def _work(self, work: Inbox[Delivery]) -> None:
        """A worker: handle deliveries one at a time until the inbox is closed."""
        while True:
            try:
                delivery = await work.receive()
            except anyio.EndOfStream:
                self._idle_workers -= 1
                return
            self._idle_workers -= 1
            try:
                await self._handle_safely(delivery)
            finally:
                self._idle_workers += 1

    def _task_group_cancel(self) -> None:
        if self._task_group is not None:
            self._task_group.cancel_scope.cancel()

    async def _handle_safely(self, delivery: Delivery) -> None:
        try:
            await self._handle(delivery)
        except Exception:
            # A bug here must not take the agent down; the request goes to the dead letters.
            logger.exception("unexpected failure handling message %s", delivery.message_id)
            await _settle_quietly(delivery.reject(requeue=False))

    async def _handle(self, delivery: Delivery) -> None:
        received_at = utc_now()
        refused = failure(delivery)
        if refused is not None:
            await self._refuse_transfer(delivery, refused)
            return
        try:
            envelope = unseal(delivery.body, max_size=self.settings.max_message_size)
        except DecodeError as exc:
            await self._refuse_unreadable(delivery, exc)
            return
        request_id = envelope.header.request_id or delivery.correlation_id
        if request_id is None:
            await self._refuse_unreadable(delivery, DecodeError("the request carries no id"))
            return
        replayed: SecurityError | None = None
        if self.security is not None:
            try:
                self.security.verify(envelope)
            except MisdirectedMessageError as exc:
                await self._refuse(delivery, envelope, request_id, exc)
                return
            except ReplayedMessageError as exc:
                replayed = exc  # a redelivery is answered again below; anything else is refused
            except SecurityError as exc:
                await self._refuse(delivery, envelope, request_id, exc)
                return
        running = request_id in self._inflight
        if running:
            # The same request is being handled (a redelivery after a dropped channel, or a
            # republished copy): wait for it, then answer from its stored reply.
            self.counters["duplicates"] += 1
            finished = self._inflight[request_id]
            if finished is None:
                finished = self._inflight[request_id] = anyio.Event()
            await finished.wait()
        if replayed is not None and not delivery.redelivered:
            # A copy of a message already verified: refused. Its original was answered first.
            await self._refuse(delivery, envelope, request_id, replayed)
            return
        # Light requests are answered from memory only; anything heavier may have been answered
        # by an earlier run of this agent, whose replies are on disk.
        on_disk = delivery.redelivered or envelope.header.message_type not in _LIGHT_TYPES
        stored = await self._stored_reply(request_id, look_on_disk=on_disk)
        if stored is not None:
            self.counters["duplicates"] += not running
            logger.info("request %s was answered before; sending the stored reply", request_id)
            await self._send_stored(delivery, request_id, stored)
            return
        if running:
            await _settle_quietly(delivery.reject(requeue=True))
            return
        # The event a duplicate waits on is made only when a duplicate comes.
        self._inflight[request_id] = None
        try:
            reply = await self._answer(envelope, request_id, delivery.type)
            # Each handler builds a fresh reply: stamping it in place spares a copy.
            reply.received_at = received_at
            reply.replied_at = utc_now()
            await self._reply(delivery, envelope, request_id, reply)
        finally:
            finished = self._inflight.pop(request_id)
            if finished is not None:
                finished.set()

    async def _answer(self, envelope: Envelope, request_id: str, amqp_type: str | None) -> Any:
        header = envelope.header
        try:
            message = decode_message(envelope.body, max_size=self.settings.max_message_size)
        except DecodeError as exc:
            code = next(code for cls, code in _DECODE_CODES if isinstance(exc, cls))
            return self._error(request_id, None, code, str(exc))
        researcher_id = field_value(message, "researcher_id")
        handler = self.handlers.get(message.type)
        if handler is None or type(message) not in REPLY_TYPES:
            return self._error(
                request_id, researcher_id, ErrorCode.UNKNOWN_MESSAGE_TYPE,
                f"this node does not handle {message.type!r} messages",
            )  # fmt: skip
        if field_value(message, "request_id") != header.request_id:
            return self._error(
                request_id, researcher_id, ErrorCode.INVALID_MESSAGE,
                "the envelope and the message disagree on the request id",
            )  # fmt: skip
        assert self.context is not None
        try:
            if message.type in HEAVY_MESSAGE_TYPES:
                async with self._heavy:
                    reply = await handler(message, self.context)
            else:
                reply = await handler(message, self.context)
        except HandlerError as exc:
            return self._error(request_id, researcher_id, exc.code, exc.message, exc.details)
        except Exception as exc:
            logger.exception("handler for %s failed on request %s", message.type, request_id)
            return self._error(
                request_id, researcher_id, ErrorCode.NODE_ERROR,
                f"the node failed to handle the request ({type(exc).__name__})",
            )  # fmt: skip
        self.counters["handled"] += 1
        return reply

    def _error(
        self,
        request_id: str | None,
        researcher_id: str | None,
        code: ErrorCode,
        text: str,
        details: dict[str, Any] | None = None,
    ) -> ErrorMessage:
        self.counters["errors"] += 1
        logger.warning("answering request %s with %s: %s", request_id, code.name, text)
        return ErrorMessage(
            request_id=request_id,
            researcher_id=researcher_id,
            node_id=self.node_id,
            node_name=self.settings.display_name,
            code=code,
            message=text,
            details=details or {},
        )

    async def _refuse(
        self, delivery: Delivery, envelope: Envelope, request_id: str, exc: SecurityError
    ) -> None:
        """Answer a message that failed authentication; it is never decoded nor executed."""
        header = envelope.header
        code = getattr(exc, "code", ErrorCode.SECURITY_ERROR)
        logger.warning(
            "refused message %s claiming to come from %s: %s", header.message_id,
            header.sender_id, exc,
        )  # fmt: skip
        address = self._reply_address(delivery, header)
        if address is None:
            await _settle_quietly(delivery.reject(requeue=False))
            return
        error = self._error(request_id, None, code, str(exc))
        error = error.model_copy(update={"replied_at": utc_now()})
        reply_header = self._reply_header(error, request_id, recipient=header.sender_id)
        try:
            await self._publish_reply(address, reply_header, error)
        except TransportError as publish_error:
            logger.warning("could not answer a refused message: %s", publish_error)
        await _settle_quietly(delivery.ack())

    def _reply_address(self, delivery: Delivery, header: EnvelopeHeader) -> str | None:
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

    def _authenticator(self, recipient: str) -> Authenticator | None:
        return None if self.security is None else self.security.authenticator_for(recipient)

    async def _refuse_transfer(self, delivery: Delivery, refused: TransferFailure) -> None:
        """Answer a request whose chunks could not be put back together: corrupted, too large,
        or arriving while the node reassembles too much already."""
        code = ErrorCode.__members__.get(refused.code, ErrorCode.TRANSFER_ERROR)
        await self._refuse_unreadable(delivery, DecodeError(refused.reason), code=code)

    async def _refuse_unreadable(
        self, delivery: Delivery, exc: DecodeError, *, code: ErrorCode | None = None
    ) -> None:
        """Answer bytes that are not an envelope, if the AMQP properties say where to."""
        request_id = delivery.correlation_id
        if delivery.reply_to and request_id:
            if code is None:
                code = next(code for cls, code in _DECODE_CODES if isinstance(exc, cls))
            error = self._error(request_id, None, code, str(exc))
            error = error.model_copy(update={"replied_at": utc_now()})
            header = self._reply_header(error, request_id, recipient=delivery.reply_to)
            try:
                await self._publish_reply(delivery.reply_to, header, error)
            except TransportError as publish_error:
                logger.warning("could not answer a malformed message: %s", publish_error)
                return
            await _settle_quietly(delivery.ack())
        else:
            logger.warning("dead-lettering an unreadable message without reply address: %s", exc)
            await _settle_quietly(delivery.reject(requeue=False))

    # --- replying ------------------------------------------------------------------------------

    def _reply_header(self, reply: Any, request_id: str, *, recipient: str) -> EnvelopeHeader:
        header = EnvelopeHeader.for_message(
            reply, sender_id=self.node_id, sender_role="node", recipient=recipient
        )
        if header.request_id is None:
            header = EnvelopeHeader(**{**header.as_dict(), "request_id": request_id})
        return header

    async def _reply(
        self, delivery: Delivery, envelope: Envelope, request_id: str, reply: Any
    ) -> None:
        reply_to = self._reply_address(delivery, envelope.header)
        if not reply_to:
            logger.warning("request %s has no reply_to; dead-lettering it", request_id)
            await _settle_quietly(delivery.reject(requeue=False))
            return
        recipient = envelope.header.sender_id
        header = self._reply_header(reply, request_id, recipient=recipient)
        authenticator = self._authenticator(recipient)
        try:
            parts = seal_parts(header, encode_parts(reply), authenticator=authenticator)
        except CodecError as exc:
            logger.error("the reply to %s cannot be encoded: %s", request_id, exc)
            reply = self._error(
                request_id, getattr(reply, "researcher_id", None), ErrorCode.NODE_ERROR,
                "the node produced a reply that cannot be encoded",
            )  # fmt: skip
            header = self._reply_header(reply, request_id, recipient=recipient)
            parts = seal_parts(header, encode_parts(reply), authenticator=authenticator)
        size = sum(memoryview(part).nbytes for part in parts)
        if size > STORED_REPLY_LIMIT:
            # Kept nowhere: holding it would double the node's memory, and SQLite refuses
            # blobs over 1 GB. A redelivery after a crash runs the request again.
            logger.info("the reply to %s (%d bytes) is sent without being stored", request_id,
                        size)  # fmt: skip
            body: Body = tuple(parts)
        else:
            body = b"".join(parts)
            stored = StoredReply(body, reply_to, reply.type, header.message_id)
            assert self.replies is not None
            if reply.type != "error" and envelope.header.message_type not in _LIGHT_TYPES:
                # Written to disk while the reply goes out: the stored copy only serves to
                # answer a redelivery, and there is none once the request is acked.
                async with anyio.create_task_group() as group:
                    group.start_soon(self._persist, request_id, stored)
                    await self._send(delivery, request_id, body, reply_to, header, reply)
                return
            self.replies.remember(request_id, stored)
        await self._send(delivery, request_id, body, reply_to, header, reply)

    async def _persist(self, request_id: str, stored: StoredReply) -> None:
        assert self.replies is not None
        try:
            await anyio.to_thread.run_sync(self.replies.persist, request_id, stored)
        except Exception as exc:  # the reply is sent all the same
            logger.warning("the reply to %s could not be stored: %s", request_id, exc)

    async def _send_stored(self, delivery: Delivery, request_id: str, stored: StoredReply) -> None:
        header = EnvelopeHeader(
            message_id=stored.message_id, sender_id=self.node_id, sender_role="node",
            recipient=stored.reply_to, message_type=stored.message_type, request_id=request_id,
        )  # fmt: skip
        await self._send(delivery, request_id, stored.body, stored.reply_to, header)

    async def _send(
        self,
        delivery: Delivery,
        request_id: str,
        body: Body,
        reply_to: str,
        header: EnvelopeHeader,
        reply: Any = None,
    ) -> None:
        """Publish a reply, then settle its request: acked once the broker has the reply,
        given back when it could not be published."""
        message = OutgoingMessage(
            body=body,
            message_id=header.message_id,
            type=header.message_type,
            correlation_id=request_id,
            headers=amqp_headers(header, reply),
        )
        try:
            await self.transport.publish(self.topology.replies_exchange.name, reply_to, message)
        except TransportError as exc:
            # Not acked: the broker redelivers the request and the stored reply is sent then.
            logger.warning("could not publish the reply to %s: %s", request_id, exc)
            await _settle_quietly(delivery.reject(requeue=True))
            return
        await _settle_quietly(delivery.ack())

    async def _publish_reply(self, reply_to: str, header: EnvelopeHeader, reply: Any) -> None:
        await self.transport.publish(
            self.topology.replies_exchange.name,
            reply_to,
            OutgoingMessage(
                body=seal(header, reply, authenticator=self._authenticator(header.recipient)),
                message_id=header.message_id,
                type=header.message_type,
                correlation_id=header.request_id,
                headers=amqp_headers(header, reply),
            ),
        )

    async def _stored_reply(
        self, request_id: str, *, look_on_disk: bool = True
    ) -> StoredReply | None:
        assert self.replies is not None
        recent = self.replies.recent(request_id)
        if recent is not None or not look_on_disk:
            return recent
        return await anyio.to_thread.run_sync(self.replies.get, request_id)

    # --- presence ------------------------------------------------------------------------------

    def heartbeat(self, *, stopping: bool = False) -> Heartbeat:
        """The heartbeat this node publishes now."""
        datasets: list[str] = []
        if self.context is not None and hasattr(self.context, "dataset_ids"):
            datasets = self.context.dataset_ids()
        return Heartbeat(
            node_id=self.node_id,
            node_name=self.settings.display_name,
            agent_version=__version__,
            interval=self.settings.heartbeat_interval,
            datasets=datasets,
            stopping=stopping,
        )

    async def _heartbeats(self) -> None:
        interval = self.settings.heartbeat_interval
        try:
            while not self._stopping.is_set():
                await self._beat(stopping=False)
                with anyio.move_on_after(interval):
                    await self._stopping.wait()
        finally:
            with anyio.CancelScope(shield=True), anyio.move_on_after(2):
                await self._beat(stopping=True)

    async def _beat(self, *, stopping: bool) -> None:
        beat = self.heartbeat(stopping=stopping)
        header = EnvelopeHeader.for_message(
            beat, sender_id=self.node_id, sender_role="node", recipient="*"
        )
        try:
            await self.transport.publish(
                self.topology.presence_exchange.name,
                "",
                OutgoingMessage(
                    body=seal(header, beat, authenticator=self._authenticator("*")),
                    message_id=header.message_id,
                    type=beat.type,
                    headers=amqp_headers(header, beat),
                    expiration=math.ceil(3 * beat.interval),
                    persistent=False,
                ),
            )
        except TransportError as exc:
            logger.info("heartbeat not sent: %s", exc)


STORED_REPLY_LIMIT = 64 * 1024**2
"""Replies larger than this many bytes are not kept for answering redeliveries."""

_LIGHT_TYPES = frozenset({"ping_request", "list_request", "training_plan_status_request"})


async def _cancel_when_set(event: anyio.Event, scope: anyio.CancelScope) -> None:
    await event.wait()
    scope.cancel()


async def _settle_quietly(settling: Any) -> None:
    try:
        await settling
    except TransportError as exc:
        # The channel is gone: the broker redelivers the message by itself.
        logger.info("could not settle a delivery: %s", exc)
