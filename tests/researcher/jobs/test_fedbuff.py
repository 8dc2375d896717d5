"""FedBuff's server, its staleness weights and the stop conditions, without a network."""

from __future__ import annotations

import math

import numpy as np
import pytest

from researcher.jobs.buffered_records import StopWhen
from researcher.jobs.fedbuff import FedBuffServer, FedBuffSettings, staleness_weight


def test_staleness_weights() -> None:
    sqrt = staleness_weight("polynomial")
    assert [sqrt(s) for s in (0, 3, 8)] == pytest.approx([1, 0.5, 1 / 3])
    assert staleness_weight("constant")(7) == 1.0
    hinge = staleness_weight("hinge", hinge_a=10, hinge_b=4)
    assert [hinge(s) for s in (0, 4, 5)] == pytest.approx([1, 1, 1 / 11])
    with pytest.raises(ValueError, match="unknown staleness weighting"):
        staleness_weight("linear")  # type: ignore[arg-type]


def test_a_full_buffer_publishes_the_staleness_weighted_step() -> None:
    server = FedBuffServer(
        FedBuffSettings(buffer_size=2, server_learning_rate=0.5, max_staleness=1,
                        weight_by_sample_size=False),
        {"w": np.zeros(2)},
    )  # fmt: skip
    first, published = server.receive("r1", "a", 0, {"w": np.array([2.0, 0.0])}, 10)
    assert (first.staleness, first.dropped, published) == (0, False, None)
    _, published = server.receive("r2", "b", 0, {"w": np.array([0.0, 4.0])}, 30)
    assert published is not None and published.version == 1 == server.version
    np.testing.assert_allclose(server.params["w"], [0.5, 1.0])  # 0.5 * mean of the deltas
    # Trained on version 0, arriving at version 1: staleness 1, weight 1/sqrt(2).
    stale, _ = server.receive("r3", "a", 0, {"w": np.array([2.0, 2.0])}, 10)
    assert stale.staleness == 1 and not stale.dropped
    assert server.buffer[0].weight == pytest.approx(1 / math.sqrt(2))
    np.testing.assert_allclose(server.buffer[0].delta["w"], [2.0, 2.0])  # from version 0
    server.receive("r4", "b", 1, {"w": np.array([0.5, 1.0])}, 10)
    server.receive("r5", "a", 2, {"w": server.params["w"]}, 10)
    # Version 0 is now 2 versions old: over max_staleness 1, dropped and counted.
    dropped, published = server.receive("r6", "b", 0, {"w": np.zeros(2)}, 10)
    assert dropped.dropped and dropped.staleness == 2 and published is None


def test_updates_that_do_not_fit_the_model_are_refused() -> None:
    server = FedBuffServer(FedBuffSettings(), {"w": np.zeros(2)})
    with pytest.raises(ValueError, match="shape"):
        server.receive("r", "a", 0, {"w": np.zeros(3)}, 1)
    with pytest.raises(ValueError, match="names"):
        server.receive("r", "a", 0, {"v": np.zeros(2)}, 1)
    with pytest.raises(ValueError, match="newer"):
        server.receive("r", "a", 1, {"w": np.zeros(2)}, 1)


def test_settings_and_stop_conditions_are_checked() -> None:
    with pytest.raises(ValueError, match="buffer_size"):
        FedBuffSettings(buffer_size=0)
    with pytest.raises(ValueError, match="must end"):
        StopWhen()
    with pytest.raises(ValueError, match="together"):
        StopWhen(max_versions=3, target_metric="accuracy")
    stop = StopWhen(max_versions=5, target_metric="loss", target_value=0.2, target_mode="min")
    assert stop.reached(1, {"loss": 0.3}) is None
    assert stop.reached(2, {"loss": 0.19}) == "loss 0.19 reached 0.2"
    assert stop.reached(5, {}) == "version 5 of 5 published"
