"""Every exchange and queue broker-net uses, named in one place.

With the default namespace ``broker_net`` a node ``hospital-a`` consumes
``broker_net.node.hospital-a.requests`` and a researcher ``alice`` reads its replies from
``broker_net.researcher.alice.replies``; both are durable, so requests wait for a node that is
down and replies wait for a researcher that reconnects. Requests are routed by node id through
the ``broker_net.requests`` exchange, replies by researcher queue name through
``broker_net.replies``, heartbeats are fanned out by ``broker_net.presence``, and rejected or
expired requests are dead-lettered into ``broker_net.dead-letter`` where a person can read them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Literal

ExchangeKind = Literal["direct", "fanout", "topic"]
QueueType = Literal["classic", "quorum"]

_ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,99}$")
DEFAULT_NAMESPACE = "broker_net"


def check_id(kind: str, value: str) -> str:
    """Return ``value`` if it is a valid node, researcher or namespace id.

    Raises:
        ValueError: it is empty, too long, or holds characters other than letters, digits,
            ``-`` and ``_`` (dots separate the parts of queue names).
    """
    if not _ID_PATTERN.fullmatch(value):
        raise ValueError(
            f"{kind} {value!r} must be 1-100 letters, digits, '-' or '_', starting with a "
            "letter or digit"
        )
    return value


@dataclass(frozen=True, slots=True)
class ExchangeSpec:
    """An exchange to declare."""

    name: str
    kind: ExchangeKind
    durable: bool = True


@dataclass(frozen=True, slots=True)
class QueueSpec:
    """A queue to declare, with its arguments and the bindings it needs."""

    name: str
    durable: bool = True
    auto_delete: bool = False
    arguments: dict[str, Any] = field(default_factory=dict)
    bindings: tuple[tuple[str, str], ...] = ()
    """(exchange, routing key) pairs."""


@dataclass(frozen=True, slots=True)
class Topology:
    """Names and declarations of every exchange and queue, under one namespace.

    Args:
        namespace: prefix of every name; tests use a fresh one for isolation.
        queue_type: ``quorum`` for node and reply queues on a RabbitMQ cluster.
        max_queue_length: optional bound on a node's request queue; a publish to a full queue
            is refused (and, on classic queues, dead-lettered).
        transient_replies: declare the researcher's reply queue auto-deleted, and no
            dead-letter queue: for a one-shot command that must leave no queue behind.
    """

    namespace: str = DEFAULT_NAMESPACE
    queue_type: QueueType = "classic"
    max_queue_length: int | None = None
    transient_replies: bool = False

    def __post_init__(self) -> None:
        check_id("namespace", self.namespace.replace(".", "_"))

    @property
    def requests_exchange(self) -> ExchangeSpec:
        """Exchange routing each request to its node's queue by node id.

        A topic exchange (node ids hold no dots or wildcards, so it routes like a direct one)
        because RabbitMQ's topic permissions then restrict which routing key each node's user
        may bind: a node can bind its queue only to its own id.
        """
        return ExchangeSpec(f"{self.namespace}.requests", "topic")

    @property
    def replies_exchange(self) -> ExchangeSpec:
        """Exchange routing each reply to its researcher's queue by queue name (a topic
        exchange, for the same reason as :attr:`requests_exchange`)."""
        return ExchangeSpec(f"{self.namespace}.replies", "topic")

    @property
    def presence_exchange(self) -> ExchangeSpec:
        """Fanout exchange carrying node heartbeats to every researcher."""
        return ExchangeSpec(f"{self.namespace}.presence", "fanout")

    @property
    def dead_letter_exchange(self) -> ExchangeSpec:
        """Fanout exchange receiving rejected and expired requests."""
        return ExchangeSpec(f"{self.namespace}.dead-letter", "fanout")

    @property
    def dead_letter_queue(self) -> QueueSpec:
        """The queue where rejected and expired requests wait for a person to read them."""
        return QueueSpec(
            f"{self.namespace}.dead-letter",
            arguments=self._type_arguments(),
            bindings=((self.dead_letter_exchange.name, ""),),
        )

    def node_queue(self, node_id: str) -> QueueSpec:
        """The durable queue node ``node_id`` consumes its requests from."""
        check_id("node id", node_id)
        arguments = self._type_arguments() | {
            "x-dead-letter-exchange": self.dead_letter_exchange.name
        }
        if self.max_queue_length is not None:
            arguments["x-max-length"] = self.max_queue_length
            # Quorum queues cannot dead-letter a refused publish: given reject-publish-dlx,
            # RabbitMQ silently drops the oldest request instead. Refusing is what matters.
            classic = self.queue_type == "classic"
            arguments["x-overflow"] = "reject-publish-dlx" if classic else "reject-publish"
        return QueueSpec(
            f"{self.namespace}.node.{node_id}.requests",
            arguments=arguments,
            bindings=((self.requests_exchange.name, node_id),),
        )

    def researcher_queue(self, researcher_id: str) -> QueueSpec:
        """The durable queue researcher ``researcher_id`` reads every reply from."""
        check_id("researcher id", researcher_id)
        name = f"{self.namespace}.researcher.{researcher_id}.replies"
        if self.transient_replies:
            bindings = ((self.replies_exchange.name, name),)
            return QueueSpec(name, durable=False, auto_delete=True, bindings=bindings)
        return QueueSpec(
            name,
            arguments=self._type_arguments(),
            bindings=((self.replies_exchange.name, name),),
        )

    def researcher_of(self, queue_name: str) -> str | None:
        """The researcher whose reply queue is named ``queue_name``; ``None`` for any other."""
        prefix, suffix = f"{self.namespace}.researcher.", ".replies"
        if not (queue_name.startswith(prefix) and queue_name.endswith(suffix)):
            return None
        try:
            return check_id("researcher id", queue_name[len(prefix) : -len(suffix)])
        except ValueError:
            return None

    def presence_queue(self, researcher_id: str) -> QueueSpec:
        """A transient queue through which researcher ``researcher_id`` sees heartbeats."""
        check_id("researcher id", researcher_id)
        return QueueSpec(
            f"{self.namespace}.researcher.{researcher_id}.presence",
            durable=False,
            auto_delete=True,
            arguments={"x-message-ttl": 60_000, "x-max-length": 10_000},
            bindings=((self.presence_exchange.name, ""),),
        )

    def node_declarations(self, node_id: str) -> list[ExchangeSpec | QueueSpec]:
        """Everything a node agent declares before consuming, in order.

        The dead-letter queue is left to the researcher and to provisioning, so a node's
        broker user needs no rights on it.
        """
        return [*self._exchanges(), self.node_queue(node_id)]

    def researcher_declarations(self, researcher_id: str) -> list[ExchangeSpec | QueueSpec]:
        """Everything a researcher declares before sending, in order."""
        return [
            *self._exchanges(),
            *([] if self.transient_replies else [self.dead_letter_queue]),
            self.researcher_queue(researcher_id),
            self.presence_queue(researcher_id),
        ]

    def _exchanges(self) -> list[ExchangeSpec | QueueSpec]:
        return [
            self.requests_exchange,
            self.replies_exchange,
            self.presence_exchange,
            self.dead_letter_exchange,
        ]

    def _type_arguments(self) -> dict[str, Any]:
        return {"x-queue-type": self.queue_type}
