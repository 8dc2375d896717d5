"""The node agent: the daemon a data holder runs."""

from node_agent.agent import NodeAgent
from node_agent.context import HandlerError, NodeContext
from node_agent.settings import NodeSettings

__all__ = [
    "HandlerError",
    "NodeAgent",
    "NodeContext",
    "NodeSettings",
]
