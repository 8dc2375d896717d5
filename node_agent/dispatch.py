"""Dispatcher: one delivery from frame to handler to reply.

Each request runs once: a copy that arrives while it runs waits for it and is answered from
its stored reply, and so is a redelivery after a restart. Heavy requests (training, analytics,
preprocessing) run in a lane of their own, so pings and status requests are answered while a
node trains. A ``cancel_request`` is light too: it stops the handler of the request it names
(see :mod:`node_agent.cancels`), which is then answered ``CANCELLED``.
"""

from __future__ import annotations

import logging
from typing import Any

import anyio

from broker_net.codes import ErrorCode
from broker_net.crypto.authentication import Security
from broker_net.frames import FrameRefused, IncomingFrame, open_frame, read_message
from broker_net.message_base import field_value, utc_now
from broker_net.messages import REPLY_TYPES, CancelRequest
from broker_net.transport import Delivery
from node_agent.cancels import Cancellations
from node_agent.context import HandlerError, NodeContext
from node_agent.handlers import HEAVY_MESSAGE_TYPES, Handler
from node_agent.progress import PROGRESS_INTERVAL, ProgressForwarding
from node_agent.refusals import missing_request_id, refuse
from node_agent.replier import LIGHT_TYPES, ReplySender, settle_quietly

logger = logging.getLogger(__name__)


class Dispatcher:
    """Opens each delivery, runs its handler once, and has its reply sent.

    Args:
        handlers: handler per request type.
        context: what handlers work with.
        replier: sends replies and refusals.
        security: verifies every envelope before it is decoded; ``None`` with security off.
        max_message_size: the largest envelope accepted, in bytes.
        heavy_concurrency: heavy requests run at once.
        counters: the agent's counters (``handled``, ``duplicates``).
        progress_interval: seconds between two progress messages of a training request; 0
            sends none (see :mod:`node_agent.progress`).
    """

    def __init__(
        self,
        handlers: dict[str, Handler],
        context: NodeContext,
        replier: ReplySender,
        security: Security | None,
        *,
        max_message_size: int,
        heavy_concurrency: int,
        counters: dict[str, int],
        progress_interval: float = PROGRESS_INTERVAL,
    ) -> None:
        self.handlers = handlers
        self.context = context
        self.replier = replier
        self.security = security
        self.max_message_size = max_message_size
        self.counters = counters
        self._heavy = anyio.CapacityLimiter(heavy_concurrency)
        # The event a duplicate waits on is made only when a duplicate comes.
        self._inflight: dict[str, anyio.Event | None] = {}
        self.cancels = Cancellations()
        self.progress = ProgressForwarding(replier, progress_interval)

    async def handle_safely(self, delivery: Delivery) -> None:
        """Handle ``delivery``; a bug here dead-letters it instead of taking the agent down."""
        try:
            await self.handle(delivery)
        except Exception:
            logger.exception("unexpected failure handling message %s", delivery.message_id)
            await settle_quietly(delivery.reject(requeue=False))

    async def handle(self, delivery: Delivery) -> None:
        """Answer one delivery and settle it."""
        received_at = utc_now()
        try:
            incoming = open_frame(
                delivery, verifier=self.security, max_size=self.max_message_size,
                accept_replays=True,
            )  # fmt: skip
        except FrameRefused as refused:
            await refuse(self.replier, delivery, refused)
            return
        request_id = incoming.request_id
        if request_id is None:
            await refuse(self.replier, delivery, missing_request_id())
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
        replayed = incoming.replayed
        if replayed is not None and not delivery.redelivered:
            # A copy of a message already verified: refused. Its original was answered first.
            copy = FrameRefused(
                replayed.code, str(replayed), stage="authentication",
                envelope=incoming.envelope, cause=replayed,
            )  # fmt: skip
            await refuse(self.replier, delivery, copy)
            return
        # Light requests are answered from memory only; anything heavier may have been answered
        # by an earlier run of this agent, whose replies are on disk.
        on_disk = delivery.redelivered or incoming.header.message_type not in LIGHT_TYPES
        stored = await self.replier.stored_reply(request_id, look_on_disk=on_disk)
        if stored is not None:
            self.counters["duplicates"] += not running
            logger.info("request %s was answered before; sending the stored reply", request_id)
            await self.replier.send_stored(delivery, request_id, stored)
            return
        if running:
            await settle_quietly(delivery.reject(requeue=True))
            return
        self._inflight[request_id] = None
        try:
            reply = await self._answer(incoming, request_id)
            # Each handler builds a fresh reply: stamping it in place spares a copy.
            reply.received_at = received_at
            reply.replied_at = utc_now()
            await self.replier.reply(incoming, request_id, reply)
        finally:
            finished = self._inflight.pop(request_id)
            if finished is not None:
                finished.set()

    async def _answer(self, incoming: IncomingFrame, request_id: str) -> Any:
        error = self.replier.error
        try:
            message = read_message(incoming, max_size=self.max_message_size)
        except FrameRefused as refused:
            return error(request_id, None, refused.code, refused.reason)
        researcher_id = field_value(message, "researcher_id")
        handler = self.handlers.get(message.type)
        cancel = isinstance(message, CancelRequest)
        if (handler is None and not cancel) or type(message) not in REPLY_TYPES:
            return error(
                request_id, researcher_id, ErrorCode.UNKNOWN_MESSAGE_TYPE,
                f"this node does not handle {message.type!r} messages",
            )  # fmt: skip
        if field_value(message, "request_id") != incoming.header.request_id:
            return error(
                request_id, researcher_id, ErrorCode.INVALID_MESSAGE,
                "the envelope and the message disagree on the request id",
            )  # fmt: skip
        sender = incoming.header.sender_id
        if isinstance(message, CancelRequest):  # light: answered at once, in its own task
            return await self.cancels.answer(message, sender, self.context, self._answered)
        assert handler is not None
        if self.cancels.cancelled_early(request_id, sender):
            logger.info("request %s was cancelled before it arrived", request_id)
            return self._cancelled(request_id, researcher_id, None)
        work = self.cancels.start(request_id, sender)
        reply = None
        try:
            with work.scope:
                if message.type in HEAVY_MESSAGE_TYPES:
                    async with self._heavy, self.progress.forwarding(message, incoming):
                        work.queued = False
                        reply = await handler(message, self.context)
                else:
                    work.queued = False
                    reply = await handler(message, self.context)
        except HandlerError as exc:
            return error(request_id, researcher_id, exc.code, exc.message, exc.details)
        except Exception as exc:
            logger.exception("handler for %s failed on request %s", message.type, request_id)
            return error(
                request_id, researcher_id, ErrorCode.NODE_ERROR,
                f"the node failed to handle the request ({type(exc).__name__})",
            )  # fmt: skip
        finally:
            self.cancels.end(work)
        if work.cancelled:
            return self._cancelled(request_id, researcher_id, work.cancel_request_id)
        self.counters["handled"] += 1
        return reply

    def _cancelled(
        self, request_id: str, researcher_id: str | None, cancel_request_id: str | None
    ) -> Any:
        """The answer to a request its researcher cancelled; its partial results are dropped."""
        self.counters["cancelled"] = self.counters.get("cancelled", 0) + 1
        details = {} if cancel_request_id is None else {"cancel_request_id": cancel_request_id}
        return self.replier.error(
            request_id, researcher_id, ErrorCode.CANCELLED,
            "the request was cancelled by its researcher", details,
        )  # fmt: skip

    async def _answered(self, request_id: str) -> bool:
        """Whether the node answered ``request_id`` before (its reply is stored)."""
        return await self.replier.stored_reply(request_id, look_on_disk=True) is not None
