"""Configuration of a researcher process, from ``BROKER_NET_RESEARCHER_*`` variables."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, field_validator
from pydantic_settings import SettingsConfigDict

from broker_net.crypto.authentication import Security
from broker_net.settings import PartySettings
from broker_net.topology import check_id


class ResearcherSettings(PartySettings):
    """Everything a researcher process needs to reach the network."""

    model_config = SettingsConfigDict(env_prefix="BROKER_NET_RESEARCHER_", extra="ignore")

    researcher_id: str = Field(default="researcher", description="Names the reply queue.")
    management_url: str = Field(
        default="http://127.0.0.1:15672", description="RabbitMQ management API URL."
    )
    management_user: str = "guest"
    management_password: str = "guest"
    data_dir: Path = Field(default=Path("./researcher-data"), description="Jobs, models, keys.")
    default_timeout: float = Field(
        default=600.0, gt=0, description="Seconds before a silent node is given up on."
    )
    broker_patience: float = Field(
        default=30.0,
        gt=0,
        description="Seconds a command rides out a lost broker connection before it fails.",
    )
    security: bool = Field(
        default=True, description="Authenticate every message with this researcher's keys."
    )
    trusted_nodes: Path | None = Field(
        default=None,
        description="File or folder (*.pub) of node identities; default <data_dir>/trusted-nodes.",
    )

    @field_validator("researcher_id")
    @classmethod
    def _check_id(cls, value: str) -> str:
        return check_id("researcher id", value)

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
