"""Policies decide when a federated request stops waiting.

A policy is a pure function of the request's state: it holds no state of its own between
requests, so one policy object can serve any number of requests. Each timeout runs from the
moment that node's request was sent, per node. The wait ends when every node has finished (an
answer, an error, a timeout or a disconnection) or as soon as one policy stops the request; the
first policy that stops wins.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol


class RequestStatus(StrEnum):
    """Where one node's part of a federated request stands."""

    PENDING = "PENDING"
    SUCCESS = "SUCCESS"
    ERROR = "ERROR"
    TIMEOUT = "TIMEOUT"
    DISCONNECTED = "DISCONNECTED"
    STOPPED = "STOPPED"

    @property
    def finished(self) -> bool:
        """True for every status but PENDING."""
        return self is not RequestStatus.PENDING


@dataclass(frozen=True, slots=True)
class NodeState:
    """What a policy may read about one node's request.

    Attributes:
        sent_at: monotonic time the request was published to this node.
        status: the node's status so far.
        gone_since: monotonic time since which the node is known to be gone (no heartbeat
            within its patience, or no consumer on its queue), or ``None`` while it is there.
    """

    node_id: str
    sent_at: float
    status: RequestStatus
    gone_since: float | None = None


@dataclass(frozen=True, slots=True)
class Verdict:
    """A policy's decision: nodes to mark, and whether the whole request stops."""

    marks: Mapping[str, RequestStatus]
    stop_because_of: str | None = None
    reason: str = ""


CONTINUE = Verdict(marks={})


class Policy(Protocol):
    """Decides, from the nodes' states, which nodes to give up on and whether to stop."""

    def evaluate(self, nodes: Mapping[str, NodeState], now: float) -> Verdict:
        """Return the verdict for this instant."""
        ...

    def next_deadline(self, nodes: Mapping[str, NodeState]) -> float | None:
        """The next monotonic time this policy may change its verdict, if it has one."""
        ...


def _pending(nodes: Mapping[str, NodeState], only: frozenset[str] | None) -> Iterable[NodeState]:
    return (
        state
        for state in nodes.values()
        if state.status is RequestStatus.PENDING and (only is None or state.node_id in only)
    )


class _Timeout:
    def __init__(self, timeout: float, nodes: Iterable[str] | None = None) -> None:
        if timeout < 0:
            raise ValueError("a timeout cannot be negative")
        self.timeout = float(timeout)
        self.nodes = frozenset(nodes) if nodes is not None else None

    def _late(self, nodes: Mapping[str, NodeState], now: float) -> list[str]:
        return sorted(
            state.node_id
            for state in _pending(nodes, self.nodes)
            if now - state.sent_at >= self.timeout
        )

    def next_deadline(self, nodes: Mapping[str, NodeState]) -> float | None:
        deadlines = [state.sent_at + self.timeout for state in _pending(nodes, self.nodes)]
        return min(deadlines, default=None)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.timeout:g})"


class DiscardOnTimeout(_Timeout):
    """Give up on each node that has not answered ``timeout`` seconds after its request was
    sent: it is marked TIMEOUT and the others' replies are kept.

    Args:
        timeout: seconds, fractions allowed.
        nodes: apply only to these node ids (all nodes when None).
    """

    def evaluate(self, nodes: Mapping[str, NodeState], now: float) -> Verdict:
        late = self._late(nodes, now)
        if not late:
            return CONTINUE
        return Verdict(marks=dict.fromkeys(late, RequestStatus.TIMEOUT))


class StopOnTimeout(_Timeout):
    """Stop the whole request when a node is still silent ``timeout`` seconds after its
    request was sent; silent nodes are TIMEOUT, the remaining ones STOPPED."""

    def evaluate(self, nodes: Mapping[str, NodeState], now: float) -> Verdict:
        late = self._late(nodes, now)
        if not late:
            return CONTINUE
        return Verdict(
            marks=dict.fromkeys(late, RequestStatus.TIMEOUT),
            stop_because_of=late[0],
            reason=f"node {late[0]} did not answer within {self.timeout:g} s",
        )


class StopOnError:
    """Stop the whole request at the first ErrorMessage."""

    def evaluate(self, nodes: Mapping[str, NodeState], now: float) -> Verdict:
        failed = sorted(s.node_id for s in nodes.values() if s.status is RequestStatus.ERROR)
        if not failed:
            return CONTINUE
        return Verdict(
            marks={}, stop_because_of=failed[0], reason=f"node {failed[0]} answered an error"
        )

    def next_deadline(self, nodes: Mapping[str, NodeState]) -> float | None:
        return None

    def __repr__(self) -> str:
        return "StopOnError()"


class StopOnDisconnect:
    """Stop the whole request when a node has been gone (no heartbeat within its patience, or
    no consumer on its queue) for longer than ``timeout`` seconds while its answer is due."""

    def __init__(self, timeout: float = 5.0) -> None:
        if timeout < 0:
            raise ValueError("a timeout cannot be negative")
        self.timeout = float(timeout)

    def evaluate(self, nodes: Mapping[str, NodeState], now: float) -> Verdict:
        gone = sorted(
            state.node_id
            for state in _pending(nodes, None)
            if state.gone_since is not None and now - state.gone_since >= self.timeout
        )
        if not gone:
            return CONTINUE
        return Verdict(
            marks=dict.fromkeys(gone, RequestStatus.DISCONNECTED),
            stop_because_of=gone[0],
            reason=f"node {gone[0]} has been gone for more than {self.timeout:g} s",
        )

    def next_deadline(self, nodes: Mapping[str, NodeState]) -> float | None:
        deadlines = [
            state.gone_since + self.timeout
            for state in _pending(nodes, None)
            if state.gone_since is not None
        ]
        return min(deadlines, default=None)

    def __repr__(self) -> str:
        return f"StopOnDisconnect({self.timeout:g})"


def watches_presence(policies: Iterable[Policy]) -> bool:
    """True when some policy needs to know which nodes are gone."""
    return any(isinstance(policy, StopOnDisconnect) for policy in policies)


def has_timeout(policies: Iterable[Policy]) -> bool:
    """True when some policy bounds the wait in time."""
    return any(isinstance(policy, _Timeout) for policy in policies)
