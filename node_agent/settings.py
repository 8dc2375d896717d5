"""Configuration of a node agent, from ``BROKER_NET_NODE_*`` environment variables or a file."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, field_validator
from pydantic_settings import SettingsConfigDict

from broker_net.settings import PartySettings
from broker_net.topology import check_id
from node_agent.replier import STORED_REPLY_LIMIT


class NodeSettings(PartySettings):
    """Everything a node agent needs to know at start.

    Every field can be set from the environment, e.g. ``BROKER_NET_NODE_NODE_ID=hospital-a``,
    or from the ``.env`` file named by ``env_file``.
    """

    model_config = SettingsConfigDict(env_prefix="BROKER_NET_NODE_", env_file=None, extra="ignore")

    node_id: str = Field(description="Unique id of this node; names its request queue.")
    node_name: str = Field(default="", description="Human-readable name shown to researchers.")
    data_dir: Path = Field(
        default=Path("./node-data"),
        description="Folder for the dataset registry, training plans, state and keys.",
    )
    require_approval: bool = Field(
        default=True, description="Refuse training plans an operator has not approved."
    )
    plan_timeout: float = Field(
        default=600.0, gt=0, description="Seconds a training plan may run before it is killed."
    )
    plan_sandbox: bool = Field(
        default=True,
        description="Isolate training plans where the machine allows it: a separate user (agent "
        "run as root), no network, their own processes and /tmp. Off: limits only.",
    )
    plan_user: str = Field(
        default="nobody",
        description="User (name or uid, optionally ':gid') plans run as when the agent is root; "
        "best a user of their own, as RLIMIT_NPROC counts all of its processes.",
    )
    plan_memory_limit: int = Field(
        default=4 * 1024**3, gt=0, description="Address space of each plan process (RLIMIT_AS)."
    )
    plan_max_processes: int = Field(
        default=64, ge=1, description="Processes and threads of the plan user (RLIMIT_NPROC)."
    )
    plan_max_open_files: int = Field(
        default=256, ge=16, description="Open files of each plan process (RLIMIT_NOFILE)."
    )
    plan_max_file_size: int = Field(
        default=512 * 1024**2, gt=0, description="Largest file a plan may write (RLIMIT_FSIZE)."
    )
    plan_tmp_size: int = Field(
        default=512 * 1024**2,
        gt=0,
        description="Size of a plan's private /tmp (memory-backed), where it is isolated.",
    )
    plan_threads: int = Field(
        default=1, ge=1, description="Threads numpy's BLAS and OpenMP may use in a plan."
    )
    plan_output_limit: int = Field(
        default=64 * 1024,
        ge=1024,
        description="Bytes of a plan's output kept for the node's log: its head and tail.",
    )
    plan_max_result_size: int = Field(
        default=1024**3, gt=0, description="Largest result a plan may send back, in bytes."
    )
    plan_workers: int = Field(
        default=0,
        ge=0,
        description="Warm plan processes kept between the rounds of an experiment (e.g. 2); "
        "0 starts a fresh process every round.",
    )
    plan_worker_idle_timeout: float = Field(
        default=300.0, gt=0, description="Seconds an unused warm plan process is kept."
    )
    plan_worker_max_rounds: int = Field(
        default=100, ge=1, description="Rounds a warm plan process serves before a fresh one."
    )
    plan_worker_max_rss: int = Field(
        default=2 * 1024**3,
        gt=0,
        description="Resident memory (bytes) past which a warm plan process is replaced.",
    )
    heartbeat_interval: float = Field(default=2.0, gt=0, description="Seconds between heartbeats.")
    progress_interval: float = Field(
        default=0.5,
        ge=0,
        description="Seconds between two progress messages of one training round; 0 sends none.",
    )
    prefetch: int = Field(default=16, ge=1, description="Requests held unacknowledged at once.")
    heavy_concurrency: int = Field(
        default=1, ge=1, description="Training / preprocessing / analytics runs at once."
    )
    max_message_size: int = Field(
        default=4 * 1024**3, gt=0, description="Largest request accepted, in bytes."
    )
    stored_reply_limit: int = Field(
        default=STORED_REPLY_LIMIT,
        ge=0,
        description="Largest reply (bytes) kept on disk to answer a redelivered or resent "
        "request without running it again; 0 keeps none (such a request runs again).",
    )
    security: bool = Field(
        default=True,
        description="Authenticate every message: refuse what a trusted researcher did not sign.",
    )
    trusted_researchers: Path | None = Field(
        default=None,
        description="File or folder (*.pub) of researcher identities this node accepts; "
        "default <data_dir>/trusted-researchers.",
    )
    message_window: float = Field(
        default=300.0, gt=0, description="Seconds a message's timestamp may be off."
    )

    @field_validator("node_id")
    @classmethod
    def _check_node_id(cls, value: str) -> str:
        return check_id("node id", value)

    @property
    def identity_dir(self) -> Path:
        """Where this node's identity keys live."""
        return self.data_dir / "identity"

    @property
    def trust_path(self) -> Path:
        """The researcher identities this node trusts."""
        return self.trusted_researchers or self.data_dir / "trusted-researchers"

    @property
    def display_name(self) -> str:
        """The node's name, or its id when it has none."""
        return self.node_name or self.node_id
