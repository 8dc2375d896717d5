"""The state of every node, from the management API and from heartbeats."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Any

import anyio

from broker_net.management import ManagementClient
from broker_net.transport import Transport
from researcher.requests import Requests
from researcher.settings import ResearcherSettings


@dataclass(frozen=True)
class NodeStatus:
    """One node as an operator sees it."""

    node_id: str
    online: bool
    last_heartbeat: str | None
    seconds_since_heartbeat: float | None
    agent_version: str
    queue: str
    queue_depth: int
    consumers: int
    unacked: int
    publish_rate: float
    deliver_rate: float
    ack_rate: float

    def as_dict(self) -> dict[str, Any]:
        """Plain data for JSON."""
        return asdict(self)


async def collect_status(
    settings: ResearcherSettings, transport: Transport, *, listen: float
) -> list[NodeStatus]:
    """Listen to heartbeats for ``listen`` seconds, then read every node queue's figures.

    A node is online when its heartbeats are on time and its queue has a consumer.
    """
    topology = settings.topology
    prefix = f"{topology.namespace}.node."
    async with (
        Requests(transport, f"{settings.researcher_id}-status", topology=topology) as requests,
        ManagementClient(
            settings.management_url, settings.management_user, settings.management_password
        ) as management,
    ):
        await anyio.sleep(listen)
        queues = await management.queues(settings.vhost, prefix)
        presence = {p.node_id: p for p in requests.presence.all()}
    now = time.monotonic()
    statuses: list[NodeStatus] = []
    by_node = {
        q["name"][len(prefix) : -len(".requests")]: q
        for q in queues
        if q["name"].endswith(".requests")
    }
    for node_id in sorted(set(by_node) | set(presence)):
        queue = by_node.get(node_id, {})
        beat = presence.get(node_id)
        stats = queue.get("message_stats", {})
        consumers = int(queue.get("consumers", 0))
        on_time = beat is not None and beat.online(now, requests.presence.patience)
        statuses.append(
            NodeStatus(
                node_id=node_id,
                online=bool(on_time and consumers > 0),
                last_heartbeat=beat.last_seen.isoformat() if beat else None,
                seconds_since_heartbeat=round(now - beat.last_seen_monotonic, 2) if beat else None,
                agent_version=beat.agent_version if beat else "",
                queue=queue.get("name", topology.node_queue(node_id).name),
                queue_depth=int(queue.get("messages_ready", 0)),
                consumers=consumers,
                unacked=int(queue.get("messages_unacknowledged", 0)),
                publish_rate=float(stats.get("publish_details", {}).get("rate", 0.0)),
                deliver_rate=float(stats.get("deliver_get_details", {}).get("rate", 0.0)),
                ack_rate=float(stats.get("ack_details", {}).get("rate", 0.0)),
            )
        )
    return statuses
