"""Policies are pure: the same objects decide the same way for every request."""

from __future__ import annotations

import pytest

from researcher.requests.policies import (
    DiscardOnTimeout,
    NodeState,
    RequestStatus,
    StopOnDisconnect,
    StopOnError,
    StopOnTimeout,
)

PENDING = RequestStatus.PENDING


def _nodes(**sent_at: float) -> dict[str, NodeState]:
    return {node: NodeState(node, at, PENDING) for node, at in sent_at.items()}


def test_discard_on_timeout_marks_each_node_from_its_own_send_time() -> None:
    policy = DiscardOnTimeout(0.25)
    nodes = _nodes(a=10.0, b=10.2)

    assert policy.evaluate(nodes, 10.24).marks == {}
    verdict = policy.evaluate(nodes, 10.3)
    assert verdict.marks == {"a": RequestStatus.TIMEOUT}
    assert verdict.stop_because_of is None
    assert policy.next_deadline(nodes) == pytest.approx(10.25)


def test_discard_on_timeout_can_watch_only_some_nodes() -> None:
    verdict = DiscardOnTimeout(1, nodes=["b"]).evaluate(_nodes(a=0.0, b=0.0), 5.0)
    assert verdict.marks == {"b": RequestStatus.TIMEOUT}


def test_stop_on_timeout_stops_because_of_the_first_late_node() -> None:
    verdict = StopOnTimeout(1).evaluate(_nodes(a=0.0, b=0.5, c=0.9), 1.6)
    assert verdict.marks == {"a": RequestStatus.TIMEOUT, "b": RequestStatus.TIMEOUT}
    assert verdict.stop_because_of == "a"
    assert "1 s" in verdict.reason


def test_stop_on_error() -> None:
    nodes = _nodes(a=0.0) | {"b": NodeState("b", 0.0, RequestStatus.ERROR)}
    verdict = StopOnError().evaluate(nodes, 0.1)
    assert verdict.stop_because_of == "b"
    assert StopOnError().evaluate(_nodes(a=0.0), 0.1).stop_because_of is None


def test_stop_on_disconnect_waits_for_the_timeout_after_the_node_is_gone() -> None:
    gone = {"a": NodeState("a", 0.0, PENDING, gone_since=2.0)}
    policy = StopOnDisconnect(1.5)
    assert policy.evaluate(gone, 3.0).stop_because_of is None
    assert policy.next_deadline(gone) == pytest.approx(3.5)
    verdict = policy.evaluate(gone, 3.5)
    assert verdict.stop_because_of == "a"
    assert verdict.marks == {"a": RequestStatus.DISCONNECTED}


def test_policies_keep_no_state_between_requests() -> None:
    policy = StopOnTimeout(1)
    first = policy.evaluate(_nodes(a=0.0), 2.0)
    second = policy.evaluate(_nodes(a=100.0), 100.5)
    assert first.stop_because_of == "a"
    assert second.stop_because_of is None


def test_finished_nodes_are_ignored() -> None:
    nodes = {"a": NodeState("a", 0.0, RequestStatus.SUCCESS)}
    assert DiscardOnTimeout(1).evaluate(nodes, 10).marks == {}
    assert StopOnTimeout(1).next_deadline(nodes) is None


def test_negative_timeouts_are_refused() -> None:
    with pytest.raises(ValueError, match="negative"):
        DiscardOnTimeout(-1)
