"""Aggregation of node updates."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt


def fedavg(
    updates: Sequence[Mapping[str, npt.NDArray[Any]]], weights: Sequence[float]
) -> dict[str, npt.NDArray[np.float64]]:
    """Average parameter sets, weighting each by ``weights`` (e.g. sample sizes).

    Raises:
        ValueError: no update, weights that do not match, a zero total weight, or parameter
            sets with different names or shapes.
    """
    if not updates:
        raise ValueError("nothing to aggregate")
    if len(updates) != len(weights):
        raise ValueError("one weight per update is needed")
    total = float(sum(weights))
    if total <= 0:
        raise ValueError("the weights sum to zero")
    names = set(updates[0])
    for update in updates[1:]:
        if set(update) != names:
            raise ValueError("updates carry different parameter names")
    result: dict[str, npt.NDArray[np.float64]] = {}
    for name in sorted(names):
        shapes = {np.shape(update[name]) for update in updates}
        if len(shapes) != 1:
            raise ValueError(f"parameter {name!r} has different shapes: {sorted(shapes)}")
        stacked = np.zeros(shapes.pop(), dtype=np.float64)
        for update, weight in zip(updates, weights, strict=True):
            stacked += np.asarray(update[name], dtype=np.float64) * (weight / total)
        result[name] = stacked
    return result


def weighted_metrics(
    metrics: Mapping[str, Mapping[str, float]], weights: Mapping[str, float]
) -> dict[str, float]:
    """Average each metric over the nodes that report it, weighted by ``weights``."""
    sums: dict[str, float] = {}
    totals: dict[str, float] = {}
    for node, values in metrics.items():
        weight = float(weights.get(node, 0.0))
        for name, value in values.items():
            sums[name] = sums.get(name, 0.0) + weight * float(value)
            totals[name] = totals.get(name, 0.0) + weight
    return {name: sums[name] / totals[name] for name in sorted(sums) if totals[name] > 0}
