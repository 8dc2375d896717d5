"""Policies decide when a federated request stops waiting.

A policy is a pure function of the request's state: it holds no state of its own between
requests, so one policy object can serve any number of requests. Each timeout runs from the
moment that node's request was sent, per node. The wait ends when every node has finished (an
answer, an error, a timeout or a disconnection) or as soon as one policy stops the request; the
first policy that stops wins.

Progress: a large reply arrives in chunks, and each chunk is progress (``NodeState.last_progress``);
so is each progress message a node sends while its plan trains
(:mod:`researcher.requests.progress`).
While a node's reply is arriving, its timeouts run from its latest chunk instead of from the
send, so a transfer that keeps moving is never cut short however long it takes, and a stalled
one ends ``timeout`` seconds after its last chunk, with a reason saying it stalled. Before the
first chunk nothing changes: a silent node times out ``timeout`` seconds after the send.
:class:`DiscardOnStall` and :class:`StopOnStall` put a tighter bound on the silence between
chunks alone.

Every policy here derives from :class:`NodePolicy`, which holds the shared ``evaluate``: a
policy only says which nodes are due and why, and whether a due node stops the whole request
(``StopOn...``) or only its own part (``DiscardOn...``). Any object with ``evaluate`` and
``next_deadline`` (:class:`Policy`) can serve as a policy too.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import ClassVar, Protocol


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
        last_progress: monotonic time the latest chunk of the node's reply (or progress
            message) arrived, or ``None`` before any did.
    """

    node_id: str
    sent_at: float
    status: RequestStatus
    gone_since: float | None = None
    last_progress: float | None = None

    @property
    def waiting_since(self) -> float:
        """Since when the node has given no sign: the send, or its reply's latest chunk."""
        if self.last_progress is None or self.last_progress < self.sent_at:
            return self.sent_at
        return self.last_progress


@dataclass(frozen=True, slots=True)
class Verdict:
    """A policy's decision: nodes to mark, and whether the whole request stops.

    Attributes:
        marks: the status given to each node the policy gives up on.
        stop_because_of: the node that made the policy stop the whole request, if any.
        reason: why, for the request as a whole.
        reasons: why, node by node, where it differs from ``reason``.
    """

    marks: Mapping[str, RequestStatus]
    stop_because_of: str | None = None
    reason: str = ""
    reasons: Mapping[str, str] = field(default_factory=dict)


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


class NodePolicy:
    """Base of the policies below: it gives up on the nodes that are due, one by one.

    A subclass says which nodes are due (:meth:`_due`, sorted by node id), why
    (:meth:`_why`) and when the next one may be (:meth:`_deadline`). Its class attributes say
    what follows: ``mark`` is the status the due nodes get (``None``: they keep theirs), and
    ``stops`` whether the first due node stops the whole request (the ``Stop...`` variants)
    or only its own part of it (the ``Discard...`` variants).

    Args:
        nodes: apply only to these node ids (all nodes when None).
    """

    mark: ClassVar[RequestStatus | None] = RequestStatus.TIMEOUT
    stops: ClassVar[bool] = False

    def __init__(self, nodes: Iterable[str] | None = None) -> None:
        self.nodes = frozenset(nodes) if nodes is not None else None

    def evaluate(self, nodes: Mapping[str, NodeState], now: float) -> Verdict:
        """Mark the due nodes; with ``stops``, stop because of the first of them."""
        due = self._due(nodes, now)
        if not due:
            return CONTINUE
        marks = {} if self.mark is None else dict.fromkeys((s.node_id for s in due), self.mark)
        reasons = self._reasons([state for state in due if state.node_id in marks], now)
        if not self.stops:
            return Verdict(marks=marks, reasons=reasons)
        first = due[0]
        return Verdict(
            marks=marks,
            stop_because_of=first.node_id,
            reason=reasons.get(first.node_id) or self._why(first, now),
            reasons=reasons,
        )

    def next_deadline(self, nodes: Mapping[str, NodeState]) -> float | None:
        """The earliest time a pending node this policy watches becomes due."""
        deadline = self._deadline
        deadlines = [d for s in _pending(nodes, self.nodes) if (d := deadline(s)) is not None]
        return min(deadlines, default=None)

    def _due(self, nodes: Mapping[str, NodeState], now: float) -> list[NodeState]:
        """The nodes to give up on at ``now``, sorted by node id."""
        raise NotImplementedError

    def _why(self, state: NodeState, now: float) -> str:
        """Why the policy gives up on the node of ``state``."""
        raise NotImplementedError

    def _deadline(self, state: NodeState) -> float | None:
        """When the pending node of ``state`` becomes due, if it can."""
        raise NotImplementedError

    def _reasons(self, marked: list[NodeState], now: float) -> dict[str, str]:
        return {state.node_id: self._why(state, now) for state in marked}


class _Timeout(NodePolicy):
    """Gives up on each node silent for ``timeout`` seconds since its send or latest chunk."""

    def __init__(self, timeout: float, nodes: Iterable[str] | None = None) -> None:
        if timeout < 0:
            raise ValueError("a timeout cannot be negative")
        super().__init__(nodes)
        self.timeout = float(timeout)

    def _due(self, nodes: Mapping[str, NodeState], now: float) -> list[NodeState]:
        late = [
            state
            for state in _pending(nodes, self.nodes)
            if now - state.waiting_since >= self.timeout
        ]
        return sorted(late, key=lambda state: state.node_id)

    def _why(self, state: NodeState, now: float) -> str:
        if state.last_progress is not None and state.last_progress >= state.sent_at:
            return (
                f"the reply of node {state.node_id} stalled: no chunk for "
                f"{now - state.last_progress:.1f} s (timeout {self.timeout:g} s)"
            )
        return f"node {state.node_id} did not answer within {self.timeout:g} s"

    def _deadline(self, state: NodeState) -> float | None:
        return state.waiting_since + self.timeout

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.timeout:g})"


class DiscardOnTimeout(_Timeout):
    """Give up on each node that has not answered ``timeout`` seconds after its request was
    sent (or after the latest chunk of its reply, while one is arriving): it is marked TIMEOUT
    and the others' replies are kept.

    Args:
        timeout: seconds, fractions allowed.
        nodes: apply only to these node ids (all nodes when None).
    """


class StopOnTimeout(_Timeout):
    """Stop the whole request when a node is still silent ``timeout`` seconds after its
    request was sent (or after the latest chunk of its reply, while one is arriving); silent
    nodes are TIMEOUT, the remaining ones STOPPED."""

    stops = True


class _Stall(NodePolicy):
    """Gives up on each node whose reply started arriving, then saw no chunk for ``idle`` s."""

    def __init__(self, idle: float, nodes: Iterable[str] | None = None) -> None:
        if idle <= 0:
            raise ValueError("an idle time must be positive")
        super().__init__(nodes)
        self.idle = float(idle)

    def _due(self, nodes: Mapping[str, NodeState], now: float) -> list[NodeState]:
        stalled = [
            state
            for state in _pending(nodes, self.nodes)
            if state.last_progress is not None and now - state.last_progress >= self.idle
        ]
        return sorted(stalled, key=lambda state: state.node_id)

    def _why(self, state: NodeState, now: float) -> str:
        return (
            f"the reply of node {state.node_id} stalled: no chunk for "
            f"{now - (state.last_progress or now):.1f} s (idle limit {self.idle:g} s)"
        )

    def _deadline(self, state: NodeState) -> float | None:
        return None if state.last_progress is None else state.last_progress + self.idle

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.idle:g})"


class DiscardOnStall(_Stall):
    """Give up on each node whose reply started arriving in chunks and then saw none for
    ``idle`` seconds: it is marked TIMEOUT. Nodes whose reply has not started are left to the
    timeouts.

    Args:
        idle: seconds without a chunk, fractions allowed.
        nodes: apply only to these node ids (all nodes when None).
    """


class StopOnStall(_Stall):
    """Stop the whole request when a node's reply started arriving in chunks and then saw
    none for ``idle`` seconds; stalled nodes are TIMEOUT, the remaining ones STOPPED."""

    stops = True


class StopOnError(NodePolicy):
    """Stop the whole request at the first ErrorMessage."""

    mark = None
    stops = True

    def __init__(self) -> None:
        super().__init__()

    def _due(self, nodes: Mapping[str, NodeState], now: float) -> list[NodeState]:
        failed = [state for state in nodes.values() if state.status is RequestStatus.ERROR]
        return sorted(failed, key=lambda state: state.node_id)

    def _why(self, state: NodeState, now: float) -> str:
        return f"node {state.node_id} answered an error"

    def next_deadline(self, nodes: Mapping[str, NodeState]) -> float | None:
        return None

    def __repr__(self) -> str:
        return "StopOnError()"


class StopOnDisconnect(NodePolicy):
    """Stop the whole request when a node has been gone (no heartbeat within its patience, or
    no consumer on its queue) for longer than ``timeout`` seconds while its answer is due."""

    mark = RequestStatus.DISCONNECTED
    stops = True

    def __init__(self, timeout: float = 5.0) -> None:
        if timeout < 0:
            raise ValueError("a timeout cannot be negative")
        super().__init__()
        self.timeout = float(timeout)

    def _due(self, nodes: Mapping[str, NodeState], now: float) -> list[NodeState]:
        gone = [
            state
            for state in _pending(nodes, None)
            if state.gone_since is not None and now - state.gone_since >= self.timeout
        ]
        return sorted(gone, key=lambda state: state.node_id)

    def _why(self, state: NodeState, now: float) -> str:
        return f"node {state.node_id} has been gone for more than {self.timeout:g} s"

    def _deadline(self, state: NodeState) -> float | None:
        return None if state.gone_since is None else state.gone_since + self.timeout

    def _reasons(self, marked: list[NodeState], now: float) -> dict[str, str]:
        # The request's reason (naming the first gone node) stands for every gone node.
        return {}

    def __repr__(self) -> str:
        return f"StopOnDisconnect({self.timeout:g})"


def watches_presence(policies: Iterable[Policy]) -> bool:
    """True when some policy needs to know which nodes are gone."""
    return any(isinstance(policy, StopOnDisconnect) for policy in policies)


def longest_wait(policies: Iterable[Policy]) -> float | None:
    """The longest time any timeout policy waits for a node, or ``None`` without one: after
    it, a request still waiting in a node's queue is of no use to anybody."""
    timeouts = [policy.timeout for policy in policies if isinstance(policy, _Timeout)]
    return max(timeouts, default=None)


def has_timeout(policies: Iterable[Policy]) -> bool:
    """True when some policy bounds the wait in time."""
    return any(isinstance(policy, _Timeout) for policy in policies)
