"""Node-side statistics: request forms, options, outputs."""

from __future__ import annotations

import numpy as np
import pytest

from broker_net.codec import decode, encode
from broker_net.messages import FARequest
from node_agent.analytics import (
    AnalyticsArgumentError,
    compute_statistics,
    plan_statistics,
    quantile_sketch,
    statistics_for_request,
)
from node_agent.datasets import Table

TABLE = Table(
    ["age", "dose"],
    np.array([[30.0, 1.0], [np.nan, 2.0], [50.0, np.nan], [40.0, 4.0], [20.0, np.nan]]),
)


def request(**kwargs) -> FARequest:
    return FARequest(researcher_id="r", experiment_id="e", fa_id="f", dataset_id="d", **kwargs)


def test_flat_stats_over_all_columns():
    output = statistics_for_request(TABLE, request(stats=["count", "missing", "mean", "min"]))

    assert output["n_rows"] == 5
    assert set(output["columns"]) == {"age", "dose"}
    age = output["columns"]["age"]
    assert age["count"] == 4
    assert age["missing"] == 1
    assert age["mean"] == pytest.approx(35.0)
    assert age["min"] == 20.0
    assert "max" not in age
    assert output["columns"]["dose"]["mean"] == pytest.approx(7 / 3)
    assert decode(encode(output)) == output


def test_schema_list_selects_columns_and_dict_gives_options():
    by_list = statistics_for_request(TABLE, request(stats=["sum"], dataset_schema=["dose"]))
    assert list(by_list["columns"]) == ["dose"]
    assert by_list["columns"]["dose"]["sum"] == 7.0

    by_dict = statistics_for_request(
        TABLE,
        request(
            stats=["histogram", "quantiles", "variance"],
            dataset_schema={"age": {"bins": [0, 25, 50], "q": [0.5], "ddof": 0}},
        ),
    )
    age = by_dict["columns"]["age"]
    assert age["histogram"] == {"bin_edges": [0.0, 25.0, 50.0], "counts": [1, 3]}
    assert age["quantiles"]["q"] == [0.5]
    assert age["quantiles"]["values"] == [20.0, 30.0, 40.0, 50.0]
    assert age["ddof"] == 0
    assert age["m2"] == pytest.approx(np.nanvar(TABLE.column("age")) * 4)


def test_stats_args_give_per_column_options():
    output = statistics_for_request(
        TABLE,
        request(
            stats_args={
                "age": {"mean": True, "histogram": {"bins": 2, "range": [20, 60]}},
                "dose": {"max": True, "std": {"ddof": 1}, "min": False},
            }
        ),
    )
    age, dose = output["columns"]["age"], output["columns"]["dose"]
    assert age["stats"] == ["histogram", "mean"]
    assert age["histogram"]["bin_edges"] == [20.0, 40.0, 60.0]
    assert age["histogram"]["counts"] == [2, 2]
    assert dose["stats"] == ["max", "std"]
    assert dose["max"] == 4.0
    assert "min" not in dose


def test_empty_column_gives_nones():
    table = Table(["x"], np.full((3, 1), np.nan))
    plan = plan_statistics(table.columns, stats=["mean", "std", "min", "max", "quantiles"])
    x = compute_statistics(table, plan)["columns"]["x"]
    assert x["count"] == 0 and x["missing"] == 3
    assert x["mean"] is None and x["min"] is None and x["max"] is None
    assert x["m2"] == 0.0
    assert x["quantiles"]["values"] == [] and x["quantiles"]["weights"] == []


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"stats": ["median"]}, "unknown statistic"),
        ({"stats": ["mean"], "dataset_schema": ["height"]}, "unknown or non-numeric"),
        ({"stats": ["histogram"]}, "bins"),
        ({"stats_args": {"age": {"histogram": {"bins": [3, 1]}}}}, "increasing"),
        ({"stats_args": {"age": {"histogram": {"bins": 4}}}}, "range"),
        ({"stats_args": {"age": {"quantiles": {"q": [1.5]}}}}, r"\[0, 1\]"),
        ({"stats_args": {"age": {"quantiles": {"sketch_size": 1}}}}, "sketch_size"),
        ({"stats_args": {"age": {"mean": {"ddof": 1}}}}, "no option"),
        ({"stats_args": {"age": ["mean"]}}, "must map"),
        ({"stats_args": {"age": {"variance": {"ddof": 0}, "std": {"ddof": 1}}}}, "same ddof"),
    ],
)
def test_bad_requests_raise_argument_errors(kwargs, match):
    with pytest.raises(AnalyticsArgumentError, match=match):
        statistics_for_request(TABLE, request(**kwargs))


def test_quantile_sketch_keeps_every_value_when_small():
    values, weights = quantile_sketch(np.array([3.0, 1.0, 3.0, 2.0]), 10)
    assert values == [1.0, 2.0, 3.0]
    assert weights == [1, 1, 2]


def test_quantile_sketch_blocks_are_bounded():
    data = np.random.default_rng(1).normal(size=1003)
    values, weights = quantile_sketch(data, 100)
    assert len(values) == 100
    assert sum(weights) == 1003
    assert max(weights) <= -(-1003 // 100)
    assert values == sorted(values)
    assert values[-1] == data.max()
