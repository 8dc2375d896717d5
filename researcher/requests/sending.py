"""Publishing one federated request to its nodes.

Each node's message is framed (:func:`broker_net.frames.frame`) for that node and published to
the requests exchange with the researcher's reply queue as ``reply_to``; a broadcast is encoded
once for every node. A publish may take until the node's earliest policy deadline: a broker
that lost its quorum neither confirms nor refuses it, and the request must still end within
its policies' timeouts. What went wrong with a node's publish ends that node's part in the
request's :class:`~researcher.requests.ledger.NodeLedger`. :func:`publish_cancels` sends the
cancels of a request the same way.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any

import anyio

from broker_net.codec import encode_parts
from broker_net.envelope import EnvelopeHeader
from broker_net.errors import TransportError, UnroutableError
from broker_net.frames import frame
from broker_net.message_base import utc_now
from broker_net.messages import CancelRequest, RequestMessage
from broker_net.transport import OutgoingMessage
from researcher.requests.ledger import NodeEntry, NodeLedger
from researcher.requests.policies import NodeState, Policy, RequestStatus

if TYPE_CHECKING:
    from researcher.requests.router import Requests

logger = logging.getLogger(__name__)


class RequestSender:
    """Sends one request's messages to its nodes.

    Args:
        requests: the researcher's request layer (transport, topology, identity).
        ledger: the request's nodes; send times and send failures are written there.
        policies: the request's policies, whose deadlines bound each publish.
        expiration: seconds after which the broker dead-letters an unclaimed request.
    """

    def __init__(
        self,
        requests: Requests,
        ledger: NodeLedger,
        policies: Sequence[Policy],
        expiration: float | None,
    ) -> None:
        self.requests = requests
        self.ledger = ledger
        self.policies = policies
        self.expiration = expiration

    async def send(
        self, messages: Mapping[str, RequestMessage], already_sent: Mapping[str, datetime]
    ) -> None:
        """Publish to every node but those ``already_sent`` (an earlier process sent them
        the request: their timeouts keep running from the original send)."""
        entries = self.ledger.entries
        now, now_wall = time.monotonic(), utc_now()
        for node, sent_wall in already_sent.items():
            entry = entries[node]
            entry.sent_wall = sent_wall
            entry.published = True
            entry.sent_at = now - max((now_wall - sent_wall).total_seconds(), 0.0)
        to_send = {n: m for n, m in messages.items() if n not in already_sent}
        shared = _shared_body(to_send)
        outgoing = {
            node: self._outgoing(node, message, shared) for node, message in to_send.items()
        }
        limits = {node: self._send_limit(entries[node]) for node in outgoing}
        transport = self.requests.transport
        if len(outgoing) > 1 and min(limits.values()) >= transport.publish_timeout:
            # Every confirm is awaited at once; the transport gives up on an unconfirmed
            # publish before any policy would.
            errors = await transport.publish_many(
                self.requests.topology.requests_exchange.name,
                list(outgoing.items()),
                mandatory=True,
            )
            for node, error in zip(outgoing, errors, strict=True):
                if error is not None:
                    self._send_failed(entries[node], error)
                else:
                    entries[node].published = True
        elif len(outgoing) == 1:
            node, message = next(iter(outgoing.items()))
            await self._publish(node, message, limits[node])
        elif outgoing:
            async with anyio.create_task_group() as group:
                for node, message in outgoing.items():
                    group.start_soon(self._publish, node, message, limits[node])

    def _outgoing(self, node: str, message: RequestMessage, shared: Any) -> OutgoingMessage:
        """The envelope for ``node``; its send time starts now."""
        requests = self.requests
        header = EnvelopeHeader.for_message(
            message, sender_id=requests.researcher_id, sender_role="researcher", recipient=node
        )
        outgoing = frame(
            header, message, authenticator=requests.authenticator_for(node), encoded=shared,
            reply_to=requests.reply_queue, expiration=self.expiration,
        )  # fmt: skip
        entry = self.ledger.entries[node]
        entry.sent_wall = utc_now()
        entry.sent_at = time.monotonic()
        return outgoing

    async def _publish(self, node: str, outgoing: OutgoingMessage, limit: float) -> None:
        """Publish to one node; its status says what went wrong, if anything did."""
        transport = self.requests.transport
        exchange = self.requests.topology.requests_exchange.name
        entry = self.ledger.entries[node]
        try:
            if limit >= transport.publish_timeout:
                # The transport gives up on an unconfirmed publish before any policy would.
                await transport.publish(exchange, node, outgoing, mandatory=True)
                entry.published = True
                return
            with anyio.move_on_after(limit) as sending:
                await transport.publish(exchange, node, outgoing, mandatory=True)
                entry.published = True
        except TransportError as exc:
            self._send_failed(entry, exc)
            return
        if sending.cancelled_caught:
            self.ledger.finish(
                entry, RequestStatus.TIMEOUT,
                f"the broker did not confirm the request within {limit:.3g} s (a RabbitMQ "
                "cluster with a majority of its nodes down accepts no message)",
            )  # fmt: skip

    def _send_failed(self, entry: NodeEntry, error: TransportError) -> None:
        if isinstance(error, UnroutableError):
            self.ledger.finish(entry, RequestStatus.DISCONNECTED, "the node has no request queue")
        else:
            self.ledger.finish(entry, RequestStatus.ERROR, f"could not send: {error}")

    def _send_limit(self, entry: NodeEntry) -> float:
        """Seconds the publish to ``entry``'s node may take: until its earliest policy
        deadline."""
        state = {entry.node_id: NodeState(entry.node_id, entry.sent_at, entry.status)}
        deadlines = [p.next_deadline(state) for p in self.policies]
        earliest = min((d for d in deadlines if d is not None), default=float("inf"))
        return max(earliest - time.monotonic(), 0.0)


def _shared_body(messages: Mapping[str, RequestMessage]) -> Any:
    """Encode a broadcast message once for all nodes."""
    unique = {id(message) for message in messages.values()}
    if len(messages) > 1 and len(unique) == 1:
        return encode_parts(next(iter(messages.values())))
    return None


async def send_cancels(
    requests: Requests,
    request_id: str,
    nodes: Sequence[str],
    timeout: float,
    expiration: float | None,
) -> dict[str, str]:
    """Ask ``nodes`` to stop their work on request ``request_id``: publish a
    :class:`CancelRequest` to each, without waiting for their answers.

    Each node stops the request if it runs or waits there (and answers it with a ``CANCELLED``
    error), or refuses it if it comes later. Failures are logged at INFO, never raised; the
    publishes are given up after ``timeout`` seconds.

    Args:
        expiration: seconds after which a cancel still in a node's queue is dropped.

    Returns:
        The id of each cancel the broker took, by node.
    """
    if not nodes:
        return {}
    ids: dict[str, str] = {}
    try:
        with anyio.move_on_after(timeout) as scope:
            ids = await _publish_cancels(requests, request_id, nodes, expiration)
    except Exception as exc:
        logger.info("could not cancel request %s on %s: %s", request_id, nodes, exc)
        return {}
    if scope.cancelled_caught:
        logger.info("cancelling request %s on %s took over %g s; given up", request_id,
                    nodes, timeout)  # fmt: skip
    if ids:
        logger.info("request %s: cancel sent to %s", request_id, ", ".join(ids))
    return ids


async def _publish_cancels(
    requests: Requests, request_id: str, nodes: Sequence[str], expiration: float | None
) -> dict[str, str]:
    outgoing: list[tuple[str, OutgoingMessage]] = []
    ids: dict[str, str] = {}
    for node in nodes:
        message = CancelRequest(researcher_id=requests.researcher_id, target_request_id=request_id)
        header = EnvelopeHeader.for_message(
            message, sender_id=requests.researcher_id, sender_role="researcher", recipient=node
        )
        ids[node] = message.request_id
        outgoing.append((node, frame(
            header, message, authenticator=requests.authenticator_for(node),
            reply_to=requests.reply_queue, expiration=expiration,
        )))  # fmt: skip
    exchange = requests.topology.requests_exchange.name
    errors = await requests.transport.publish_many(exchange, outgoing, mandatory=True)
    for node, error in zip(nodes, errors, strict=True):
        if error is not None:
            logger.info("could not cancel request %s on node %s: %s", request_id, node, error)
            del ids[node]
    return ids
