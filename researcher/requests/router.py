"""Requests: send one request to many nodes and collect their replies under policies.

::

    async with AmqpTransport(url) as transport, Requests(transport, "alice") as requests:
        async with requests.send(PingRequest(researcher_id="alice"), ["n1", "n2"],
                                 [DiscardOnTimeout(2)]) as fed:
            print(fed.replies(), fed.status(), fed.timings())

One consumer on the researcher's durable reply queue serves every request; replies are matched
on (request id, node id) and routed to the running
:class:`~researcher.requests.federated.FederatedRequest` of that id. A reply for a request that
already ended goes to the late-reply log, never into another request's results; a second reply
from the same node is ignored; a reply to an unknown request is parked until a resumed request
claims it (:mod:`researcher.requests.reply_log`). A second consumer reads the nodes'
heartbeats into a :class:`~researcher.requests.presence.PresenceTable`.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable, Coroutine, Iterable, Mapping, Sequence
from datetime import datetime
from functools import partial
from typing import Any, Self

import anyio
from anyio.abc import TaskGroup

from broker_net.crypto.authentication import Security
from broker_net.envelope import Authenticator, EnvelopeHeader
from broker_net.frames import FrameRefused, open_frame, read_message
from broker_net.message_base import field_value
from broker_net.messages import ErrorMessage, PingRequest, RequestMessage
from broker_net.progress_messages import ProgressMessage
from broker_net.topology import Topology
from broker_net.transport import Delivery, Transport
from researcher.errors import NodesMissingError
from researcher.requests.federated import FederatedRequest, MessagesByNode
from researcher.requests.hooks import RequestHooks
from researcher.requests.ledger import Receipt
from researcher.requests.policies import DiscardOnTimeout, Policy
from researcher.requests.presence import (
    NodePresence,
    PresenceTable,
    listen_to_heartbeats,
    log_dropped,
)
from researcher.requests.progress import route_progress, route_transfer_progress
from researcher.requests.reply_log import LateReply, ReplyLog
from researcher.requests.sending import send_cancels

logger = logging.getLogger(__name__)


class Requests:
    """The researcher's side of the network: sends requests, routes replies, tracks nodes.

    Args:
        transport: a connected transport.
        researcher_id: this researcher's id; names its reply queue.
        topology: names of exchanges and queues (namespace, queue type).
        default_timeout: seconds after which a node is given up on when the caller's policies
            set no timeout of their own; no wait is ever unbounded.
        heartbeat_patience: heartbeat intervals a node may miss before it counts as gone.
        presence_check_interval: seconds between liveness checks for StopOnDisconnect.
        security: this researcher's identity and trusted nodes; every request is then
            authenticated and every reply and heartbeat verified before it is decoded.

    Attributes:
        late_replies: replies that came after their request ended for their node.
        reply_log: the late and parked replies, and the answers still due to cancels.
    """

    def __init__(
        self,
        transport: Transport,
        researcher_id: str,
        *,
        topology: Topology | None = None,
        default_timeout: float = 600.0,
        heartbeat_patience: float = 3.0,
        presence_check_interval: float = 0.5,
        reply_prefetch: int = 512,
        security: Security | None = None,
        late_reply_log_size: int = 1000,
    ) -> None:
        self.transport = transport
        self.security = security
        self.researcher_id = researcher_id
        self.topology = topology or Topology()
        self.default_timeout = default_timeout
        self.presence = PresenceTable(patience=heartbeat_patience)
        self.presence_check_interval = presence_check_interval
        self.consumer_checks_per_tick = 16
        self.reply_log = ReplyLog(late_size=late_reply_log_size)
        self.late_replies: deque[LateReply] = self.reply_log.late
        self.reply_queue = self.topology.researcher_queue(researcher_id).name
        self._reply_prefetch = reply_prefetch
        self._pending: dict[str, FederatedRequest] = {}
        self._task_group: TaskGroup | None = None

    async def __aenter__(self) -> Self:
        await self.transport.declare(*self.topology.researcher_declarations(self.researcher_id))
        self._task_group = anyio.create_task_group()
        await self._task_group.__aenter__()
        await _start(self._task_group, self._consume_replies, self._consume_presence)
        return self

    async def __aexit__(self, *exc_info: Any) -> None:
        assert self._task_group is not None
        self._task_group.cancel_scope.cancel()
        await self._task_group.__aexit__(*exc_info)

    def send(
        self, messages: RequestMessage | MessagesByNode, nodes: Sequence[str] | None = None,
        policies: Iterable[Policy] = (), *, expiration: float | None = None,
        request_id: str | None = None, already_sent: Mapping[str, datetime] | None = None,
        hooks: RequestHooks | None = None,
    ) -> FederatedRequest:  # fmt: skip
        """Prepare a federated request; ``async with`` it to send and wait.

        Args:
            messages: one message for every node, or a :class:`MessagesByNode`.
            nodes: node ids; defaults to the keys of ``messages`` or to every online node.
            policies: when to stop waiting (see :mod:`researcher.requests.policies`).
            expiration: seconds after which a request still in a node's queue is
                dead-lettered by the broker; defaults to the longest timeout of ``policies``
                (nobody waits for an answer after it).
            request_id: the request's id; by default the one the message carries (for a
                :class:`MessagesByNode`, the first node's), or a fresh one when this process
                sent a request under it. Give it to resume a request an earlier process sent.
            already_sent: nodes an earlier process sent this request to, with the send time:
                not sent again, their replies come from the durable reply queue and their
                timeouts run from the original send.
            hooks: called as the request is sent and answered; their ``request_id`` and
                ``already_sent`` act as the arguments of the same names.

        Raises:
            ValueError: a node has no message, or is named twice; or ``request_id`` or
                ``already_sent`` is given twice, differently.
        """
        return FederatedRequest(
            self, messages, nodes, list(policies), expiration, request_id, already_sent, hooks
        )

    async def request(
        self,
        messages: RequestMessage | MessagesByNode,
        nodes: Sequence[str] | None = None,
        policies: Iterable[Policy] = (),
        *,
        expiration: float | None = None,
        request_id: str | None = None,
        already_sent: Mapping[str, datetime] | None = None,
        hooks: RequestHooks | None = None,
    ) -> FederatedRequest:
        """Send and wait; return the finished :class:`FederatedRequest` (see :meth:`send`).
        Once sent, ``messages`` are not held while the replies come in."""
        fed = self.send(messages, nodes, policies, expiration=expiration,
                        request_id=request_id, already_sent=already_sent, hooks=hooks)  # fmt: skip
        del messages
        async with fed:
            return fed

    async def ping(
        self, nodes: Sequence[str] | None = None, timeout: float = 5.0
    ) -> FederatedRequest:
        """Ping ``nodes`` (default: every node seen online) and wait at most ``timeout``."""
        return await self.request(
            PingRequest(researcher_id=self.researcher_id), nodes, [DiscardOnTimeout(timeout)]
        )

    async def list_nodes(self) -> list[NodePresence]:
        """Every node that ever sent a heartbeat, with its last one."""
        await anyio.lowlevel.checkpoint()
        return self.presence.all()

    async def wait_for_nodes(self, nodes: Iterable[str], timeout: float) -> None:
        """Wait until every node in ``nodes`` has been seen online.

        Raises:
            NodesMissingError: a ``TimeoutError`` naming the nodes not seen within ``timeout``.
        """
        wanted = set(nodes)
        with anyio.move_on_after(timeout):
            while not wanted <= set(self.presence.online_ids()):  # noqa: ASYNC110
                await anyio.sleep(0.05)
            return
        raise NodesMissingError(sorted(wanted - set(self.presence.online_ids())), timeout)

    async def cancel(
        self, request_id: str, nodes: Iterable[str], *, timeout: float = 2.0,
        expiration: float | None = None,
    ) -> list[str]:  # fmt: skip
        """Ask ``nodes`` to stop their work on ``request_id``, answers only logged (see
        :func:`~researcher.requests.sending.send_cancels`); returns the nodes asked."""
        expiration = self.default_timeout if expiration is None else expiration
        sent = await send_cancels(self, request_id, list(nodes), timeout, expiration)
        self.reply_log.expect_cancels(request_id, sent.values())
        return list(sent)

    def parked_replies(self) -> dict[str, list[tuple[str, Any]]]:
        """Replies to requests this process did not send, by request id, until a resumed
        request claims them."""
        return self.reply_log.parked()

    def authenticator_for(self, node: str) -> Authenticator | None:
        """How messages to ``node`` are authenticated (None with security off)."""
        return None if self.security is None else self.security.authenticator_for(node)

    # --- the interface of FederatedRequest -----------------------------------------------------

    def used(self, request_id: str) -> bool:
        """True when a request with this id is running or ended in this process."""
        return request_id in self._pending or self.reply_log.ended(request_id)

    def track(self, fed: FederatedRequest) -> None:
        """Route the replies to ``fed``'s request id to ``fed`` until :meth:`untrack`."""
        self._pending[fed.request_id] = fed

    def deliver_parked(self, fed: FederatedRequest) -> None:
        """Hand ``fed`` the replies parked under its request id (they came before it was
        tracked: replies to an earlier process's request), with their arrival times."""
        for node, message, arrived in self.reply_log.take_parked(fed.request_id):
            if fed.deliver(node, message, arrived) is Receipt.LATE:
                self.reply_log.keep_late(fed.request_id, node, message)

    def untrack(self, fed: FederatedRequest) -> None:
        """Stop routing replies to ``fed``: those that come later are late replies."""
        if self._pending.pop(fed.request_id, None) is not None:
            self.reply_log.end(fed.request_id)

    # --- reply and presence consumers ----------------------------------------------------------

    async def _consume_replies(self, *, task_status: anyio.abc.TaskStatus[None]) -> None:
        queue = self.topology.researcher_queue(self.researcher_id)
        async with self.transport.consume(
            queue, prefetch=self._reply_prefetch,
            on_progress=partial(route_transfer_progress, self._pending),
        ) as deliveries:  # fmt: skip
            task_status.started()
            async for delivery in deliveries:
                self._dispatch_reply(delivery)
                await delivery.ack()

    def _on_failed_transfer(self, delivery: Delivery, refused: FrameRefused) -> None:
        """A reply arrived broken (e.g. TRANSFER_CORRUPTED): an error from its node."""
        node = delivery.headers.get("sender")
        fed = self._pending.get(delivery.correlation_id or "")
        logger.warning(
            "dropping a reply to %s from node %s that could not be reassembled: %s %s",
            delivery.correlation_id, node, refused.code.name, refused.reason,
        )  # fmt: skip
        if fed is not None and isinstance(node, str):
            self._route(
                fed, node, _transfer_error(fed.request_id, self.researcher_id, node, refused)
            )

    def _open(self, delivery: Delivery, what: str) -> tuple[EnvelopeHeader, Any] | None:
        """Open, authenticate and decode a delivery; None (logged) when it must be dropped."""
        try:
            incoming = open_frame(delivery, verifier=self.security)
            return incoming.header, read_message(incoming)
        except FrameRefused as refused:
            if refused.stage == "transfer":
                self._on_failed_transfer(delivery, refused)
            else:
                log_dropped(what, refused, logger)
            return None

    def _route(self, fed: FederatedRequest, node: str, message: Any) -> None:
        if fed.deliver(node, message) is Receipt.LATE:
            self.reply_log.keep_late(fed.request_id, node, message)

    def _dispatch_reply(self, delivery: Delivery) -> None:
        opened = self._open(delivery, "reply")
        if opened is None:
            return
        header, message = opened
        node = header.sender_id
        fields = vars(message)
        if "node_id" in fields and fields["node_id"] != node:
            logger.warning("dropping a reply whose sender %s claims to be node %s", node,
                           fields["node_id"])  # fmt: skip
            return
        if isinstance(message, ProgressMessage):
            return route_progress(self._pending, node, message)
        request_id = field_value(message, "request_id") or header.request_id
        fed = self._pending.get(request_id) if request_id else None
        if fed is not None:
            self._route(fed, node, message)
        elif request_id is not None and self.reply_log.ended(request_id):
            self.reply_log.keep_late(request_id, node, message)
        else:
            # Perhaps a request an earlier process sent, that a job will resume: keep it.
            self.reply_log.park(request_id or "", node, message, time.monotonic())

    async def _consume_presence(self, *, task_status: anyio.abc.TaskStatus[None]) -> None:
        queue = self.topology.presence_queue(self.researcher_id)
        await listen_to_heartbeats(
            self.transport, queue, self.presence, self.security, task_status=task_status
        )


def _transfer_error(
    request_id: str, researcher_id: str, node: str, refused: FrameRefused
) -> ErrorMessage:
    """The error that stands for a reply of ``node`` that could not be reassembled."""
    return ErrorMessage(
        request_id=request_id,
        researcher_id=researcher_id,
        node_id=node,
        code=refused.code,
        message=f"the reply could not be received: {refused.reason}",
    )


async def _start(group: TaskGroup, *consumers: Callable[..., Coroutine[Any, Any, None]]) -> None:
    """Start each consumer in ``group``, entered; if one fails to start, ``group`` is closed
    before the error goes on, so no task group is left open around the caller's scopes."""
    try:
        for consume in consumers:
            await group.start(consume)
    except BaseException as exc:
        group.cancel_scope.cancel()
        await group.__aexit__(type(exc), exc, exc.__traceback__)
        raise
