"""What the researcher knows of each node from its heartbeats."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from datetime import datetime

import anyio
import anyio.abc

from broker_net.codes import ErrorCode
from broker_net.frames import EnvelopeVerifier, FrameRefused, open_frame, read_message
from broker_net.message_base import utc_now
from broker_net.messages import Heartbeat
from broker_net.topology import QueueSpec
from broker_net.transport import Transport

logger = logging.getLogger(__name__)


@dataclass(slots=True)
class NodePresence:
    """The latest heartbeat of one node.

    Attributes:
        last_seen: when the last heartbeat arrived (researcher's wall clock).
        last_seen_monotonic: the same, on the monotonic clock.
        interval: seconds between the node's heartbeats.
        stopping: the node announced it is shutting down.
    """

    node_id: str
    node_name: str
    agent_version: str
    last_seen: datetime
    last_seen_monotonic: float
    interval: float
    datasets: list[str] = field(default_factory=list)
    stopping: bool = False

    def gone_since(self, now: float, patience: float) -> float | None:
        """Monotonic time since which the node is gone, or ``None`` if it is online."""
        if self.stopping:
            return self.last_seen_monotonic
        expected_by = self.last_seen_monotonic + patience * self.interval
        return expected_by if now >= expected_by else None

    def online(self, now: float, patience: float) -> bool:
        """True when the node's heartbeats are on time."""
        return self.gone_since(now, patience) is None


class PresenceTable:
    """Node presence by id, fed by heartbeats.

    Args:
        patience: how many heartbeat intervals may pass before a node counts as gone.
    """

    def __init__(self, patience: float = 3.0) -> None:
        self.patience = patience
        self._nodes: dict[str, NodePresence] = {}

    def update(self, beat: Heartbeat, *, arrived: datetime, arrived_monotonic: float) -> None:
        """Record a heartbeat."""
        self._nodes[beat.node_id] = NodePresence(
            node_id=beat.node_id,
            node_name=beat.node_name,
            agent_version=beat.agent_version,
            last_seen=arrived,
            last_seen_monotonic=arrived_monotonic,
            interval=beat.interval,
            datasets=list(beat.datasets),
            stopping=beat.stopping,
        )

    def get(self, node_id: str) -> NodePresence | None:
        """The presence of ``node_id``, if it ever sent a heartbeat."""
        return self._nodes.get(node_id)

    def all(self) -> list[NodePresence]:
        """Every node ever seen, sorted by id."""
        return [self._nodes[key] for key in sorted(self._nodes)]

    def online_ids(self, now: float | None = None) -> list[str]:
        """Ids of the nodes whose heartbeats are on time, sorted."""
        now = time.monotonic() if now is None else now
        return [p.node_id for p in self.all() if p.online(now, self.patience)]

    def gone_since(self, node_id: str, now: float) -> float | None:
        """When ``node_id`` went missing, ``None`` if online or never seen."""
        presence = self._nodes.get(node_id)
        return None if presence is None else presence.gone_since(now, self.patience)


async def listen_to_heartbeats(
    transport: Transport,
    queue: QueueSpec,
    table: PresenceTable,
    verifier: EnvelopeVerifier | None,
    *,
    task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
) -> None:
    """Record every authentic heartbeat that arrives on ``queue`` in ``table``, until
    cancelled; a heartbeat that fails authentication, or whose sender is not the node it
    names, is dropped."""
    async with transport.consume(queue, prefetch=256) as deliveries:
        task_status.started()
        async for delivery in deliveries:
            try:
                incoming = open_frame(delivery, verifier=verifier)
                beat = read_message(incoming)
            except FrameRefused as refused:
                log_dropped("heartbeat", refused)
            else:
                if isinstance(beat, Heartbeat) and beat.node_id == incoming.header.sender_id:
                    table.update(beat, arrived=utc_now(), arrived_monotonic=time.monotonic())
            await delivery.ack()


def log_dropped(what: str, refused: FrameRefused, log: logging.Logger = logger) -> None:
    """Log a reply or heartbeat dropped because it could not be used: a copy seen before is
    expected after a reconnect (INFO), anything else is worth a warning."""
    if refused.code is ErrorCode.REPLAYED_MESSAGE:
        # Expected after a reconnect: the broker, or a node answering a redelivered request
        # from its stored reply, hands over a copy already taken.
        log.info("dropping a %s seen before (a copy after a reconnect)", what)
    else:
        log.warning("dropping a %s: %s: %s", what, refused.code.name, refused.reason)
