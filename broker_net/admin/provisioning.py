"""Broker accounts with least privilege: one RabbitMQ user per node, one per researcher.

A node's user may consume only its own request queue, bind it only with its own id, and
publish only replies and heartbeats; a researcher's user may publish requests and read only its
own reply and presence queues. Topic permissions pin the routing keys: a node cannot bind its
queue to another node's requests, nor publish into the requests exchange at all.
"""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass

from broker_net.admin.management import ManagementClient
from broker_net.topology import Topology, check_id

NOTHING = "^$"

HELPER_SUFFIX = "-status"
"""The one helper id a researcher's user also covers: ``<researcher id>-status``."""

DASHBOARD_PRESENCE = "-dashboard-[0-9a-f]{8}"
"""The presence queues a researcher's dashboard listens on, ``<researcher id>-dashboard-<8
hex digits>`` (one per dashboard process): a researcher's user may declare and read them."""


@dataclass(frozen=True, slots=True)
class Permissions:
    """A user's configure / write / read expressions, and topic permissions per exchange."""

    configure: str
    write: str
    read: str
    topics: dict[str, tuple[str, str]]
    """exchange -> (write routing keys, read routing keys)."""


def _names(*names: str) -> str:
    return "|".join(f"^{re.escape(name)}$" for name in dict.fromkeys(names))


def _exchange_names(topology: Topology) -> list[str]:
    return [
        topology.requests_exchange.name,
        topology.replies_exchange.name,
        topology.presence_exchange.name,
        topology.dead_letter_exchange.name,
    ]


def node_permissions(topology: Topology, node_id: str) -> Permissions:
    """What node ``node_id``'s broker user may do."""
    check_id("node id", node_id)
    queue = topology.node_queue(node_id).name
    exchanges = [spec.name for spec in topology._exchanges()]
    reply_keys = f"^{re.escape(topology.namespace)}\\.researcher\\.[^.]+\\.replies$"
    return Permissions(
        configure=_names(queue, *exchanges),
        # Declaring a queue with a dead-letter exchange takes write access to that exchange.
        write=_names(
            queue,
            topology.replies_exchange.name,
            topology.presence_exchange.name,
            topology.dead_letter_exchange.name,
        ),
        read=_names(queue, topology.requests_exchange.name),
        topics={
            topology.requests_exchange.name: (NOTHING, f"^{re.escape(node_id)}$"),
            topology.replies_exchange.name: (reply_keys, NOTHING),
        },
    )


def researcher_permissions(topology: Topology, researcher_id: str) -> Permissions:
    """What researcher ``researcher_id``'s broker user may do.

    Its own reply and presence queues, those of its one helper id ``<id>-status`` (the
    ``researcher status`` command listens under it), and its dashboards' presence queues
    (``<id>-dashboard-<8 hex digits>``). The patterns are anchored on the whole
    name: researcher ``alice`` reaches nothing of researcher ``alice-2``.

    Raises:
        ValueError: ``researcher_id`` is not a valid id, or ends with ``-status`` (reserved for
            the helper id of another researcher).
    """
    check_id("researcher id", researcher_id)
    if researcher_id.endswith(HELPER_SUFFIX):
        raise ValueError(
            f"researcher id {researcher_id!r} ends with {HELPER_SUFFIX!r}, which is reserved for "
            "the status command of another researcher"
        )
    ns = re.escape(topology.namespace)
    rid = re.escape(researcher_id)
    own_replies = f"^{ns}\\.researcher\\.{rid}(?:{re.escape(HELPER_SUFFIX)})?\\.replies$"
    own = (
        own_replies.replace("replies$", "(?:replies|presence)$")
        + f"|^{ns}\\.researcher\\.{rid}{DASHBOARD_PRESENCE}\\.presence$"
    )
    dead_letter = topology.dead_letter_queue.name
    return Permissions(
        configure=f"{own}|" + _names(dead_letter, *_exchange_names(topology)),
        write=f"{own}|" + _names(topology.requests_exchange.name, dead_letter),
        read=f"{own}|"
        + _names(
            topology.replies_exchange.name,
            topology.presence_exchange.name,
            topology.dead_letter_exchange.name,
        ),
        topics={
            topology.requests_exchange.name: (".*", NOTHING),
            topology.replies_exchange.name: (NOTHING, own_replies),
        },
    )


def new_password() -> str:
    """A random password for a broker user."""
    return secrets.token_urlsafe(24)


async def grant(
    management: ManagementClient, vhost: str, username: str, permissions: Permissions
) -> None:
    """Apply ``permissions`` to ``username`` on ``vhost``."""
    await management.set_permissions(
        vhost, username, configure=permissions.configure, write=permissions.write,
        read=permissions.read,
    )  # fmt: skip
    for exchange, (write, read) in permissions.topics.items():
        await management.set_topic_permissions(vhost, username, exchange, write=write, read=read)


async def provision(
    management: ManagementClient,
    vhost: str,
    topology: Topology,
    *,
    researcher_id: str,
    nodes: list[str],
    username_prefix: str = "",
) -> dict[str, str]:
    """Create the vhost, a user for the researcher and one per node, with least privilege.

    The topology's exchanges and the dead-letter queue are declared by whoever connects first;
    users get only what their role needs.

    Returns:
        Each new user's password by user name. Hand each one to its owner only.
    """
    await management.create_vhost(vhost)
    passwords: dict[str, str] = {}
    accounts = [(researcher_id, researcher_permissions(topology, researcher_id))]
    accounts += [(node, node_permissions(topology, node)) for node in nodes]
    for party, permissions in accounts:
        username = f"{username_prefix}{party}"
        passwords[username] = new_password()
        await management.create_user(username, passwords[username])
        await grant(management, vhost, username, permissions)
    return passwords
