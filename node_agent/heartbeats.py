"""Heartbeats: the node tells every researcher it is online, and what it holds.

A heartbeat goes to the presence exchange every ``interval`` seconds, not persisted and
expiring after three intervals; the last one, on the way out, says the node is stopping.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable

import anyio

from broker_net.envelope import Authenticator, EnvelopeHeader
from broker_net.errors import TransportError
from broker_net.frames import frame
from broker_net.messages import Heartbeat
from broker_net.topology import Topology
from broker_net.transport import Transport
from broker_net.version import __version__

logger = logging.getLogger(__name__)


class Heartbeats:
    """Publishes this node's heartbeats until ``stopping`` is set.

    Args:
        node_id: this node's id.
        node_name: its display name.
        interval: seconds between heartbeats.
        transport: a connected transport.
        topology: the names of exchanges and queues.
        authenticator: signs heartbeats (``None`` with security off).
        datasets: the ids of the datasets the node holds now.
    """

    def __init__(
        self,
        node_id: str,
        node_name: str | None,
        interval: float,
        transport: Transport,
        topology: Topology,
        authenticator: Authenticator | None,
        datasets: Callable[[], list[str]],
    ) -> None:
        self.node_id = node_id
        self.node_name = node_name
        self.interval = interval
        self.transport = transport
        self.topology = topology
        self.authenticator = authenticator
        self.datasets = datasets

    def heartbeat(self, *, stopping: bool = False) -> Heartbeat:
        """The heartbeat this node publishes now."""
        return Heartbeat(
            node_id=self.node_id,
            node_name=self.node_name,
            agent_version=__version__,
            interval=self.interval,
            datasets=self.datasets(),
            stopping=stopping,
        )

    async def run(self, stopping: anyio.Event) -> None:
        """Beat until ``stopping`` is set (or cancelled); then say goodbye within 2 s."""
        try:
            while not stopping.is_set():
                await self.beat(stopping=False)
                with anyio.move_on_after(self.interval):
                    await stopping.wait()
        finally:
            with anyio.CancelScope(shield=True), anyio.move_on_after(2):
                await self.beat(stopping=True)

    async def beat(self, *, stopping: bool) -> None:
        """Publish one heartbeat; a broker out of reach only costs this one."""
        beat = self.heartbeat(stopping=stopping)
        header = EnvelopeHeader.for_message(
            beat, sender_id=self.node_id, sender_role="node", recipient="*"
        )
        outgoing = frame(
            header, beat, authenticator=self.authenticator,
            expiration=math.ceil(3 * beat.interval), persistent=False,
        )  # fmt: skip
        try:
            await self.transport.publish(self.topology.presence_exchange.name, "", outgoing)
        except TransportError as exc:
            logger.info("heartbeat not sent: %s", exc)
