"""The request layer: send one request to many nodes and collect their replies under policies.

- :mod:`~researcher.requests.router`: :class:`Requests`, the researcher's side of the network,
  routing every reply to the request it answers;
- :mod:`~researcher.requests.federated`: :class:`FederatedRequest`, one request and its results;
- :mod:`~researcher.requests.policies`: when a request stops waiting;
- :mod:`~researcher.requests.hooks`: :class:`RequestHooks`, to record or resume a request;
- :mod:`~researcher.requests.presence`: what the node heartbeats say;
- :mod:`~researcher.requests.progress`: the nodes' progress, routed to its request;
- :mod:`~researcher.requests.cancel_answers`: waiting for the answers to cancelled requests.
"""

from researcher.requests.cancel_answers import await_cancel_answers
from researcher.requests.federated import FederatedRequest, MessagesByNode, PolicyReport
from researcher.requests.hooks import RequestHooks
from researcher.requests.ledger import NodeTiming, Receipt
from researcher.requests.policies import (
    DiscardOnStall,
    DiscardOnTimeout,
    NodePolicy,
    NodeState,
    Policy,
    RequestStatus,
    StopOnDisconnect,
    StopOnError,
    StopOnStall,
    StopOnTimeout,
    Verdict,
)
from researcher.requests.presence import NodePresence, PresenceTable
from researcher.requests.progress import ProgressEvent
from researcher.requests.reply_log import LateReply
from researcher.requests.router import Requests

__all__ = [
    "DiscardOnStall",
    "DiscardOnTimeout",
    "FederatedRequest",
    "LateReply",
    "MessagesByNode",
    "NodePolicy",
    "NodePresence",
    "NodeState",
    "NodeTiming",
    "Policy",
    "PolicyReport",
    "PresenceTable",
    "ProgressEvent",
    "Receipt",
    "RequestHooks",
    "RequestStatus",
    "Requests",
    "StopOnDisconnect",
    "StopOnError",
    "StopOnStall",
    "StopOnTimeout",
    "Verdict",
    "await_cancel_answers",
]
