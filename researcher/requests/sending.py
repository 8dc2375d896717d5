"""Publishing one federated request to its nodes.

Each node's message is framed (:func:`broker_net.frames.frame`) for that node and published to
the requests exchange with the researcher's reply queue as ``reply_to``; a broadcast is encoded
once for every node. A publish may take until the node's earliest policy deadline: a broker
that lost its quorum neither confirms nor refuses it, and the request must still end within
its policies' timeouts. What went wrong with a node's publish ends that node's part in the
request's :class:`~researcher.requests.ledger.NodeLedger`.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any

import anyio

from broker_net.codec import encode_parts
from broker_net.envelope import EnvelopeHeader
from broker_net.errors import TransportError, UnroutableError
from broker_net.frames import frame
from broker_net.messages import RequestMessage, utc_now
from broker_net.transport import OutgoingMessage
from researcher.requests.ledger import NodeEntry, NodeLedger
from researcher.requests.policies import NodeState, Policy, RequestStatus

if TYPE_CHECKING:
    from researcher.requests.router import Requests


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
                return
            with anyio.move_on_after(limit) as sending:
                await transport.publish(exchange, node, outgoing, mandatory=True)
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
