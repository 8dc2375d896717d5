"""Training progress from the nodes: routed to its running request, handed to its hook.

The reply consumer (:class:`~researcher.requests.router.Requests`) gives each authenticated
:class:`~broker_net.progress_messages.ProgressMessage` to :func:`route_progress`, which finds
the running :class:`~researcher.requests.federated.FederatedRequest` of its request id. There
it counts as the node's activity (its timeouts and stall clock run from it, see
:mod:`researcher.requests.policies`) and, through the request's :class:`ProgressRelay`, reaches
the ``on_progress`` hook of its :class:`~researcher.requests.hooks.RequestHooks` as a
:class:`ProgressEvent`, called from the task waiting for the request. Progress is best effort:
a message older than one already seen from the same node is ignored, and progress for a
request that is unknown or over, or from a node it does not wait for, is dropped quietly.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING

from broker_net.message_base import utc_now
from broker_net.progress_messages import ProgressMessage
from broker_net.transport import TransferProgress
from researcher.requests.ledger import NodeLedger

if TYPE_CHECKING:
    from researcher.requests.federated import FederatedRequest

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class ProgressEvent:
    """One node's progress on a running request, as a monitor receives it.

    Attributes:
        sequence: the node's count of progress messages for this request, from 0.
        sent_at: when the node sent it (node clock).
        received_at: when it arrived (researcher clock).
        values: what the plan reported, e.g. ``iteration`` and ``loss``.
    """

    node_id: str
    node_name: str
    request_id: str
    experiment_id: str
    round: int
    sequence: int
    sent_at: datetime
    received_at: datetime
    values: dict[str, float]

    @classmethod
    def from_message(cls, message: ProgressMessage) -> ProgressEvent:
        """The event of ``message``, received now."""
        return cls(
            node_id=message.node_id, node_name=message.node_name, request_id=message.request_id,
            experiment_id=message.experiment_id, round=message.round, sequence=message.sequence,
            sent_at=message.sent_at, received_at=utc_now(), values=dict(message.values),
        )  # fmt: skip


ProgressHook = Callable[[ProgressEvent], None]
"""Receives each progress event of a request; called from the task waiting for it."""


class ProgressRelay:
    """A request's progress: a sign of work from its node in the request's ledger, and the
    newest event of each node kept until the waiting task hands it to the hook (:meth:`flush`).

    Args:
        nodes: the request's ledger.
        hook: the request's ``on_progress`` hook, if any.
    """

    def __init__(self, nodes: NodeLedger, hook: ProgressHook | None) -> None:
        self.request_id = nodes.request_id
        self._nodes = nodes
        self._hook = hook
        self._sequences: dict[str, int] = {}
        self._pending: dict[str, ProgressEvent] = {}

    def offer(self, node: str, message: ProgressMessage) -> bool:
        """Take ``node``'s (authenticated) progress message; False when the request does not
        wait for the node. A message older than one the node sent before only counts as a
        sign of work."""
        if not self._nodes.progress(node, time.monotonic()):
            return False
        if message.sequence <= self._sequences.get(node, -1):
            logger.debug("request %s: older progress from %s ignored", self.request_id, node)
            return True
        self._sequences[node] = message.sequence
        if self._hook is not None:
            self._pending[node] = ProgressEvent.from_message(message)
            self._nodes.changed.set()
        return True

    def flush(self) -> None:
        """Hand every kept event to the hook; an exception in it is logged, never raised."""
        if not self._pending or self._hook is None:
            return
        events = list(self._pending.values())
        self._pending.clear()
        for event in events:
            try:
                self._hook(event)
            except Exception:
                logger.exception("request %s: the progress hook failed", self.request_id)


def route_transfer_progress(
    running: Mapping[str, FederatedRequest], progress: TransferProgress
) -> None:
    """A chunk of a reply arrived: a sign of work from its node for its running request.

    Chunk headers are not authenticated: a chunk only ever postpones a timeout."""
    fed = running.get(progress.correlation_id or "")
    node = progress.headers.get("sender")
    if fed is not None and isinstance(node, str):
        fed.progress(node, time.monotonic())


def route_progress(
    running: Mapping[str, FederatedRequest], node: str, message: ProgressMessage
) -> None:
    """Give ``message``, from ``node`` (authenticated), to its running request; dropped
    quietly when there is none or the request no longer waits for the node."""
    fed = running.get(message.request_id)
    if fed is None or not fed.progress_relay.offer(node, message):
        logger.debug("dropping progress of request %s from %s: not waited for", message.request_id,
                     node)  # fmt: skip
