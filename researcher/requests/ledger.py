"""Each node's part of one federated request: status, answer and times.

:class:`NodeLedger` is what a :class:`~researcher.requests.federated.FederatedRequest` knows of
its nodes. It keeps the :class:`~researcher.requests.policies.NodeState` its policies read up
to date node by node (with hundreds of nodes, rebuilding every state on every reply would cost
more than the replies themselves), and wakes the request's waiting loop through a
:class:`Wakeup` when something changed.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from enum import Enum
from typing import Any

import anyio

from broker_net.codes import ErrorCode
from broker_net.message_base import utc_now
from broker_net.messages import ErrorMessage
from researcher.requests.policies import NodeState, RequestStatus

logger = logging.getLogger(__name__)


class Receipt(Enum):
    """What became of a reply handed to a request."""

    TAKEN = "taken"
    """It is the node's answer."""
    IGNORED = "ignored"
    """A duplicate, a node's refusal of a copy it had already accepted, or an unasked node."""
    LATE = "late"
    """The node's part of the request had already ended: the reply belongs in the late log."""


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


@dataclass(slots=True)
class NodeEntry:
    """One node's part of a request, as it stands."""

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
    published: bool = False
    """The broker took the request for this node (it may be working on it)."""

    def state(self) -> NodeState:
        """What a policy may read of this node."""
        return NodeState(
            self.node_id, self.sent_at, self.status, self.gone_since, self.last_progress
        )

    def timing(self) -> NodeTiming:
        """Round trip, processing and queue-and-transit time, as far as known."""
        sent_wall = self.sent_wall or utc_now()
        if self.reply_at is None:
            return NodeTiming(sent_at=sent_wall)
        round_trip = self.reply_at - self.sent_at
        answer = self.reply if self.reply is not None else self.error
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


class NodeLedger:
    """The nodes of one request, their states for the policies, and the changes to them.

    Args:
        request_id: the request, for log lines.
        nodes: the node ids, in order.
        keep_answered: collect the nodes that answered for :meth:`take_answered`.

    Attributes:
        entries: each node's :class:`NodeEntry`, by node id.
        unfinished: nodes still pending.
        policies_due: the policies must look again at once (something but a success changed).
        changed: set whenever a node changes; the waiting loop sleeps on it.
    """

    def __init__(self, request_id: str, nodes: Iterable[str], *, keep_answered: bool) -> None:
        self.request_id = request_id
        self.entries = {node: NodeEntry(node) for node in nodes}
        self.unfinished = len(self.entries)
        self.policies_due = True
        self.changed = Wakeup()
        self.states: dict[str, NodeState] = {}
        self._answered: list[str] | None = [] if keep_answered else None

    def watch(self) -> dict[str, NodeState]:
        """Build every node's state; from now on each change updates it."""
        self.states = {node: entry.state() for node, entry in self.entries.items()}
        return self.states

    def finish(self, entry: NodeEntry, status: RequestStatus, reason: str) -> None:
        """End a pending node's part with ``status`` (not an answer: a timeout, a failure)."""
        if entry.status is RequestStatus.PENDING:
            entry.status = status
            entry.reason = reason
            self.unfinished -= 1
            logger.warning("request %s node %s: %s (%s)", self.request_id, entry.node_id,
                           status.value, reason)  # fmt: skip
            self.touch(entry, recheck=True)

    def touch(self, entry: NodeEntry, *, recheck: bool, wake: bool = True) -> None:
        """Record a change to ``entry`` for the waiting loop. ``recheck`` when the policies
        must look again at once: anything but a success, which can only end the wait."""
        if self.states:
            self.states[entry.node_id] = NodeState(
                entry.node_id, entry.sent_at, entry.status, entry.gone_since,
                entry.last_progress,
            )  # fmt: skip
        self.policies_due = self.policies_due or recheck
        if wake:
            self.changed.set()

    def answer(self, node: str, message: Any, arrived: float) -> Receipt:
        """Take ``message`` (a reply or an ErrorMessage) as ``node``'s answer, if it is one."""
        entry = self.entries.get(node)
        if entry is None:
            logger.warning("reply to %s from node %s, which was not asked", self.request_id, node)
            return Receipt.IGNORED
        if isinstance(message, ErrorMessage) and message.code is ErrorCode.REPLAYED_MESSAGE:
            # The node refused a second copy of a request it had accepted (a publish repeated
            # after its confirm was lost, or someone's replay): the node answers the copy it
            # accepted, and this refusal is not that answer.
            logger.info("request %s: node %s refused a copy it had already accepted",
                        self.request_id, node)  # fmt: skip
            return Receipt.IGNORED
        if entry.reply is not None or entry.error is not None:
            logger.info("duplicate reply to %s from %s ignored", self.request_id, node)
            return Receipt.IGNORED
        if entry.status.finished:
            return Receipt.LATE
        entry.reply_at = arrived
        self.unfinished -= 1
        if isinstance(message, ErrorMessage):
            entry.error = message
            entry.status = RequestStatus.ERROR
            entry.reason = f"{message.code.name}: {message.message}"
        else:
            entry.reply = message
            entry.status = RequestStatus.SUCCESS
        if self._answered is not None:
            self._answered.append(node)
        self.touch(entry, recheck=entry.error is not None)
        return Receipt.TAKEN

    def take_answered(self) -> list[str]:
        """The nodes that answered since the last call, in order of arrival."""
        answered = self._answered
        if not answered:
            return []
        self._answered = []
        return answered

    def progress(self, node: str, arrived: float) -> bool:
        """A sign of work from ``node`` (a chunk of its reply, a progress message): its
        timeouts now run from ``arrived``. False when the node is not waited for."""
        entry = self.entries.get(node)
        if entry is None or entry.status is not RequestStatus.PENDING:
            return False
        first = entry.last_progress is None
        entry.last_progress = max(arrived, entry.last_progress or arrived)
        # The first sign may give a stall policy a deadline; later ones only move it on.
        self.touch(entry, recheck=first, wake=first)
        return True

    def pending(self) -> list[NodeEntry]:
        """The nodes still waited for, in order."""
        return [e for e in self.entries.values() if e.status is RequestStatus.PENDING]

    def rotate(self, count: int) -> None:
        """Move the first ``count`` nodes to the end (consumer checks take turns)."""
        keys = list(self.entries)
        self.entries = {key: self.entries[key] for key in keys[count:] + keys[:count]}

    def unanswered(self) -> list[str]:
        """The nodes that were sent the request and did not answer it (yet)."""
        entries = self.entries.items()
        return [n for n, e in entries if e.published and e.reply is None and e.error is None]

    def end(self) -> None:
        """Stop every pending node: the request ended before it answered."""
        for entry in self.entries.values():
            if entry.status is RequestStatus.PENDING:
                entry.status = RequestStatus.STOPPED
                entry.reason = entry.reason or "the request ended before this node answered"

    def log_summary(self) -> None:
        """Log each node's status and times (at INFO)."""
        if not logger.isEnabledFor(logging.INFO):
            return  # the timings below cost more than the log line, per node and request
        for node, entry in self.entries.items():
            timing = entry.timing()
            logger.info(
                "request %s node %s: %s round_trip=%s processing=%s queue_and_transit=%s",
                self.request_id, node, entry.status.value, _secs(timing.round_trip),
                _secs(timing.processing), _secs(timing.queue_and_transit),
            )  # fmt: skip


class Wakeup:
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


def _secs(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"
