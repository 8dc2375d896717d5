"""Merge the statistics nodes computed locally into global ones.

Each node answers a federated-analytics request with ``{"n_rows": rows, "columns": {column:
output}}`` (see :mod:`node_agent.analytics`). :func:`combine_statistics` merges those outputs
into what the same statistics would be over the pooled rows:

- ``count``, ``missing``, ``sum``, ``min``, ``max`` and histogram ``counts`` add up or compare;
- ``mean`` is the count-weighted mean of the node means;
- ``variance`` and ``std`` come from each node's count, mean and ``m2`` (sum of squared
  deviations) by Chan's parallel formula, ``M2 = sum(m2_i + n_i (mean_i - mean)^2)``, divided by
  ``count - ddof``;
- ``quantiles`` come from the merged weighted summaries. For a level q and N pooled values the
  answer is the smallest summary point whose merged weight at or below it reaches
  ``h = max(1, ceil(q N))``. It is never below the exact quantile (the h-th smallest value) and
  at most ``max_rank_error`` ranks above it, where ``max_rank_error = sum(ceil(n_i / K_i) - 1)``
  is below N / K; it is exact when every node holds at most K values.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np


def combine_statistics(outputs: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Merge node outputs of one federated-analytics request into pooled statistics.

    Args:
        outputs: the ``output`` of each node's :class:`~broker_net.messages.FAReply`.

    Returns:
        ``{"n_rows": rows, "nodes": len(outputs), "columns": {column: statistics}}`` where each
        column holds ``count`` and ``missing`` plus the requested statistics: ``sum``,
        ``mean``, ``variance``, ``std``, ``min``, ``max`` (floats, ``None`` without values),
        ``histogram`` (``{"bin_edges", "counts"}``) and ``quantiles``
        (``{"q", "values", "max_rank_error"}``).

    Raises:
        ValueError: no outputs, or outputs that disagree (columns, statistics, bin edges,
            quantile levels).
    """
    if not outputs:
        raise ValueError("there are no node outputs to combine")
    columns = list(outputs[0]["columns"])
    for output in outputs[1:]:
        if list(output["columns"]) != columns:
            raise ValueError("node outputs describe different columns")
    return {
        "n_rows": sum(int(output["n_rows"]) for output in outputs),
        "nodes": len(outputs),
        "columns": {
            column: _combine_column(column, [output["columns"][column] for output in outputs])
            for column in columns
        },
    }


def _combine_column(column: str, parts: list[dict[str, Any]]) -> dict[str, Any]:
    stats = parts[0]["stats"]
    if any(part["stats"] != stats for part in parts):
        raise ValueError(f"node outputs for column {column!r} hold different statistics")
    count = sum(int(part["count"]) for part in parts)
    out: dict[str, Any] = {
        "count": count,
        "missing": sum(int(part["missing"]) for part in parts),
    }
    if "sum" in stats:
        out["sum"] = math.fsum(part["sum"] for part in parts)
    mean = _pooled_mean(parts, count)
    if "mean" in stats:
        out["mean"] = mean
    if "variance" in stats or "std" in stats:
        variance = _pooled_variance(column, parts, count, mean)
        if "variance" in stats:
            out["variance"] = variance
        if "std" in stats:
            out["std"] = math.sqrt(variance) if variance is not None else None
    if "min" in stats:
        out["min"] = min((p["min"] for p in parts if p["min"] is not None), default=None)
    if "max" in stats:
        out["max"] = max((p["max"] for p in parts if p["max"] is not None), default=None)
    if "histogram" in stats:
        out["histogram"] = _combine_histograms(column, [part["histogram"] for part in parts])
    if "quantiles" in stats:
        out["quantiles"] = combine_quantiles(
            [part["quantiles"] for part in parts], [int(part["count"]) for part in parts]
        )
    return out


def _pooled_mean(parts: list[dict[str, Any]], count: int) -> float | None:
    if count == 0 or "mean" not in parts[0]:
        return None
    return math.fsum(part["count"] * part["mean"] for part in parts if part["count"]) / count


def _pooled_variance(
    column: str, parts: list[dict[str, Any]], count: int, mean: float | None
) -> float | None:
    ddofs = {part["ddof"] for part in parts}
    if len(ddofs) > 1:
        raise ValueError(f"node outputs for column {column!r} use different ddof")
    ddof = int(ddofs.pop())
    if mean is None or count <= ddof:
        return None
    m2 = math.fsum(
        part["m2"] + part["count"] * (part["mean"] - mean) ** 2 for part in parts if part["count"]
    )
    return m2 / (count - ddof)


def _combine_histograms(column: str, parts: list[dict[str, Any]]) -> dict[str, Any]:
    edges = parts[0]["bin_edges"]
    if any(list(part["bin_edges"]) != list(edges) for part in parts):
        raise ValueError(f"node histograms of column {column!r} use different bin edges")
    if any(len(part["counts"]) != len(edges) - 1 for part in parts):
        raise ValueError(f"a node histogram of column {column!r} has the wrong number of bins")
    counts = [sum(int(part["counts"][i]) for part in parts) for i in range(len(edges) - 1)]
    return {"bin_edges": list(edges), "counts": counts}


def combine_quantiles(sketches: Sequence[dict[str, Any]], counts: Sequence[int]) -> dict[str, Any]:
    """Estimate quantiles from the nodes' weighted summaries.

    Args:
        sketches: each node's ``{"q", "sketch_size", "values", "weights"}``.
        counts: each node's count of non-missing values.

    Returns:
        ``{"q": levels, "values": estimates (None without data), "max_rank_error": bound}``.

    Raises:
        ValueError: the nodes were asked for different levels.
    """
    levels = list(sketches[0]["q"])
    if any(list(sketch["q"]) != levels for sketch in sketches):
        raise ValueError("node quantile summaries answer different levels")
    values = np.concatenate([np.asarray(s["values"], dtype=np.float64) for s in sketches])
    weights = np.concatenate([np.asarray(s["weights"], dtype=np.int64) for s in sketches])
    order = np.argsort(values, kind="stable")
    values, cumulative = values[order], np.cumsum(weights[order])
    total = int(cumulative[-1]) if cumulative.size else 0
    estimates: list[float | None] = []
    for q in levels:
        if total == 0:
            estimates.append(None)
            continue
        rank = max(1, math.ceil(q * total))
        estimates.append(float(values[int(np.searchsorted(cumulative, rank, side="left"))]))
    bound = sum(
        -(-n // int(sketch["sketch_size"])) - 1
        for sketch, n in zip(sketches, counts, strict=True)
        if n
    )
    return {"q": levels, "values": estimates, "max_rank_error": bound}
