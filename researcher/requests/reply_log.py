"""Replies that no running request takes: late ones, and parked ones.

A reply is *late* when its request already ended for that node: it is kept in a bounded log,
never put into another request's results. A reply to a request id this process has not sent is
*parked*: perhaps an earlier process sent that request and a job will resume it under the same
id (see ``already_sent`` in :meth:`Requests.send <researcher.requests.router.Requests.send>`).
The answers to the cancels the researcher sends without waiting are only logged; the log knows
which are still to come (:meth:`ReplyLog.cancels_unanswered`), so that a process can wait for
them before it ends instead of leaving them in its durable reply queue.
"""

from __future__ import annotations

import logging
from collections import OrderedDict, deque
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from broker_net.message_base import field_value, utc_now
from broker_net.messages import ErrorMessage

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class LateReply:
    """A reply that arrived after its request had ended for that node."""

    request_id: str
    node_id: str
    message: Any
    arrived_at: datetime


ParkedReply = tuple[str, Any, float]
"""A parked reply: the node id, the message and its monotonic arrival time."""


class ReplyLog:
    """Late and parked replies of one researcher.

    Args:
        late_size: late replies kept, the oldest dropped first.
        parked_limit: parked replies kept; beyond it the oldest request's go to the late log.
        ended_size: ended request ids remembered, to tell a late reply from a parked one.
    """

    def __init__(
        self, *, late_size: int = 1000, parked_limit: int = 10_000, ended_size: int = 10_000
    ) -> None:
        self.late: deque[LateReply] = deque(maxlen=late_size)
        self._ended: deque[str] = deque()
        self._ended_ids: set[str] = set()
        self._ended_size = ended_size
        self._parked: dict[str, list[ParkedReply]] = {}
        self._parked_limit = parked_limit
        self._cancels: OrderedDict[str, str] = OrderedDict()  # cancel id -> its target
        self._unanswered: set[str] = set()  # cancel ids whose answer has not come

    def expect_cancels(self, target: str, cancel_ids: Iterable[str]) -> None:
        """Cancels of ``target`` were sent: their answers are to be logged only."""
        for cancel_id in cancel_ids:
            self._cancels[cancel_id] = target
            self._unanswered.add(cancel_id)
        while len(self._cancels) > self._ended_size:
            self._unanswered.discard(self._cancels.popitem(last=False)[0])

    def cancels_unanswered(self, targets: Iterable[str]) -> set[str]:
        """The requests of ``targets`` that were cancelled on a node that has not yet
        answered the cancel."""
        wanted = set(targets)
        return {t for c in self._unanswered if (t := self._cancels.get(c, "")) in wanted}

    def cancel_answered(self, request_id: str | None, node: str, message: Any) -> bool:
        """Log ``message`` if it answers a cancel sent without waiting; True when it does."""
        target = self._cancels.get(request_id or "")
        if target is None:
            return False
        self._unanswered.discard(request_id or "")
        if isinstance(message, ErrorMessage):
            logger.info("node %s refused the cancel of request %s: %s %s", node, target,
                        message.code.name, message.message)  # fmt: skip
        else:
            cancelled, state = field_value(message, "cancelled"), field_value(message, "state")
            logger.info("node %s: request %s cancelled=%s (it was %s)", node, target,
                        cancelled, state)  # fmt: skip
        return True

    def end(self, request_id: str) -> None:
        """Remember that ``request_id`` ended: its later replies are late."""
        if request_id in self._ended_ids:
            return
        self._ended.append(request_id)
        self._ended_ids.add(request_id)
        if len(self._ended) > self._ended_size:
            self._ended_ids.discard(self._ended.popleft())

    def ended(self, request_id: str) -> bool:
        """True when ``request_id`` ended in this process."""
        return request_id in self._ended_ids

    def keep_late(self, request_id: str, node: str, message: Any) -> None:
        """Log a reply that came after its request ended for ``node``."""
        logger.info("late reply to %s from node %s kept in the late-reply log", request_id, node)
        self.late.append(LateReply(request_id, node, message, utc_now()))

    def park(self, request_id: str, node: str, message: Any, arrived: float) -> None:
        """Keep a reply to a request this process did not send, until one claims it (an
        answer to a cancel is only logged)."""
        if self.cancel_answered(request_id, node, message):
            return
        logger.info("parking a reply to unknown request %s from node %s", request_id, node)
        self._parked.setdefault(request_id, []).append((node, message, arrived))
        while sum(len(v) for v in self._parked.values()) > self._parked_limit:
            oldest = next(iter(self._parked))
            for parked_node, parked, _ in self._parked.pop(oldest):
                self.keep_late(oldest, parked_node, parked)

    def take_parked(self, request_id: str) -> list[ParkedReply]:
        """Remove and return the replies parked for ``request_id``."""
        return self._parked.pop(request_id, [])

    def parked(self) -> dict[str, list[tuple[str, Any]]]:
        """The parked replies (node id, message) by request id."""
        return {rid: [(n, m) for n, m, _ in entries] for rid, entries in self._parked.items()}
