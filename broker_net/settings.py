"""What every party's settings share: the broker it reaches, the names it uses, how it logs.

:class:`node_agent.NodeSettings` and :class:`researcher.ResearcherSettings` extend
:class:`PartySettings`, each with its own environment prefix.
"""

from __future__ import annotations

from typing import Literal
from urllib.parse import unquote, urlparse

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings

from broker_net.amqp.failover import broker_urls
from broker_net.logs import configure_logging
from broker_net.topology import DEFAULT_NAMESPACE, Topology


class PartySettings(BaseSettings):
    """Broker URL, namespace, queue type and logging, validated the same way for every party."""

    amqp_url: str = Field(
        default="amqp://guest:guest@127.0.0.1:5672/",
        description="RabbitMQ URL; for a cluster, its nodes' URLs separated by commas (after "
        "the first, host:port is enough), tried in turn when a node is lost.",
    )
    namespace: str = Field(default=DEFAULT_NAMESPACE, description="Prefix of every name.")
    queue_type: Literal["classic", "quorum"] = "classic"
    log_level: str = Field(default="WARNING", description="Logging level.")
    log_json: bool = Field(default=False, description="Write logs as JSON lines.")

    @field_validator("amqp_url")
    @classmethod
    def _check_amqp_url(cls, value: str) -> str:
        broker_urls(value)
        return value

    @property
    def topology(self) -> Topology:
        """The topology these settings name."""
        return Topology(self.namespace, self.queue_type)

    @property
    def vhost(self) -> str:
        """The vhost named by ``amqp_url`` (its first URL; ``/`` when none)."""
        path = urlparse(broker_urls(self.amqp_url)[0]).path
        return unquote(path[1:]) if len(path) > 1 else "/"

    def configure_logging(self) -> None:
        """Send this process's logs to stderr at ``log_level``, as text or JSON lines."""
        configure_logging(self.log_level, json_lines=self.log_json)
