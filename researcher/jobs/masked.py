"""Masked vectors in replies under secure aggregation, and what their unmasked sums mean.

Under secure aggregation (:mod:`researcher.jobs.secagg`) a training reply's parameters are
``{"masked": uint64 vector, "shapes": {name: shape}}`` and an analytics reply carries one
masked vector laid out by its ``output_schema``: the functions here read them out of the
replies, and turn the unmasked sums back into parameters or statistics.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from typing import Any, TypeGuard

import numpy as np
import numpy.typing as npt

from broker_net.crypto.masking import MaskedVector
from broker_net.crypto.secagg_aggregator import SecaggResult
from broker_net.messages import FAReply, TrainReply
from researcher.errors import SecureAggregationError

logger = logging.getLogger(__name__)


def masked_params(
    round: int, replies: Mapping[str, TrainReply]
) -> tuple[dict[str, MaskedVector], dict[str, list[int]]]:
    """The masked vector of each training reply, and the parameter shapes they share.

    A reply whose parameters are not masked is left out (logged), so a plain update is never
    read.

    Raises:
        SecureAggregationError: masked replies of unequal shapes.
    """
    masked: dict[str, MaskedVector] = {}
    shapes: dict[str, list[int]] | None = None
    for node, reply in sorted(replies.items()):
        found = masked_update(reply)
        if found is None:
            logger.warning("round %d: node %s sent no masked update; left out", round, node)
            continue
        vector, node_shapes = found
        if shapes is not None and node_shapes != shapes:
            raise SecureAggregationError(
                f"round {round}: node {node} sent parameters of other shapes", node_id=node
            )
        masked[node], shapes = vector, node_shapes
    return masked, shapes or {}


def masked_statistics(
    replies: Mapping[str, FAReply],
) -> tuple[dict[str, MaskedVector], list[Any]]:
    """The masked vector of each analytics reply, and the schema they share.

    Raises:
        SecureAggregationError: a reply is not masked, or replies of unequal schemas.
    """
    masked: dict[str, MaskedVector] = {}
    schema: list[Any] | None = None
    for node, reply in sorted(replies.items()):
        vectors = reply.params_encrypted or []
        if not reply.encrypted or len(vectors) != 1 or not _is_masked(vectors[0]):
            raise SecureAggregationError(
                f"node {node} sent unmasked statistics under secure aggregation", node_id=node
            )
        if schema is not None and reply.output_schema != schema:
            raise SecureAggregationError(
                f"node {node} sent statistics of another schema", node_id=node
            )
        masked[node], schema = vectors[0], reply.output_schema
    return masked, schema or []


def _is_masked(value: Any) -> TypeGuard[MaskedVector]:
    return isinstance(value, np.ndarray) and value.dtype == np.uint64 and value.ndim == 1


def masked_update(reply: TrainReply) -> tuple[MaskedVector, dict[str, list[int]]] | None:
    """The masked vector and parameter shapes of a secure aggregation reply, or ``None``
    when its parameters are not ``{"masked": uint64 vector, "shapes": {name: shape}}``."""
    params = reply.params or {}
    vector, shapes = params.get("masked"), params.get("shapes")
    if not reply.encrypted or set(params) != {"masked", "shapes"} or not _is_masked(vector):
        return None
    if not isinstance(shapes, dict):
        return None
    return vector, {str(name): [int(d) for d in shape] for name, shape in shapes.items()}


def unflatten(
    vector: npt.NDArray[np.float64], shapes: Mapping[str, Sequence[int]]
) -> dict[str, npt.NDArray[np.float64]]:
    """Cut a flat vector back into named arrays, names taken in sorted order.

    Raises:
        SecureAggregationError: the shapes do not account for the vector's length.
    """
    sizes = {name: math.prod(shapes[name]) for name in sorted(shapes)}
    if sum(sizes.values()) != vector.size:
        raise SecureAggregationError(
            f"{vector.size} aggregated values do not fit the parameter shapes {dict(shapes)}"
        )
    params, start = {}, 0
    for name, size in sizes.items():
        params[name] = vector[start : start + size].reshape(shapes[name]).copy()
        start += size
    return params


def statistics_from_sum(schema: list[Any], result: SecaggResult) -> dict[str, Any]:
    """Pooled statistics, in the form of :func:`researcher.jobs.statistics.combine_statistics`,
    from the unmasked sum of the analytics vectors laid out by ``schema``.

    Raises:
        SecureAggregationError: the sum does not fit the schema.
    """
    quantities: list[tuple[str | None, str]] = [
        (entry.get("column"), quantity) for entry in schema for quantity in entry["quantities"]
    ]
    if len(set(quantities)) != len(quantities) or len(quantities) != result.weighted_sum.size:
        raise SecureAggregationError("the aggregated statistics do not fit their schema")
    values = dict(zip(quantities, result.weighted_sum.tolist(), strict=True))
    columns: dict[str, Any] = {}
    for entry in schema:
        column = entry.get("column")
        if column is None:
            continue
        stats = set(entry["stats"])
        count = round(values[(column, "count")])
        out: dict[str, Any] = {"count": count, "missing": round(values[(column, "missing")])}
        total = values.get((column, "sum"))
        mean = total / count if total is not None and count else None
        if "sum" in stats:
            out["sum"] = total
        if "mean" in stats:
            out["mean"] = mean
        if stats & {"variance", "std"}:
            ddof = int(entry["ddof"])
            variance = None
            if mean is not None and total is not None and count > ddof:
                m2 = max(values[(column, "sumsq")] - total * mean, 0.0)
                variance = m2 / (count - ddof)
            if "variance" in stats:
                out["variance"] = variance
            if "std" in stats:
                out["std"] = math.sqrt(variance) if variance is not None else None
        columns[column] = out
    return {
        "n_rows": round(values[(None, "n_rows")]),
        "nodes": len(result.survivors),
        "columns": columns,
    }
