"""What a request handler may use on the node, and how it reports failure."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from broker_net.codes import ErrorCode
from broker_net.crypto.authentication import Security
from broker_net.crypto.secagg_node import SecaggNode
from node_agent.datasets import DatasetRegistry
from node_agent.plans import PlanRegistry
from node_agent.settings import NodeSettings
from node_agent.state import NodeStateStore


class HandlerError(Exception):
    """Raised by a handler to answer with an ErrorMessage of a chosen code.

    The message is sent to the researcher as is, so it must not leak data or tracebacks.
    """

    def __init__(self, code: ErrorCode, message: str, **details: Any) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.details = details


@dataclass
class NodeContext:
    """The node's settings and stores, shared by every handler.

    Build it with :meth:`open`; every store is safe to use from worker threads.

    Attributes:
        security: the node's identity and trusted researchers, when the agent authenticates
            messages; secure aggregation and encrypted payloads need it.
        secagg: the node's side of each secure aggregation context, by researcher id and
            secagg id. Kept in memory only: an agent that restarts forgets its contexts, and
            their later rounds count it as dropped out.
    """

    settings: NodeSettings
    datasets: DatasetRegistry
    plans: PlanRegistry
    states: NodeStateStore
    security: Security | None = None
    secagg: dict[tuple[str, str], SecaggNode] = field(default_factory=dict)

    @classmethod
    def open(cls, settings: NodeSettings, *, security: Security | None = None) -> NodeContext:
        """Create the data folder and open the node's stores in it."""
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        datasets = DatasetRegistry(settings.data_dir)
        try:
            plans = PlanRegistry(settings.data_dir)
            try:
                states = NodeStateStore(settings.data_dir)
            except BaseException:
                plans.close()
                raise
        except BaseException:
            datasets.close()
            raise
        return cls(settings, datasets, plans, states, security)

    def close(self) -> None:
        """Close the node's stores."""
        self.states.close()
        self.plans.close()
        self.datasets.close()

    @property
    def node_id(self) -> str:
        """This node's id."""
        return self.settings.node_id

    @property
    def node_name(self) -> str:
        """This node's display name."""
        return self.settings.display_name

    def dataset_ids(self) -> list[str]:
        """Ids of the node's datasets, as announced in heartbeats."""
        datasets = self.datasets
        if not datasets.file_exists():
            return []  # a node without datasets keeps no database open for announcing none
        was_open = datasets.is_open
        ids = [entry.dataset_id for entry in datasets.list()]
        if not was_open:
            datasets.release_file()  # opened for this heartbeat only: no descriptors held between
        return ids
