"""Per-column statistics of a local table, in a form the researcher merges exactly.

What to compute comes from an :class:`~broker_net.messages.FARequest`, in one of two forms:

- ``stats``: a list of statistic names applied to the columns named by ``dataset_schema``: a
  list of columns, ``None`` for every numeric column, or a dict ``{column: options}`` whose
  options are shared by that column's statistics, e.g.
  ``{"age": {"bins": [0, 40, 80], "q": [0.5]}}``.
- ``stats_args``: ``{column: {statistic: true | options}}``, e.g.
  ``{"age": {"mean": true, "histogram": {"bins": [0, 10, 20]}, "quantiles": {"q": [0.5]}}}``.

Options, by statistic:

- ``histogram``: ``bins``, a list of increasing edges (``numpy.histogram`` semantics: each bin is
  half-open except the last, values outside the edges are not counted), or a number of equal
  bins together with ``range: [low, high]``. Required.
- ``quantiles``: ``q``, levels in [0, 1] (default 0.25, 0.5, 0.75); ``sketch_size`` K (default
  1000), the number of points of the node's summary.
- ``variance``, ``std``: ``ddof`` (default 1: the sample variance).

Each column's output holds ``count`` (non-missing values) and ``missing`` (NaN) plus, for
``sum``: ``sum``; ``mean``: ``mean``; ``variance``/``std``: ``mean``, ``m2`` (sum of squared
deviations from the local mean) and ``ddof``; ``min``/``max``; ``histogram``:
``{"bin_edges", "counts"}``; ``quantiles``: ``{"q", "sketch_size", "values", "weights"}``.

The quantile summary is an equi-depth sketch: the node sorts its n values, cuts them into K
blocks of consecutive ranks (each at most ceil(n / K) long) and sends each block's largest
value weighted by the block's length; with n <= K it sends every value. For any threshold the
summary's count of values below it undercounts by less than ceil(n / K), so the merged summary
of N values finds each quantile with a rank error below N / K (see
:func:`researcher.jobs.statistics.combine_statistics`). It discloses K of the node's values, as min
and max disclose two.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from broker_net.messages import FARequest
from node_agent.datasets import FloatArray, Table

STAT_NAMES = (
    "count", "missing", "sum", "mean", "variance", "std", "min", "max", "histogram", "quantiles",
)  # fmt: skip
"""Statistics a node computes."""

DEFAULT_QUANTILES = (0.25, 0.5, 0.75)
DEFAULT_SKETCH_SIZE = 1000
MAX_SKETCH_SIZE = 100_000
MAX_BINS = 100_000

_SHARED_OPTIONS = {
    "histogram": ("bins", "range"),
    "quantiles": ("q", "sketch_size"),
    "variance": ("ddof",),
    "std": ("ddof",),
}

StatsPlan = dict[str, dict[str, dict[str, Any]]]
"""``{column: {statistic: options}}``, the resolved form of a request."""


class AnalyticsArgumentError(ValueError):
    """Raised when a request names unknown statistics or columns, or gives bad options."""


def plan_statistics(
    columns: Sequence[str],
    *,
    stats: Sequence[str] | None = None,
    stats_args: Mapping[str, Any] | None = None,
    dataset_schema: Sequence[str] | Mapping[str, Any] | None = None,
) -> StatsPlan:
    """Resolve a request's ``stats``, ``stats_args`` and ``dataset_schema`` against ``columns``.

    Raises:
        AnalyticsArgumentError: unknown statistic or column, or invalid options.
    """
    plan: StatsPlan = {}
    if stats_args:
        for column, wanted in stats_args.items():
            if not isinstance(wanted, Mapping):
                raise AnalyticsArgumentError(
                    f"stats_args[{column!r}] must map statistic names to true or options"
                )
            plan[column] = {
                name: _options(name, value) for name, value in wanted.items() if value is not False
            }
    else:
        names = list(stats or [])
        if isinstance(dataset_schema, Mapping):
            selected = dict(dataset_schema)
        else:
            selected = dict.fromkeys(dataset_schema if dataset_schema is not None else columns)
        for column, shared in selected.items():
            shared = shared or {}
            if not isinstance(shared, Mapping):
                raise AnalyticsArgumentError(f"options of column {column!r} must be a mapping")
            plan[column] = {
                name: _options(
                    name, {k: shared[k] for k in _SHARED_OPTIONS.get(name, ()) if k in shared}
                )
                for name in names
            }
    unknown = sorted(set(plan) - set(columns))
    if unknown:
        raise AnalyticsArgumentError(f"unknown or non-numeric columns: {', '.join(unknown)}")
    return plan


def _options(name: str, value: Any) -> dict[str, Any]:
    if name not in STAT_NAMES:
        raise AnalyticsArgumentError(f"unknown statistic {name!r}; known: {', '.join(STAT_NAMES)}")
    given: Mapping[str, Any] = {} if value is True or value is None else value
    if not isinstance(given, Mapping):
        raise AnalyticsArgumentError(f"options of {name!r} must be true or a mapping")
    extra = set(given) - set(_SHARED_OPTIONS.get(name, ()))
    if extra:
        raise AnalyticsArgumentError(f"{name!r} takes no option {', '.join(sorted(extra))}")
    if name == "histogram":
        return {"bin_edges": _bin_edges(given.get("bins"), given.get("range"))}
    if name == "quantiles":
        levels = [float(q) for q in given.get("q", DEFAULT_QUANTILES)]
        size = given.get("sketch_size", DEFAULT_SKETCH_SIZE)
        if not levels or not all(0.0 <= q <= 1.0 for q in levels):
            raise AnalyticsArgumentError("quantile levels 'q' must be numbers in [0, 1]")
        if not isinstance(size, int) or not 2 <= size <= MAX_SKETCH_SIZE:
            raise AnalyticsArgumentError(
                f"'sketch_size' must be an integer in 2..{MAX_SKETCH_SIZE}"
            )
        return {"q": levels, "sketch_size": size}
    if name in ("variance", "std"):
        ddof = given.get("ddof", 1)
        if not isinstance(ddof, int) or ddof < 0:
            raise AnalyticsArgumentError("'ddof' must be a non-negative integer")
        return {"ddof": ddof}
    return {}


def _bin_edges(bins: Any, bounds: Any) -> list[float]:
    if isinstance(bins, int) and not isinstance(bins, bool):
        if not 1 <= bins <= MAX_BINS or bounds is None or len(bounds) != 2:
            raise AnalyticsArgumentError(
                f"an integer 'bins' (1..{MAX_BINS}) needs 'range': [low, high]"
            )
        low, high = float(bounds[0]), float(bounds[1])
        if not (np.isfinite(low) and np.isfinite(high) and low < high):
            raise AnalyticsArgumentError("'range' must be two finite numbers, low < high")
        return [float(edge) for edge in np.linspace(low, high, bins + 1)]
    if not isinstance(bins, Sequence) or isinstance(bins, str) or not 2 <= len(bins) <= MAX_BINS:
        raise AnalyticsArgumentError("'histogram' needs 'bins': a list of at least 2 bin edges")
    edges = np.asarray(bins, dtype=np.float64)
    if not np.all(np.isfinite(edges)) or np.any(np.diff(edges) <= 0):
        raise AnalyticsArgumentError("histogram bin edges must be finite and increasing")
    return [float(edge) for edge in edges]


def compute_statistics(table: Table, plan: StatsPlan) -> dict[str, Any]:
    """Compute the statistics of ``plan`` (see :func:`plan_statistics`) over ``table``.

    Returns:
        ``{"n_rows": rows, "columns": {column: output}}``, plain msgpack-able values.

    Raises:
        AnalyticsArgumentError: the plan asks for variance and std with different ``ddof``.
    """
    outputs = {
        column: _column_statistics(table.column(column), wanted) for column, wanted in plan.items()
    }
    return {"n_rows": table.n_rows, "columns": outputs}


def _column_statistics(column: FloatArray, wanted: dict[str, dict[str, Any]]) -> dict[str, Any]:
    present = column[~np.isnan(column)]
    count = int(present.size)
    out: dict[str, Any] = {
        "stats": sorted(wanted),
        "count": count,
        "missing": int(column.size - count),
    }
    if "sum" in wanted:
        out["sum"] = float(np.sum(present))
    mean = float(np.sum(present) / count) if count else None
    if "mean" in wanted:
        out["mean"] = mean
    if "variance" in wanted or "std" in wanted:
        ddofs = {wanted[name]["ddof"] for name in ("variance", "std") if name in wanted}
        if len(ddofs) > 1:
            raise AnalyticsArgumentError("'variance' and 'std' of a column need the same ddof")
        out["mean"] = mean
        out["m2"] = float(np.sum((present - mean) ** 2)) if mean is not None else 0.0
        out["ddof"] = ddofs.pop()
    if "min" in wanted:
        out["min"] = float(np.min(present)) if count else None
    if "max" in wanted:
        out["max"] = float(np.max(present)) if count else None
    if "histogram" in wanted:
        edges = wanted["histogram"]["bin_edges"]
        counts, _ = np.histogram(present, bins=np.asarray(edges, dtype=np.float64))
        out["histogram"] = {"bin_edges": list(edges), "counts": [int(c) for c in counts]}
    if "quantiles" in wanted:
        options = wanted["quantiles"]
        values, weights = quantile_sketch(present, options["sketch_size"])
        out["quantiles"] = {
            "q": list(options["q"]),
            "sketch_size": options["sketch_size"],
            "values": values,
            "weights": weights,
        }
    return out


def quantile_sketch(values: FloatArray, size: int) -> tuple[list[float], list[int]]:
    """Summarise ``values`` (no NaN) by at most ``size`` weighted points.

    Sorted values are cut into ``size`` blocks of consecutive ranks, each at most
    ceil(n / size) long; each block is represented by its largest value, weighted by its length.
    Equal representatives are merged.

    Returns:
        The representatives in increasing order and their weights, which sum to ``len(values)``.
    """
    ordered = np.sort(values)
    n = ordered.size
    if n <= size:
        points, ends = ordered, np.arange(1, n + 1)
    else:
        ends = (np.arange(1, size + 1, dtype=np.int64) * n) // size
        points = ordered[ends - 1]
    weights = np.diff(ends, prepend=0)
    unique, first = np.unique(points, return_index=True)
    merged = np.add.reduceat(weights, first) if unique.size else weights
    return [float(v) for v in unique], [int(w) for w in merged]


def statistics_for_request(table: Table, request: FARequest) -> dict[str, Any]:
    """Compute what an :class:`~broker_net.messages.FARequest` asks for over ``table``.

    Raises:
        AnalyticsArgumentError: the request names unknown statistics or columns, or gives bad
            options.
    """
    plan = plan_statistics(
        table.columns,
        stats=request.stats,
        stats_args=request.stats_args,
        dataset_schema=request.dataset_schema,
    )
    return compute_statistics(table, plan)
