"""What the dashboard knows of the nodes and queues: heartbeats heard on the broker, consumer
counts from the broker itself, queue figures from the RabbitMQ management API.

:class:`BrokerWatch` keeps them fresh in the background and never fails: a broker or
management API that cannot be reached is retried, and said as such on the page, where every
node then shows as ``unknown`` rather than down.

A node is ``up`` while its heartbeats come on time and its request queue has a consumer (the
rule of ``researcher status``); ``down`` when its heartbeats stopped, it said it is stopping,
or its queue has no consumer; ``unknown`` while the dashboard cannot tell (no broker, or it
has just started listening).
"""

from __future__ import annotations

import logging
import secrets
import time
from dataclasses import dataclass
from typing import Any

import anyio

from broker_net.admin.management import ManagementClient
from broker_net.amqp.transport import AmqpTransport
from broker_net.errors import BrokerAccessError, SecurityError, TransportError
from researcher.requests.presence import NodePresence, PresenceTable, listen_to_heartbeats
from researcher.settings import ResearcherSettings

logger = logging.getLogger(__name__)

LISTENER_SUFFIX = "-dashboard"
"""The dashboard hears heartbeats as ``<researcher id>-dashboard-<8 hex digits>``: a presence
queue of its own (auto-deleted), so it takes no heartbeat from a running job; a provisioned
researcher user may declare it (:data:`broker_net.admin.provisioning.DASHBOARD_PRESENCE`)."""


@dataclass(frozen=True)
class NodeRow:
    """One node as the dashboard shows it; queue figures are ``None`` when unknown."""

    node_id: str
    state: str
    reason: str
    seconds_since_heartbeat: float | None
    agent_version: str
    datasets: list[str]
    queue_depth: int | None
    unacked: int | None
    consumers: int | None


@dataclass(frozen=True)
class QueueRow:
    """One queue of the namespace, from the management API."""

    name: str
    ready: int
    unacked: int
    consumers: int
    publish_rate: float
    deliver_rate: float


@dataclass(frozen=True)
class SourceStatus:
    """Whether a source of the page answers: ``ok`` is ``None`` until it was tried."""

    name: str
    ok: bool | None
    text: str


class BrokerWatch:
    """Heartbeats, consumer counts and queue figures of one namespace, in the background.

    Args:
        settings: the researcher's broker, management API, namespace and keys.
        interval: seconds between two readings of consumer counts and queue figures.
        retry: seconds before a source that failed is tried again.
        heartbeat_patience: heartbeat intervals a node may miss before it is down.
        startup_grace: seconds after connecting during which a node never heard from is
            unknown rather than down.
    """

    def __init__(
        self,
        settings: ResearcherSettings,
        *,
        interval: float = 1.0,
        retry: float = 3.0,
        heartbeat_patience: float = 3.0,
        startup_grace: float = 10.0,
    ) -> None:
        self.settings = settings
        self.interval = interval
        self.retry = retry
        self.startup_grace = startup_grace
        self.listener_id = f"{settings.researcher_id}{LISTENER_SUFFIX}-{secrets.token_hex(4)}"
        self.presence = PresenceTable(patience=heartbeat_patience)
        self._prefix = f"{settings.topology.namespace}."
        self._node_prefix = f"{self._prefix}node."
        self._queues: dict[str, dict[str, Any]] = {}
        self._consumers: dict[str, int | None] = {}
        self._listening_since: float | None = None
        self._transport: AmqpTransport | None = None
        self.broker = SourceStatus("broker", None, "connecting")
        self.management = SourceStatus("management API", None, "asking")

    async def run(self) -> None:
        """Watch until cancelled."""
        async with anyio.create_task_group() as group:
            group.start_soon(self._broker_loop)
            group.start_soon(self._management_loop)

    # --- what the page shows -------------------------------------------------------------------

    def nodes(self, also: list[str] | None = None) -> list[NodeRow]:
        """Every node heard from, with a request queue in the namespace, or in ``also``."""
        ids = {p.node_id for p in self.presence.all()} | set(self._node_queues()) | set(also or [])
        now = time.monotonic()
        return [self._node(node_id, now) for node_id in sorted(ids)]

    def queues(self) -> list[QueueRow]:
        """Every queue of the namespace, as the management API last counted it."""
        rows = []
        for name in sorted(self._queues):
            if f".{self.listener_id}." in name:
                continue  # this dashboard's own presence queue
            queue = self._queues[name]
            stats = queue.get("message_stats", {})
            rows.append(
                QueueRow(
                    name=name,
                    ready=int(queue.get("messages_ready", 0)),
                    unacked=int(queue.get("messages_unacknowledged", 0)),
                    consumers=int(queue.get("consumers", 0)),
                    publish_rate=float(stats.get("publish_details", {}).get("rate", 0.0)),
                    deliver_rate=float(stats.get("deliver_get_details", {}).get("rate", 0.0)),
                )
            )
        return rows

    def sources(self) -> list[SourceStatus]:
        """The broker's and the management API's status."""
        return [self.broker, self.management]

    def _node_queues(self) -> dict[str, str]:
        """Node id → request queue name, for the node queues the management API listed."""
        suffix = ".requests"
        return {
            name[len(self._node_prefix) : -len(suffix)]: name
            for name in self._queues
            if name.startswith(self._node_prefix) and name.endswith(suffix)
        }

    def _queue_name(self, node_id: str) -> str:
        return f"{self._node_prefix}{node_id}.requests"

    def _node(self, node_id: str, now: float) -> NodeRow:
        beat = self.presence.get(node_id)
        queue_name = self._queue_name(node_id)
        queue = self._queues.get(queue_name)
        consumers = self._consumers.get(queue_name)
        if consumers is None and queue is not None:
            consumers = int(queue.get("consumers", 0))
        state, reason = self._state(beat, consumers, now)
        return NodeRow(
            node_id=node_id, state=state, reason=reason,
            seconds_since_heartbeat=round(now - beat.last_seen_monotonic, 1) if beat else None,
            agent_version=beat.agent_version if beat else "",
            datasets=list(beat.datasets) if beat else [],
            queue_depth=int(queue.get("messages_ready", 0)) if queue else None,
            unacked=int(queue.get("messages_unacknowledged", 0)) if queue else None,
            consumers=consumers,
        )  # fmt: skip

    def _state(
        self, beat: NodePresence | None, consumers: int | None, now: float
    ) -> tuple[str, str]:
        if self._transport is None or not self._transport.connected:
            return "unknown", "no connection to the broker"
        if beat is None:
            listening = now - (self._listening_since or now)
            if listening < self.startup_grace:
                return "unknown", "no heartbeat yet"
            return "down", f"no heartbeat in {listening:.0f} s"
        if beat.stopping:
            return "down", "stopped"
        if not beat.online(now, self.presence.patience):
            return "down", f"no heartbeat for {now - beat.last_seen_monotonic:.0f} s"
        if consumers == 0:
            return "down", "nothing consumes its request queue"
        return "up", "heartbeats on time"

    # --- the background loops ------------------------------------------------------------------

    async def _broker_loop(self) -> None:
        while True:
            try:
                await self._listen()
            except SecurityError as exc:
                self.broker = SourceStatus("broker", False, f"cannot verify heartbeats: {exc}")
            except BrokerAccessError as exc:
                self.broker = SourceStatus("broker", False, f"refused: {_first_line(exc)}")
            except (TransportError, OSError) as exc:
                self.broker = SourceStatus("broker", False, f"unreachable: {_first_line(exc)}")
            self._transport = None
            self._listening_since = None
            await anyio.sleep(self.retry)

    async def _listen(self) -> None:
        identity = self.settings.data_dir / "identity"
        if self.settings.security and not (identity / "identity.key").exists():
            # Loading the keys would create them: the dashboard writes nothing.
            self.broker = SourceStatus(
                "broker", False, f"no researcher identity in {identity} yet: heartbeats "
                "cannot be verified (a first job or 'researcher identity' makes one)",
            )  # fmt: skip
            return
        security = self.settings.load_security()
        topology = self.settings.topology
        async with AmqpTransport(
            self.settings.amqp_url, connection_name="researcher:dashboard"
        ) as transport:
            queue = topology.presence_queue(self.listener_id)
            await transport.declare(topology.presence_exchange, queue)
            async with anyio.create_task_group() as group:
                await group.start(listen_to_heartbeats, transport, queue, self.presence, security)
                self._transport = transport
                self._listening_since = time.monotonic()
                while True:
                    if transport.connected:
                        self.broker = SourceStatus("broker", True, "connected")
                        await self._count_consumers(transport)
                    else:
                        self.broker = SourceStatus("broker", False, "connection lost; retrying")
                    await anyio.sleep(self.interval)

    async def _count_consumers(self, transport: AmqpTransport) -> None:
        """Consumers of each node queue, from the broker: exact at once, where the management
        API's figure may be seconds old."""
        names = {self._queue_name(p.node_id) for p in self.presence.all()}
        names |= set(self._node_queues().values())
        for name in sorted(names):
            try:
                with anyio.fail_after(max(self.interval, 2.0)):
                    self._consumers[name] = await transport.consumer_count(name)
            except (TransportError, TimeoutError):
                self._consumers.pop(name, None)

    async def _management_loop(self) -> None:
        settings = self.settings
        async with ManagementClient(
            settings.management_url, settings.management_user, settings.management_password,
            timeout=5.0,
        ) as management:  # fmt: skip
            while True:
                try:
                    found = await management.queues(settings.vhost, self._prefix)
                except BrokerAccessError:
                    self._fail_management(f"refused user {settings.management_user!r}")
                except TransportError as exc:
                    self._fail_management(f"unreachable: {_first_line(exc)}")
                else:
                    self._queues = {str(q["name"]): q for q in found}
                    self.management = SourceStatus("management API", True, "answering")
                    await anyio.sleep(self.interval)
                    continue
                await anyio.sleep(self.retry)

    def _fail_management(self, text: str) -> None:
        self._queues = {}
        self.management = SourceStatus("management API", False, text)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0]
