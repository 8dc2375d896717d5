"""The state of every node, from heartbeats, the broker and the management API.

A node is online when its heartbeats arrive on time and its request queue has a consumer. The
consumer count comes from the broker itself (a passive declare), which is exact at once; queue
depth, unacknowledged messages and rates come from the management API, whose figures are
refreshed every few seconds (RabbitMQ's ``collect_statistics_interval``).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Any

import anyio

from broker_net.admin.management import ManagementClient
from broker_net.errors import BrokerAccessError, TransportError
from broker_net.transport import Transport
from researcher.cli.broker import management_error, one_shot_topology
from researcher.requests.presence import NodePresence
from researcher.requests.router import Requests
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

    Every node with a request queue in the namespace is listed, and so is every node heard
    from. ``listen`` should cover at least one heartbeat interval (2 s by default). It listens
    under the helper id ``<researcher id>-status`` on queues that go with it (see
    :mod:`researcher.cli.broker`), and asks the management API once before listening, so
    that wrong management settings fail at once.

    Raises:
        TransportError: the broker cannot be reached.
        CliError: the management API cannot be reached or refuses the credentials.
    """
    topology = settings.topology
    prefix = f"{topology.namespace}.node."
    helper = f"{settings.researcher_id}-status"
    async with ManagementClient(
        settings.management_url, settings.management_user, settings.management_password
    ) as management:
        await _queues(management, settings, prefix)
        topology = await one_shot_topology(transport, topology, helper)
        async with Requests(transport, helper, topology=topology) as requests:
            await anyio.sleep(listen)
            queues = await _queues(management, settings, prefix)
            presence = {p.node_id: p for p in requests.presence.all()}
            patience = requests.presence.patience
    by_node = {
        q["name"][len(prefix) : -len(".requests")]: q
        for q in queues
        if q["name"].endswith(".requests")
    }
    now = time.monotonic()
    statuses: list[NodeStatus] = []
    for node_id in sorted(set(by_node) | set(presence)):
        queue = by_node.get(node_id, {})
        name = queue.get("name", topology.node_queue(node_id).name)
        consumers = await _consumers(transport, name, queue)
        beat = presence.get(node_id)
        statuses.append(_status(node_id, name, queue, consumers, beat, now, patience))
    return statuses


async def _queues(
    management: ManagementClient, settings: ResearcherSettings, prefix: str
) -> list[dict[str, Any]]:
    try:
        return await management.queues(settings.vhost, prefix)
    except TransportError as exc:
        raise management_error(exc, settings) from None


async def _consumers(transport: Transport, name: str, queue: dict[str, Any]) -> int:
    # The broker's own count is exact; the management figure may be seconds old, or missing
    # for a queue declared since the last statistics round.
    try:
        live = await transport.consumer_count(name)
    except BrokerAccessError:
        live = None
    return live if live is not None else int(queue.get("consumers", 0))


def _status(
    node_id: str,
    name: str,
    queue: dict[str, Any],
    consumers: int,
    beat: NodePresence | None,
    now: float,
    patience: float,
) -> NodeStatus:
    stats = queue.get("message_stats", {})
    on_time = beat is not None and beat.online(now, patience)
    return NodeStatus(
        node_id=node_id,
        online=bool(on_time and consumers > 0),
        last_heartbeat=beat.last_seen.isoformat() if beat else None,
        seconds_since_heartbeat=round(now - beat.last_seen_monotonic, 2) if beat else None,
        agent_version=beat.agent_version if beat else "",
        queue=name,
        queue_depth=int(queue.get("messages_ready", 0)),
        consumers=consumers,
        unacked=int(queue.get("messages_unacknowledged", 0)),
        publish_rate=float(stats.get("publish_details", {}).get("rate", 0.0)),
        deliver_rate=float(stats.get("deliver_get_details", {}).get("rate", 0.0)),
        ack_rate=float(stats.get("ack_details", {}).get("rate", 0.0)),
    )
