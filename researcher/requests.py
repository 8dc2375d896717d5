"""Requests: send one request to many nodes and collect their replies under policies.

::

    async with AmqpTransport(url) as transport, Requests(transport, "alice") as requests:
        async with requests.send(PingRequest(researcher_id="alice"), ["n1", "n2"],
                                 [DiscardOnTimeout(2)]) as fed:
            print(fed.replies(), fed.status(), fed.timings())

One consumer on the researcher's durable reply queue serves every request; replies are matched
on (request id, node id). A reply for a request that already ended goes to the late-reply log,
never into another request's results; a second reply from the same node is ignored.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Self

import anyio
from anyio.abc import TaskGroup

from broker_net.chunking import TransferFailure, failure
from broker_net.codec import decode_message, encode_parts
from broker_net.crypto.authentication import Security
from broker_net.envelope import (
    Authenticator,
    Envelope,
    EnvelopeHeader,
    amqp_headers,
    seal_parts,
    unseal,
)
from broker_net.errors import DecodeError, SecurityError, TransportError, UnroutableError
from broker_net.messages import (
    ErrorCode,
    ErrorMessage,
    Heartbeat,
    PingRequest,
    RequestMessage,
    field_value,
    new_id,
    utc_now,
)
from broker_net.topology import Topology
from broker_net.transport import Delivery, OutgoingMessage, TransferProgress, Transport
from researcher.policies import (
    DiscardOnTimeout,
    NodeState,
    Policy,
    RequestStatus,
    Verdict,
    has_timeout,
    watches_presence,
)
from researcher.presence import NodePresence, PresenceTable

logger = logging.getLogger(__name__)


class MessagesByNode(dict[str, RequestMessage]):
    """A different request message for each node, keyed by node id."""


@dataclass(frozen=True, slots=True)
class NodeTiming:
    """Where one node's request time went.

    Attributes:
        sent_at: when the request was published (researcher's wall clock).
        round_trip: seconds from publish to reply received, ``None`` without a reply.
        processing: seconds the node spent on the request, from its own timestamps.
        queue_and_transit: the rest of the round trip: broker queues and the network.
    """

    sent_at: datetime
    round_trip: float | None = None
    processing: float | None = None
    queue_and_transit: float | None = None


@dataclass(frozen=True, slots=True)
class PolicyReport:
    """Which policy stopped a request, because of which node, and why."""

    policy: str
    node_id: str
    reason: str


@dataclass(frozen=True, slots=True)
class LateReply:
    """A reply that arrived after its request had ended for that node."""

    request_id: str
    node_id: str
    message: Any
    arrived_at: datetime


@dataclass(slots=True)
class _NodeRequest:
    node_id: str
    sent_at: float = 0.0
    sent_wall: datetime | None = None
    status: RequestStatus = RequestStatus.PENDING
    reply: Any = None
    error: ErrorMessage | None = None
    reply_at: float | None = None
    gone_since: float | None = None
    last_progress: float | None = None
    reason: str = ""


class FederatedRequest:
    """One request sent to several nodes, and everything that came back.

    Enter it to send and wait (``async with requests.send(...) as fed``); when the block is
    entered, the wait is over and the results below are final.
    """

    def __init__(
        self,
        requests: Requests,
        messages: RequestMessage | MessagesByNode,
        nodes: Sequence[str] | None,
        policies: Sequence[Policy],
        expiration: float | None,
        request_id: str | None = None,
        already_sent: Mapping[str, datetime] | None = None,
    ) -> None:
        self.request_id = request_id or _request_id()
        self._already_sent = dict(already_sent or {})
        self._requests = requests
        self._messages = self._per_node(messages, nodes)
        self._policies: list[Policy] = list(policies)
        if not has_timeout(self._policies):
            self._policies.append(DiscardOnTimeout(requests.default_timeout))
        self._expiration = expiration if expiration is not None else _longest(self._policies)
        self._nodes = {node: _NodeRequest(node) for node in self._messages}
        self._changed = _Wakeup()
        # What the waiting loop reads, kept up to date node by node: with hundreds of nodes,
        # rebuilding every state on every reply would cost more than the replies themselves.
        self._state: dict[str, NodeState] = {}
        self._unfinished = len(self._nodes)
        self._policies_due = True
        self._report: PolicyReport | None = None
        self._active = False

    def _per_node(
        self, messages: RequestMessage | MessagesByNode, nodes: Sequence[str] | None
    ) -> dict[str, RequestMessage]:
        if isinstance(messages, MessagesByNode):
            targets = list(messages) if nodes is None else list(nodes)
            missing = [node for node in targets if node not in messages]
            if missing:
                raise ValueError(f"MessagesByNode has no message for nodes {missing}")
            chosen = {node: messages[node] for node in targets}
        else:
            targets = list(nodes) if nodes is not None else self._requests.presence.online_ids()
            chosen = dict.fromkeys(targets, messages)
        if len(set(targets)) != len(targets):
            raise ValueError("a node is named twice")
        # One copy per distinct message, so a broadcast is encoded once for every node.
        copies: dict[int, RequestMessage] = {}
        per_node: dict[str, RequestMessage] = {}
        for node, message in chosen.items():
            copy = copies.get(id(message))
            if copy is None:
                copy = copies[id(message)] = message.model_copy(
                    update={"request_id": self.request_id}
                )
            per_node[node] = copy
        return per_node

    # --- results -------------------------------------------------------------------------------

    @property
    def nodes(self) -> list[str]:
        """The node ids this request was sent to."""
        return list(self._nodes)

    def replies(self) -> dict[str, Any]:
        """Successful replies by node id."""
        return {n: r.reply for n, r in self._nodes.items() if r.status is RequestStatus.SUCCESS}

    def errors(self) -> dict[str, ErrorMessage]:
        """ErrorMessages by node id."""
        return {n: r.error for n, r in self._nodes.items() if r.error is not None}

    def status(self) -> dict[str, RequestStatus]:
        """Each node's final status."""
        return {node: entry.status for node, entry in self._nodes.items()}

    def reasons(self) -> dict[str, str]:
        """Why each unsuccessful node ended as it did."""
        return {node: entry.reason for node, entry in self._nodes.items() if entry.reason}

    def policy_report(self) -> PolicyReport | None:
        """Which policy stopped the request, or ``None`` when it ran to completion."""
        return self._report

    @property
    def stopped(self) -> bool:
        """True when a policy stopped the request."""
        return self._report is not None

    def timings(self) -> dict[str, NodeTiming]:
        """Round-trip, processing and queue-and-transit time for each node."""
        return {node: self._timing(entry) for node, entry in self._nodes.items()}

    def _timing(self, entry: _NodeRequest) -> NodeTiming:
        sent_wall = entry.sent_wall or utc_now()
        if entry.reply_at is None:
            return NodeTiming(sent_at=sent_wall)
        round_trip = entry.reply_at - entry.sent_at
        answer = entry.reply if entry.reply is not None else entry.error
        received, replied = (
            getattr(answer, "received_at", None),
            getattr(answer, "replied_at", None),
        )
        if received is None or replied is None:
            return NodeTiming(sent_at=sent_wall, round_trip=round_trip)
        processing = max((replied - received).total_seconds(), 0.0)
        return NodeTiming(
            sent_at=sent_wall,
            round_trip=round_trip,
            processing=processing,
            queue_and_transit=max(round_trip - processing, 0.0),
        )

    # --- lifecycle -----------------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        self._requests._register(self)
        self._active = True
        try:
            await self._send_all()
            await self._wait()
        except BaseException:
            self._end()
            raise
        self._end()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self._end()

    def _end(self) -> None:
        if self._active:
            self._active = False
            for entry in self._nodes.values():
                if entry.status is RequestStatus.PENDING:
                    entry.status = RequestStatus.STOPPED
                    entry.reason = entry.reason or "the request ended before this node answered"
            self._requests._unregister(self)
            self._log_summary()

    def _log_summary(self) -> None:
        if not logger.isEnabledFor(logging.INFO):
            return  # the timings below cost more than the log line, per node and request
        for node, entry in self._nodes.items():
            timing = self._timing(entry)
            logger.info(
                "request %s node %s: %s round_trip=%s processing=%s queue_and_transit=%s",
                self.request_id, node, entry.status.value, _secs(timing.round_trip),
                _secs(timing.processing), _secs(timing.queue_and_transit),
            )  # fmt: skip

    async def _send_all(self) -> None:
        now, now_wall = time.monotonic(), utc_now()
        for node, sent_wall in self._already_sent.items():
            # Sent by an earlier process: its timeouts keep running from the original send.
            entry = self._nodes[node]
            entry.sent_wall = sent_wall
            entry.sent_at = now - max((now_wall - sent_wall).total_seconds(), 0.0)
        to_send = {n: m for n, m in self._messages.items() if n not in self._already_sent}
        shared = _shared_body(to_send)
        outgoing = {
            node: self._outgoing(node, message, shared) for node, message in to_send.items()
        }
        limits = {node: self._send_limit(self._nodes[node]) for node in outgoing}
        transport = self._requests.transport
        if len(outgoing) > 1 and min(limits.values()) >= transport.publish_timeout:
            # Every confirm is awaited at once; the transport gives up on an unconfirmed
            # publish before any policy would.
            errors = await transport.publish_many(
                self._requests.topology.requests_exchange.name,
                list(outgoing.items()),
                mandatory=True,
            )
            for node, error in zip(outgoing, errors, strict=True):
                if error is not None:
                    self._send_failed(self._nodes[node], error)
        elif len(outgoing) == 1:
            node, message = next(iter(outgoing.items()))
            await self._publish(node, message, limits[node])
        elif outgoing:
            async with anyio.create_task_group() as group:
                for node, message in outgoing.items():
                    group.start_soon(self._publish, node, message, limits[node])
        for node, parked, arrived in self._requests._take_parked(self.request_id):
            self._on_reply(node, parked, arrived)

    def _outgoing(self, node: str, message: RequestMessage, shared: Any) -> OutgoingMessage:
        """The envelope for ``node``; its send time starts now."""
        requests = self._requests
        header = EnvelopeHeader.for_message(
            message, sender_id=requests.researcher_id, sender_role="researcher", recipient=node
        )
        body = shared if shared is not None else encode_parts(message)
        parts = seal_parts(header, body, authenticator=requests.authenticator_for(node))
        entry = self._nodes[node]
        entry.sent_wall = utc_now()
        entry.sent_at = time.monotonic()
        return OutgoingMessage(
            body=b"".join(parts) if len(parts) <= 2 else tuple(parts),
            message_id=header.message_id,
            type=message.type,
            correlation_id=self.request_id,
            reply_to=requests.reply_queue,
            headers=amqp_headers(header, message),
            expiration=self._expiration,
        )

    async def _publish(self, node: str, outgoing: OutgoingMessage, limit: float) -> None:
        """Publish to one node; its status says what went wrong, if anything did."""
        transport = self._requests.transport
        exchange = self._requests.topology.requests_exchange.name
        entry = self._nodes[node]
        try:
            if limit >= transport.publish_timeout:
                # The transport gives up on an unconfirmed publish before any policy would.
                await transport.publish(exchange, node, outgoing, mandatory=True)
                return
            with anyio.move_on_after(limit) as sending:
                await transport.publish(exchange, node, outgoing, mandatory=True)
        except TransportError as exc:
            self._send_failed(entry, exc)
            return
        if sending.cancelled_caught:
            self._finish_node(
                entry, RequestStatus.TIMEOUT,
                f"the broker did not confirm the request within {limit:.3g} s (a RabbitMQ "
                "cluster with a majority of its nodes down accepts no message)",
            )  # fmt: skip

    def _send_failed(self, entry: _NodeRequest, error: TransportError) -> None:
        if isinstance(error, UnroutableError):
            self._finish_node(entry, RequestStatus.DISCONNECTED, "the node has no request queue")
        else:
            self._finish_node(entry, RequestStatus.ERROR, f"could not send: {error}")

    def _send_limit(self, entry: _NodeRequest) -> float:
        """Seconds the publish to ``entry``'s node may take: until its earliest policy
        deadline. A broker that lost its quorum neither confirms nor refuses a publish, and the
        request must still end within its policies' timeouts."""
        state = {entry.node_id: NodeState(entry.node_id, entry.sent_at, entry.status)}
        deadlines = [p.next_deadline(state) for p in self._policies]
        earliest = min((d for d in deadlines if d is not None), default=float("inf"))
        return max(earliest - time.monotonic(), 0.0)

    def _finish_node(self, entry: _NodeRequest, status: RequestStatus, reason: str) -> None:
        if entry.status is RequestStatus.PENDING:
            entry.status = status
            entry.reason = reason
            self._unfinished -= 1
            logger.warning("request %s node %s: %s (%s)", self.request_id, entry.node_id,
                           status.value, reason)  # fmt: skip
            self._touch(entry, recheck=True)

    def _touch(self, entry: _NodeRequest, *, recheck: bool, wake: bool = True) -> None:
        """Record a change to ``entry`` for the waiting loop. ``recheck`` when the policies
        must look again at once: anything but a success, which can only end the wait."""
        if self._state:
            self._state[entry.node_id] = NodeState(
                entry.node_id, entry.sent_at, entry.status, entry.gone_since,
                entry.last_progress,
            )  # fmt: skip
        self._policies_due = self._policies_due or recheck
        if wake:
            self._changed.set()

    def sent_at(self) -> dict[str, datetime]:
        """When the request went to each node (wall clock), for resuming it elsewhere."""
        return {n: e.sent_wall for n, e in self._nodes.items() if e.sent_wall is not None}

    def _on_reply(self, node: str, message: Any, arrived: float | None = None) -> None:
        entry = self._nodes.get(node)
        arrived = time.monotonic() if arrived is None else arrived
        if entry is None:
            logger.warning("reply to %s from node %s, which was not asked", self.request_id, node)
            return
        if isinstance(message, ErrorMessage) and message.code is ErrorCode.REPLAYED_MESSAGE:
            # The node refused a second copy of a request it had accepted (a publish repeated
            # after its confirm was lost, or someone's replay): the node answers the copy it
            # accepted, and this refusal is not that answer.
            logger.info("request %s: node %s refused a copy it had already accepted",
                        self.request_id, node)  # fmt: skip
            return
        if entry.reply is not None or entry.error is not None:
            logger.info("duplicate reply to %s from %s ignored", self.request_id, node)
            return
        if entry.status.finished:
            self._requests._late(self.request_id, node, message)
            return
        entry.reply_at = arrived
        self._unfinished -= 1
        if isinstance(message, ErrorMessage):
            entry.error = message
            entry.status = RequestStatus.ERROR
            entry.reason = f"{message.code.name}: {message.message}"
        else:
            entry.reply = message
            entry.status = RequestStatus.SUCCESS
        self._touch(entry, recheck=entry.error is not None)

    def _on_progress(self, node: str, arrived: float) -> None:
        """A chunk of ``node``'s reply arrived: its timeouts now run from ``arrived``."""
        entry = self._nodes.get(node)
        if entry is not None and entry.status is RequestStatus.PENDING:
            first = entry.last_progress is None
            entry.last_progress = arrived
            # The first chunk may give a stall policy a deadline; later ones only move it on.
            self._touch(entry, recheck=first, wake=first)

    def _on_failed_transfer(self, node: str, code: ErrorCode, reason: str) -> None:
        """The reply of ``node`` arrived broken (e.g. TRANSFER_CORRUPTED): an error for it."""
        error = ErrorMessage(
            request_id=self.request_id,
            researcher_id=self._requests.researcher_id,
            node_id=node,
            code=code,
            message=f"the reply could not be received: {reason}",
        )
        self._on_reply(node, error)

    async def _wait(self) -> None:
        watch = watches_presence(self._policies)
        check_every = self._requests.presence_check_interval
        next_check = 0.0
        self._state = self._states()
        next_deadline: float | None = None
        while True:
            now = time.monotonic()
            if watch and now >= next_check:
                await self._update_presence(now)
                now = time.monotonic()
                next_check = now + check_every
            # Policies run when something they care about changed or a deadline passed; a
            # success only moves deadlines later, so the earliest one known stays a safe bound.
            if self._policies_due or (next_deadline is not None and now >= next_deadline):
                self._policies_due = False
                if self._apply_policies(now):
                    return
                deadlines = [policy.next_deadline(self._state) for policy in self._policies]
                next_deadline = min((d for d in deadlines if d is not None), default=None)
            if self._unfinished <= 0:
                return
            wake_at = next_deadline if next_deadline is not None else now + 3600.0
            if watch:
                wake_at = min(wake_at, next_check)
            await self._changed.wait(wake_at)

    def _states(self) -> dict[str, NodeState]:
        return {
            node: NodeState(
                node, entry.sent_at, entry.status, entry.gone_since, entry.last_progress
            )
            for node, entry in self._nodes.items()
        }

    def _apply_policies(self, now: float) -> bool:
        for policy in self._policies:
            verdict: Verdict = policy.evaluate(self._state, now)
            for node, status in verdict.marks.items():
                reason = verdict.reasons.get(node) or verdict.reason or repr(policy)
                self._finish_node(self._nodes[node], status, reason)
            if verdict.stop_because_of is not None:
                self._report = PolicyReport(
                    policy=type(policy).__name__,
                    node_id=verdict.stop_because_of,
                    reason=verdict.reason,
                )
                logger.warning("request %s stopped by %r: %s", self.request_id, policy,
                               verdict.reason)  # fmt: skip
                return True
        return False

    async def _update_presence(self, now: float) -> None:
        requests = self._requests
        pending = [e for e in self._nodes.values() if e.status is RequestStatus.PENDING]
        for entry in pending:
            gone = requests.presence.gone_since(entry.node_id, now)
            if gone is not None and entry.gone_since is None:
                entry.gone_since = gone
                self._touch(entry, recheck=True, wake=False)
        for entry in pending[: requests.consumer_checks_per_tick]:
            if entry.gone_since is not None:
                continue
            queue = requests.topology.node_queue(entry.node_id).name
            try:
                consumers = await requests.transport.consumer_count(queue)
            except TransportError as exc:
                logger.info("cannot check consumers of %s: %s", queue, exc)
                continue
            if not consumers:
                entry.gone_since = now
                self._touch(entry, recheck=True, wake=False)
        if requests.consumer_checks_per_tick < len(pending):
            # Rotate so every pending node gets checked over a few ticks.
            keys = list(self._nodes)
            self._nodes = dict(
                (key, self._nodes[key])
                for key in keys[requests.consumer_checks_per_tick :]
                + keys[: requests.consumer_checks_per_tick]
            )


class Requests:
    """The researcher's side of the network: sends requests, collects replies, tracks nodes.

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
        self.late_replies: deque[LateReply] = deque(maxlen=late_reply_log_size)
        self.reply_queue = self.topology.researcher_queue(researcher_id).name
        self._reply_prefetch = reply_prefetch
        self._pending: dict[str, FederatedRequest] = {}
        self._ended: deque[str] = deque(maxlen=10_000)
        self._parked: dict[str, list[tuple[str, Any, float]]] = {}
        self._parked_limit = 10_000
        self._task_group: TaskGroup | None = None

    async def __aenter__(self) -> Self:
        await self.transport.declare(*self.topology.researcher_declarations(self.researcher_id))
        self._task_group = anyio.create_task_group()
        await self._task_group.__aenter__()
        await self._task_group.start(self._consume_replies)
        await self._task_group.start(self._consume_presence)
        return self

    async def __aexit__(self, *exc_info: Any) -> None:
        assert self._task_group is not None
        self._task_group.cancel_scope.cancel()
        await self._task_group.__aexit__(*exc_info)

    def send(
        self,
        messages: RequestMessage | MessagesByNode,
        nodes: Sequence[str] | None = None,
        policies: Iterable[Policy] = (),
        *,
        expiration: float | None = None,
        request_id: str | None = None,
        already_sent: Mapping[str, datetime] | None = None,
    ) -> FederatedRequest:
        """Prepare a federated request; ``async with`` it to send and wait.

        Args:
            messages: one message for every node, or a :class:`MessagesByNode`.
            nodes: node ids; defaults to the keys of ``messages`` or to every online node.
            policies: when to stop waiting (see :mod:`researcher.policies`).
            expiration: seconds after which an unclaimed request is dead-lettered by the
                broker; defaults to the longest policy timeout.
            request_id: reuse this id instead of a fresh one (to resume a request).
            already_sent: nodes an earlier process already sent this request to, with the
                send time; they are not sent again, their replies are collected from the
                durable reply queue and their timeouts run from the original send.

        Raises:
            ValueError: a node has no message, or is named twice.
        """
        return FederatedRequest(
            self, messages, nodes, list(policies), expiration, request_id, already_sent
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
    ) -> FederatedRequest:
        """Send and wait; return the finished :class:`FederatedRequest` (see :meth:`send`)."""
        async with self.send(
            messages, nodes, policies, expiration=expiration, request_id=request_id,
            already_sent=already_sent,
        ) as fed:  # fmt: skip
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
            TimeoutError: some node did not show up within ``timeout`` seconds.
        """
        wanted = set(nodes)
        with anyio.fail_after(timeout):
            while not wanted <= set(self.presence.online_ids()):  # noqa: ASYNC110
                await anyio.sleep(0.05)

    # --- reply and presence consumers ----------------------------------------------------------

    def _register(self, fed: FederatedRequest) -> None:
        self._pending[fed.request_id] = fed

    def _unregister(self, fed: FederatedRequest) -> None:
        if self._pending.pop(fed.request_id, None) is not None:
            self._ended.append(fed.request_id)

    def _take_parked(self, request_id: str) -> list[tuple[str, Any, float]]:
        return self._parked.pop(request_id, [])

    def parked_replies(self) -> dict[str, list[tuple[str, Any]]]:
        """Replies to requests this process did not send, by request id, until a resumed
        request claims them."""
        return {rid: [(n, m) for n, m, _ in entries] for rid, entries in self._parked.items()}

    def _late(self, request_id: str, node: str, message: Any) -> None:
        logger.info("late reply to %s from node %s kept in the late-reply log", request_id, node)
        self.late_replies.append(LateReply(request_id, node, message, utc_now()))

    async def _consume_replies(self, *, task_status: anyio.abc.TaskStatus[None]) -> None:
        queue = self.topology.researcher_queue(self.researcher_id)
        async with self.transport.consume(
            queue, prefetch=self._reply_prefetch, on_progress=self._on_progress
        ) as deliveries:
            task_status.started()
            async for delivery in deliveries:
                refused = failure(delivery)
                if refused is None:
                    self._dispatch_reply(delivery.body)
                else:
                    self._on_failed_transfer(delivery, refused)
                await delivery.ack()

    def _on_progress(self, progress: TransferProgress) -> None:
        # Chunk headers are not authenticated: progress only ever postpones a timeout.
        fed = self._pending.get(progress.correlation_id or "")
        node = progress.headers.get("sender")
        if fed is not None and isinstance(node, str):
            fed._on_progress(node, time.monotonic())

    def _on_failed_transfer(self, delivery: Delivery, refused: TransferFailure) -> None:
        node = delivery.headers.get("sender")
        fed = self._pending.get(delivery.correlation_id or "")
        logger.warning(
            "dropping a reply to %s from node %s that could not be reassembled: %s %s",
            delivery.correlation_id, node, refused.code, refused.reason,
        )  # fmt: skip
        if fed is not None and isinstance(node, str):
            code = ErrorCode.__members__.get(refused.code, ErrorCode.TRANSFER_ERROR)
            fed._on_failed_transfer(node, code, refused.reason)

    def authenticator_for(self, node: str) -> Authenticator | None:
        """How messages to ``node`` are authenticated (None with security off)."""
        return None if self.security is None else self.security.authenticator_for(node)

    def _verified(self, body: bytes | bytearray | memoryview, what: str) -> Envelope | None:
        """Unseal and authenticate an envelope; None (logged) when it must be dropped."""
        try:
            envelope = unseal(body)
            if self.security is not None:
                self.security.verify(envelope)
        except (DecodeError, SecurityError) as exc:
            logger.warning("dropping a %s: %s: %s", what, type(exc).__name__, exc)
            return None
        return envelope

    def _dispatch_reply(self, body: bytes | bytearray | memoryview) -> None:
        envelope = self._verified(body, "reply")
        if envelope is None:
            return
        try:
            message = decode_message(envelope.body)
        except DecodeError as exc:
            logger.warning("dropping an unreadable reply: %s", exc)
            return
        node = envelope.header.sender_id
        fields = vars(message)
        if "node_id" in fields and fields["node_id"] != node:
            logger.warning("dropping a reply whose sender %s claims to be node %s", node,
                           fields["node_id"])  # fmt: skip
            return
        request_id = field_value(message, "request_id") or envelope.header.request_id
        fed = self._pending.get(request_id) if request_id else None
        if fed is not None:
            fed._on_reply(node, message)
        elif request_id is not None and request_id in self._ended:
            self._late(request_id, node, message)
        else:
            # Perhaps a request an earlier process sent, that a job will resume: keep it.
            logger.info("parking a reply to unknown request %s from node %s", request_id, node)
            self._parked.setdefault(request_id or "", []).append((node, message, time.monotonic()))
            while sum(len(v) for v in self._parked.values()) > self._parked_limit:
                oldest = next(iter(self._parked))
                for parked_node, parked, _ in self._parked.pop(oldest):
                    self._late(oldest, parked_node, parked)

    async def _consume_presence(self, *, task_status: anyio.abc.TaskStatus[None]) -> None:
        queue = self.topology.presence_queue(self.researcher_id)
        async with self.transport.consume(queue, prefetch=256) as deliveries:
            task_status.started()
            async for delivery in deliveries:
                envelope = self._verified(delivery.body, "heartbeat")
                try:
                    beat = decode_message(envelope.body) if envelope is not None else None
                except DecodeError as exc:
                    logger.warning("dropping an unreadable heartbeat: %s", exc)
                else:
                    if (
                        envelope is not None
                        and isinstance(beat, Heartbeat)
                        and beat.node_id == envelope.header.sender_id
                    ):
                        self.presence.update(
                            beat, arrived=utc_now(), arrived_monotonic=time.monotonic()
                        )
                await delivery.ack()


class _Wakeup:
    """Wakes the task waiting for a request's changes, or lets it sleep until a deadline.

    What an anyio Event under ``move_on_after`` does, at a fifth of the cost: one future per
    wait and one timer. The request layer runs on asyncio (as aio-pika does).
    """

    __slots__ = ("_pending", "_waiter")

    def __init__(self) -> None:
        self._pending = False
        self._waiter: asyncio.Future[None] | None = None

    def set(self) -> None:
        """Wake the waiting task now, or make its next wait return at once."""
        waiter = self._waiter
        if waiter is None:
            self._pending = True
        elif not waiter.done():
            waiter.set_result(None)

    async def wait(self, until: float) -> None:
        """Return after :meth:`set` (even one before this call) or at monotonic ``until``."""
        if self._pending:
            self._pending = False
            await anyio.lowlevel.checkpoint()
            return
        loop = asyncio.get_running_loop()
        waiter = self._waiter = loop.create_future()
        timer = loop.call_later(max(until - time.monotonic(), 0.0), _wake, waiter)
        try:
            await waiter
        finally:
            timer.cancel()
            self._waiter = None


def _wake(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


def _shared_body(messages: Mapping[str, RequestMessage]) -> Any:
    """Encode a broadcast message once for all nodes."""
    unique = {id(message) for message in messages.values()}
    if len(messages) > 1 and len(unique) == 1:
        return encode_parts(next(iter(messages.values())))
    return None


def _request_id() -> str:
    return new_id("request")


def _longest(policies: Sequence[Policy]) -> float | None:
    timeouts = [getattr(p, "timeout", None) for p in policies]
    values = [t for t in timeouts if isinstance(t, float)]
    return max(values) + 60.0 if values else None


def _secs(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"
