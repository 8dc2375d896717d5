"""Federated analytics under secure aggregation against plain analytics, in process on the
in-memory transport: the same sums and means to 1e-9 of the sum of magnitudes, on data drawn
at random at several magnitudes; values outside the declared range refused before sending."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from broker_net.codes import ErrorCode
from node_agent.datasets import DatasetRegistry
from researcher.errors import JobError, NodeErrorReply, NodeErrors, SecureAggregationError
from researcher.jobs.analytics import FARequestJob
from researcher.requests.policies import DiscardOnTimeout
from researcher.requests.router import Requests
from simulation.federation import _simulated_network

pytestmark = pytest.mark.anyio
NODES = ["n1", "n2", "n3"]
SEEDS = [0, 1, 2, 3]
COLUMNS = ["tiny", "centred", "unit", "offset", "large"]
RANGE = 1e8
TOLERANCE = 1e-9


def draw(seed: int, rows: int) -> np.ndarray:
    """Columns near zero (tiny, centred around 0), of unit size, offset from 0 and large."""
    rng = np.random.default_rng(seed)
    return np.column_stack(
        [
            rng.normal(0.0, 1e-6, rows),
            rng.normal(0.0, 0.05, rows) - 1e-17,
            rng.uniform(-1.0, 1.0, rows),
            rng.normal(1e4, 1.0, rows),
            rng.normal(0.0, 1e7, rows).clip(-RANGE, RANGE),
        ]
    )


@pytest.fixture
async def network(
    tmp_path: Path,
) -> AsyncIterator[tuple[Requests, dict[int, dict[str, str]], dict[int, np.ndarray]]]:
    ids: dict[int, dict[str, str]] = {seed: {} for seed in [*SEEDS, 99]}
    pooled: dict[int, list[np.ndarray]] = {seed: [] for seed in [*SEEDS, 99]}
    for index, node in enumerate(NODES):
        folder = tmp_path / "nodes" / node
        folder.mkdir(parents=True)
        with DatasetRegistry(folder) as registry:
            for seed in [*SEEDS, 99]:
                x = draw(1000 * seed + index, 50 + 40 * index)
                if seed == 99 and node != "n1":  # out of range on n2 and n3
                    x[3, 4] = 2 * RANGE
                path = folder / f"data-{seed}.npz"
                np.savez(path, X=x, y=np.zeros(len(x)), columns=np.array(COLUMNS))
                ids[seed][node] = registry.add(path, name=f"data-{seed}").dataset_id
                pooled[seed].append(x)
    async with _simulated_network(tmp_path, NODES) as requests:
        yield requests, ids, {seed: np.vstack(parts) for seed, parts in pooled.items()}


def _job(requests: Requests, datasets: dict[str, str], **options: Any) -> FARequestJob:
    return FARequestJob(
        requests, experiment_id="exp", fa_id="fa", datasets=datasets,
        stats=["count", "sum", "mean", "variance"], dataset_schema=COLUMNS,
        policies=[DiscardOnTimeout(30)], **options,
    )  # fmt: skip


async def test_secure_sums_and_means_agree_with_plain_ones_to_1e_9(
    network: tuple[Requests, dict[int, dict[str, str]], dict[int, np.ndarray]],
) -> None:
    requests, ids, pooled = network
    worst = 0.0
    for seed in SEEDS:
        secure = await _job(
            requests, ids[seed], secagg=True, secagg_options={"value_range": RANGE}
        ).execute()
        plain = await _job(requests, ids[seed]).execute()
        for index, column in enumerate(COLUMNS):
            magnitude = float(np.sum(np.abs(pooled[seed][:, index])))
            got, want = secure.statistics["columns"][column], plain.statistics["columns"][column]
            assert got["count"] == want["count"]
            error = abs(got["sum"] - want["sum"]) / magnitude
            mean_error = abs(got["mean"] - want["mean"]) * want["count"] / magnitude
            assert error <= TOLERANCE and mean_error <= TOLERANCE, (seed, column, error)
            worst = max(worst, error, mean_error)
            assert got["variance"] == pytest.approx(want["variance"], rel=1e-6, abs=1e-30)
    print(f"worst disagreement relative to the sum of magnitudes: {worst:.3g}")


async def test_the_default_range_is_as_precise_near_zero(
    network: tuple[Requests, dict[int, dict[str, str]], dict[int, np.ndarray]],
) -> None:
    requests, ids, pooled = network
    secure = await _job(requests, ids[0], secagg=True).execute()
    plain = await _job(requests, ids[0]).execute()
    for index, column in enumerate(COLUMNS):
        magnitude = float(np.sum(np.abs(pooled[0][:, index])))
        got, want = secure.statistics["columns"][column], plain.statistics["columns"][column]
        assert abs(got["sum"] - want["sum"]) <= TOLERANCE * magnitude, column


async def test_values_outside_the_declared_range_are_refused_by_every_node_holding_them(
    network: tuple[Requests, dict[int, dict[str, str]], dict[int, np.ndarray]],
) -> None:
    requests, ids, _ = network
    with pytest.raises(NodeErrors) as raised:
        await _job(requests, ids[99], secagg=True, secagg_options={"value_range": RANGE}).execute()
    error = raised.value
    assert sorted(error.errors) == ["n2", "n3"]
    assert all(e.code is ErrorCode.SECAGG_FAILED for e in error.errors.values())
    assert "outside the declared range ±1e+08" in str(error)
    assert "n2" in str(error) and "n3" in str(error)
    assert isinstance(error, NodeErrorReply) and isinstance(error, JobError)


async def test_sums_no_ring_can_hold_are_refused_before_anything_is_sent(
    network: tuple[Requests, dict[int, dict[str, str]], dict[int, np.ndarray]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    requests, ids, _ = network

    async def sent(*args: object, **kwargs: object) -> None:
        raise AssertionError("a request was sent")

    monkeypatch.setattr(requests, "request", sent)
    for options in (
        {"value_range": 1e30, "precision_bits": 400},
        {"value_range": 1e100},
        {"value_range": -1.0},
    ):
        with pytest.raises(SecureAggregationError, match="secure aggregation"):
            await _job(requests, ids[0], secagg=True, secagg_options=options).execute()
    with pytest.raises(JobError, match="unknown secure aggregation options: digits"):
        _job(requests, ids[0], secagg=True, secagg_options={"digits": 3})


async def test_every_failing_node_is_named(
    network: tuple[Requests, dict[int, dict[str, str]], dict[int, np.ndarray]],
) -> None:
    requests, ids, _ = network
    datasets = {"n1": "dataset_" + "1" * 32, "n2": ids[0]["n2"], "n3": "dataset_" + "3" * 32}
    with pytest.raises(NodeErrors) as raised:
        await _job(requests, datasets).execute()
    error = raised.value
    assert sorted(error.errors) == ["n1", "n3"]
    assert {e.code for e in error.errors.values()} == {ErrorCode.DATASET_NOT_FOUND}
    assert str(error).startswith("2 nodes answered errors: node n1 answered DATASET_NOT_FOUND")
    assert "node n3 answered DATASET_NOT_FOUND" in str(error)
    assert error.node_id == "n1" and error.error is error.errors["n1"]
