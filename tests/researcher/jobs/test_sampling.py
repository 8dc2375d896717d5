"""Client sampling: seeded choices, mandatory and excluded nodes, availability from presence."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from broker_net.messages import Heartbeat
from researcher.jobs.sampling import (
    EXCLUDED,
    NEVER_SEEN,
    STOPPING,
    Sampling,
    SamplingError,
    availability,
)
from researcher.requests.presence import PresenceTable

NODES = [f"n{i}" for i in range(10)]


def test_the_same_seed_makes_the_same_choices_and_rounds_differ() -> None:
    sampling = Sampling(fraction=0.3, seed=1)
    first = [sampling.choose(r, NODES) for r in range(1, 6)]
    again = [Sampling(fraction=0.3, seed=1).choose(r, list(reversed(NODES))) for r in range(1, 6)]
    assert first == again
    assert all(len(chosen) == 3 and chosen == sorted(chosen) for chosen in first)
    assert len({tuple(chosen) for chosen in first}) > 1
    assert [Sampling(fraction=0.3, seed=2).choose(r, NODES) for r in range(1, 6)] != first


def test_sizes_fraction_rounds_up_count_caps_min_nodes_floors() -> None:
    assert Sampling(fraction=0.5).size(5) == 3
    assert Sampling(fraction=0.3).size(10) == 3
    assert Sampling(fraction=0.01).size(10) == 1
    assert Sampling(count=4).size(3) == 3
    assert Sampling(count=1, min_nodes=2).size(10) == 2
    assert Sampling().size(7) == 7


def test_mandatory_nodes_are_always_taken_when_available() -> None:
    sampling = Sampling(count=2, seed=3, mandatory=("n7", "n9", "gone"))
    for number in range(1, 20):
        chosen = sampling.choose(number, NODES)
        assert chosen == ["n7", "n9"]
    wider = Sampling(count=4, seed=3, mandatory=("n7",))
    assert all("n7" in wider.choose(r, NODES) for r in range(1, 20))
    assert wider.choose(1, ["n1", "n2", "n3"]) == ["n1", "n2", "n3"]


def test_too_few_available_nodes_is_a_clear_error() -> None:
    with pytest.raises(SamplingError, match=r"round 4: 1 node\(s\) available, 2 needed"):
        Sampling(fraction=0.5, min_nodes=2).choose(4, ["n1"])


def test_bad_settings_are_refused() -> None:
    for settings, message in [
        ({"fraction": 0.5, "count": 2}, "not both"),
        ({"fraction": 0.0}, "fraction"),
        ({"fraction": 1.5}, "fraction"),
        ({"count": 0}, "count"),
        ({"min_nodes": 0}, "min_nodes"),
        ({"mandatory": ("n1",), "exclude": ("n1",)}, "both mandatory and excluded"),
    ]:
        with pytest.raises(ValueError, match=message):
            Sampling(**settings)  # type: ignore[arg-type]


def _beat(node: str, *, stopping: bool = False) -> Heartbeat:
    return Heartbeat(node_id=node, node_name=node, interval=1.0, stopping=stopping)


def test_availability_gives_each_unavailable_node_its_reason() -> None:
    presence = PresenceTable(patience=3)
    now = datetime.now(UTC)
    presence.update(_beat("on"), arrived=now, arrived_monotonic=100.0)
    presence.update(_beat("late"), arrived=now, arrived_monotonic=90.0)
    presence.update(_beat("leaving", stopping=True), arrived=now, arrived_monotonic=100.0)
    presence.update(_beat("out"), arrived=now, arrived_monotonic=100.0)

    available, skipped = availability(
        ["on", "late", "leaving", "never", "out"], presence, exclude=["out"], now=101.0
    )

    assert available == ["on"]
    assert skipped == {
        "late": "offline: last heartbeat 11.0 s ago (expected every 1 s)",
        "leaving": STOPPING,
        "never": NEVER_SEEN,
        "out": EXCLUDED,
    }
    with pytest.raises(SamplingError, match="late: offline: last heartbeat"):
        Sampling(min_nodes=2).available(3, ["on", "late"], presence)
