"""Federated statistics merged from node shards equal the statistics of the pooled data."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest

from node_agent.analytics import compute_statistics, plan_statistics
from node_agent.datasets import Table
from researcher.jobs.statistics import combine_statistics

COLUMNS = ["age", "dose", "score"]
BINS = [-50.0, 0.0, 10.0, 20.0, 40.0, 60.0, 100.0]
LEVELS = [0.0, 0.1, 0.25, 0.5, 0.75, 0.9, 1.0]


def pooled_and_shards(seed: int) -> tuple[np.ndarray, list[Table]]:
    rng = np.random.default_rng(seed)
    n = int(rng.integers(800, 3000))
    data = np.column_stack(
        [
            rng.normal(45, 15, n),
            rng.exponential(3.0, n) + 1.0,
            np.round(rng.uniform(0, 50, n)),  # many ties
        ]
    )
    data[rng.random(data.shape) < 0.1] = np.nan
    cuts = np.sort(rng.choice(np.arange(1, n), size=4, replace=False))
    shards = [Table(list(COLUMNS), part) for part in np.split(data, cuts)]
    return data, shards


def federated(shards: list[Table], **request: Any) -> dict[str, Any]:
    outputs = [compute_statistics(shard, plan_statistics(COLUMNS, **request)) for shard in shards]
    return combine_statistics(outputs)


@pytest.mark.parametrize("seed", range(5))
def test_moments_extremes_and_histograms_equal_the_pooled_computation(seed):
    pooled, shards = pooled_and_shards(seed)
    result = federated(
        shards,
        stats=["count", "missing", "sum", "mean", "variance", "std", "min", "max", "histogram"],
        dataset_schema={name: {"bins": BINS} for name in COLUMNS},
    )

    assert result["n_rows"] == len(pooled)
    assert result["nodes"] == len(shards)
    for j, name in enumerate(COLUMNS):
        column = pooled[:, j]
        present = column[~np.isnan(column)]
        stats = result["columns"][name]
        assert stats["count"] == present.size
        assert stats["missing"] == np.isnan(column).sum()
        assert stats["sum"] == pytest.approx(present.sum(), rel=1e-9)
        assert stats["mean"] == pytest.approx(present.mean(), rel=1e-9)
        assert stats["variance"] == pytest.approx(np.var(present, ddof=1), rel=1e-9)
        assert stats["std"] == pytest.approx(np.std(present, ddof=1), rel=1e-9)
        assert stats["min"] == present.min()
        assert stats["max"] == present.max()
        counts, _ = np.histogram(present, bins=BINS)
        assert stats["histogram"]["counts"] == counts.tolist()
        assert stats["histogram"]["bin_edges"] == BINS


def test_population_variance_with_ddof_zero():
    pooled, shards = pooled_and_shards(7)
    result = federated(shards, stats_args={"dose": {"variance": {"ddof": 0}, "std": {"ddof": 0}}})
    present = pooled[:, 1][~np.isnan(pooled[:, 1])]
    assert result["columns"]["dose"]["variance"] == pytest.approx(np.var(present), rel=1e-9)
    assert result["columns"]["dose"]["std"] == pytest.approx(np.std(present), rel=1e-9)


def test_quantiles_are_exact_when_every_node_fits_in_its_sketch():
    pooled, shards = pooled_and_shards(3)
    result = federated(
        shards,
        stats_args={name: {"quantiles": {"q": LEVELS, "sketch_size": 5000}} for name in COLUMNS},
    )
    for j, name in enumerate(COLUMNS):
        present = pooled[:, j][~np.isnan(pooled[:, j])]
        quantiles = result["columns"][name]["quantiles"]
        assert quantiles["max_rank_error"] == 0
        expected = np.quantile(present, LEVELS, method="inverted_cdf")
        assert quantiles["values"] == expected.tolist()


@pytest.mark.parametrize(("seed", "sketch_size"), [(0, 20), (1, 64), (2, 200), (4, 1000)])
def test_quantiles_stay_within_the_documented_rank_bound(seed, sketch_size):
    pooled, shards = pooled_and_shards(seed)
    result = federated(
        shards,
        stats=["quantiles"],
        dataset_schema={n: {"q": LEVELS, "sketch_size": sketch_size} for n in COLUMNS},
    )
    for j, name in enumerate(COLUMNS):
        ordered = np.sort(pooled[:, j][~np.isnan(pooled[:, j])])
        total = ordered.size
        quantiles = result["columns"][name]["quantiles"]
        bound = quantiles["max_rank_error"]
        assert bound < total / sketch_size + 1e-12
        for q, estimate in zip(LEVELS, quantiles["values"], strict=True):
            rank = max(1, math.ceil(q * total))
            assert ordered[rank - 1] <= estimate <= ordered[min(total, rank + bound) - 1]


def test_nodes_without_values_are_ignored():
    empty = Table(list(COLUMNS), np.full((4, 3), np.nan))
    full = Table(list(COLUMNS), np.array([[1.0, 2.0, 3.0], [3.0, 4.0, 5.0]]))
    result = federated([empty, full], stats=["mean", "variance", "min", "max", "quantiles"])
    age = result["columns"]["age"]
    assert age["count"] == 2 and age["missing"] == 4
    assert age["mean"] == 2.0
    assert age["variance"] == 2.0
    assert (age["min"], age["max"]) == (1.0, 3.0)
    assert age["quantiles"]["values"] == [1.0, 1.0, 3.0]

    nothing = federated([empty], stats=["mean", "std", "min", "quantiles"])["columns"]["age"]
    assert nothing["mean"] is None and nothing["std"] is None and nothing["min"] is None
    assert nothing["quantiles"]["values"] == [None, None, None]


def test_disagreeing_outputs_are_refused():
    table = Table(["age"], np.array([[1.0], [2.0]]))

    def output(**request: Any) -> dict[str, Any]:
        return compute_statistics(table, plan_statistics(["age"], **request))

    with pytest.raises(ValueError, match="bin edges"):
        combine_statistics(
            [
                output(stats_args={"age": {"histogram": {"bins": [0, 1, 2]}}}),
                output(stats_args={"age": {"histogram": {"bins": [0, 2, 4]}}}),
            ]
        )
    with pytest.raises(ValueError, match="different statistics"):
        combine_statistics([output(stats=["mean"]), output(stats=["sum"])])
    with pytest.raises(ValueError, match="no node outputs"):
        combine_statistics([])
