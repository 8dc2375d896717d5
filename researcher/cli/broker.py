"""What the ``researcher`` commands share: their settings, a session on the broker, and the
management API's errors in one line each.

A one-shot command (``ping``, ``status``) leaves no queue behind: its reply queue is declared
auto-deleted, unless the researcher's durable reply queue is already there (jobs made it),
which it then uses as it is.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import replace

from broker_net.amqp.transport import AmqpTransport
from broker_net.cli_broker import broker_connection, connection_reason
from broker_net.cli_errors import CliError, read_settings
from broker_net.errors import BrokerAccessError, TransportError
from broker_net.logs import configure_logging
from broker_net.topology import Topology
from broker_net.transport import Transport
from researcher.requests.router import Requests
from researcher.settings import ResearcherSettings

AMQP_SETTING = "BROKER_NET_RESEARCHER_AMQP_URL"


def load_settings() -> ResearcherSettings:
    """The researcher's settings, logging configured; an invalid setting is a CliError.

    A command says what went wrong in its one line, so it logs errors only, unless
    ``BROKER_NET_RESEARCHER_LOG_LEVEL`` asks for more.
    """
    settings = read_settings(ResearcherSettings)
    level = settings.log_level if "log_level" in settings.model_fields_set else "ERROR"
    configure_logging(level, json_lines=settings.log_json)
    return settings


def connection(
    settings: ResearcherSettings, purpose: str
) -> AbstractAsyncContextManager[AmqpTransport]:
    """A command's connection to the broker, ``researcher:<purpose>`` in the management UI:
    it fails after ``broker_patience`` seconds without the broker, in one line."""
    return broker_connection(
        settings.amqp_url, name=f"researcher:{purpose}", setting=AMQP_SETTING,
        patience=settings.broker_patience, quiet=True,
    )  # fmt: skip


@asynccontextmanager
async def session(
    settings: ResearcherSettings,
    *,
    purpose: str,
    researcher_id: str | None = None,
    one_shot: bool = False,
) -> AsyncIterator[Requests]:
    """The request layer of a command, authenticated with the researcher's keys.

    Args:
        settings: the researcher's settings.
        purpose: names the connection, ``researcher:<purpose>``.
        researcher_id: the id whose reply queue is read; the researcher's own by default.
        one_shot: leave no queue behind (see the module's docstring).

    Raises:
        CliError: the broker cannot be reached or was lost (see
            :func:`broker_net.cli_broker.broker_connection`).
        KeyFileError: the researcher's key or trust files are unusable.
    """
    security = settings.load_security()
    async with connection(settings, purpose) as transport:
        owner = researcher_id or settings.researcher_id
        topology = settings.topology
        if one_shot:
            topology = await one_shot_topology(transport, topology, owner)
        async with Requests(
            transport, owner, topology=topology, default_timeout=settings.default_timeout,
            security=security,
        ) as requests:  # fmt: skip
            yield requests


async def one_shot_topology(transport: Transport, topology: Topology, researcher: str) -> Topology:
    """``topology`` with a transient reply queue, unless ``researcher``'s durable reply queue
    already exists."""
    existing = await transport.consumer_count(topology.researcher_queue(researcher).name)
    return topology if existing is not None else replace(topology, transient_replies=True)


def management_error(exc: TransportError, settings: ResearcherSettings) -> CliError:
    """The one line for a management API error."""
    url = settings.management_url
    if isinstance(exc, BrokerAccessError):
        return CliError(
            f"the RabbitMQ management API at {url} refused user {settings.management_user!r}; "
            "check BROKER_NET_RESEARCHER_MANAGEMENT_USER and "
            "BROKER_NET_RESEARCHER_MANAGEMENT_PASSWORD"
        )
    reason = connection_reason(exc).removeprefix("management API unreachable: ")
    return CliError(
        f"cannot reach the RabbitMQ management API at {url} ({reason}); is its plugin "
        "enabled? check BROKER_NET_RESEARCHER_MANAGEMENT_URL"
    )
