"""Configuration of a researcher process, from ``BROKER_NET_RESEARCHER_*`` variables."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from broker_net.crypto.authentication import Security
from broker_net.failover import broker_urls
from broker_net.topology import DEFAULT_NAMESPACE, Topology, check_id


class ResearcherSettings(BaseSettings):
    """Everything a researcher process needs to reach the network."""

    model_config = SettingsConfigDict(env_prefix="BROKER_NET_RESEARCHER_", extra="ignore")

    researcher_id: str = Field(default="researcher", description="Names the reply queue.")
    amqp_url: str = Field(
        default="amqp://guest:guest@127.0.0.1:5672/",
        description="RabbitMQ URL; for a cluster, its nodes' URLs separated by commas (after "
        "the first, host:port is enough), tried in turn when a node is lost.",
    )
    management_url: str = Field(
        default="http://127.0.0.1:15672", description="RabbitMQ management API URL."
    )
    management_user: str = "guest"
    management_password: str = "guest"
    namespace: str = Field(default=DEFAULT_NAMESPACE, description="Prefix of every name.")
    queue_type: Literal["classic", "quorum"] = "classic"
    data_dir: Path = Field(default=Path("./researcher-data"), description="Jobs, models, keys.")
    default_timeout: float = Field(
        default=600.0, gt=0, description="Seconds before a silent node is given up on."
    )
    security: bool = Field(
        default=True, description="Authenticate every message with this researcher's keys."
    )
    trusted_nodes: Path | None = Field(
        default=None,
        description="File or folder (*.pub) of node identities; default <data_dir>/trusted-nodes.",
    )
    log_level: str = "WARNING"
    log_json: bool = False

    @field_validator("researcher_id")
    @classmethod
    def _check_id(cls, value: str) -> str:
        return check_id("researcher id", value)

    @field_validator("amqp_url")
    @classmethod
    def _check_amqp_url(cls, value: str) -> str:
        broker_urls(value)
        return value

    def load_security(self) -> Security | None:
        """This researcher's identity and trusted nodes, or None with security off."""
        if not self.security:
            return None
        return Security.load(
            self.data_dir / "identity",
            self.researcher_id,
            "researcher",
            self.trusted_nodes or self.data_dir / "trusted-nodes",
        )

    @property
    def topology(self) -> Topology:
        """The topology these settings name."""
        return Topology(self.namespace, self.queue_type)

    @property
    def vhost(self) -> str:
        """The vhost named by ``amqp_url`` (its first URL; ``/`` when none)."""
        from urllib.parse import unquote, urlparse

        path = urlparse(broker_urls(self.amqp_url)[0]).path
        return unquote(path[1:]) if len(path) > 1 else "/"
