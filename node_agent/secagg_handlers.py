"""Secure aggregation on the node: the setup exchanges, and the masking of what a round sends.

:func:`handle_secagg` answers the four :class:`~broker_net.messages.SecaggRequest` steps with
the node's :class:`~broker_net.crypto.secagg_node.SecaggNode` for that context, kept in memory in
:attr:`NodeContext.secagg <node_agent.context.NodeContext.secagg>` under the researcher's id
and the secagg id: another researcher cannot use or disturb it. The training and analytics
handlers call :func:`secagg_node_for` before any work, so a request that cannot be masked is
refused at once, and :func:`mask_params` or :func:`mask_statistics` after, so that only masked
vectors leave the node.

Secure aggregation needs the node's identity: an agent running without security refuses it
with SECAGG_FAILED.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import anyio.to_thread
import numpy as np
import numpy.typing as npt

from broker_net.codes import ErrorCode
from broker_net.crypto.identities import Identity
from broker_net.crypto.masking import MaskedVector
from broker_net.crypto.secagg import SecaggContext, SecaggKeys
from broker_net.crypto.secagg_node import SecaggNode
from broker_net.errors import SecurityError
from broker_net.messages import FARequest, SecaggReply, SecaggRequest, TrainRequest
from node_agent.analytics import AnalyticsArgumentError, plan_statistics
from node_agent.context import HandlerError, NodeContext
from node_agent.datasets import Table

MAX_CONTEXTS = 256
"""Secure aggregation contexts a node keeps at once; the oldest is forgotten beyond that."""

SECURE_STATISTICS = frozenset({"count", "missing", "sum", "mean", "variance", "std"})
"""Statistics computed from additive totals, hence available under secure aggregation."""


def _identity(context: NodeContext) -> Identity:
    if context.security is None:
        raise HandlerError(
            ErrorCode.SECAGG_FAILED,
            "this node runs without security, so it has no identity to take part in secure "
            "aggregation; start it with security on",
        )
    return context.security.identity


@contextmanager
def _secagg_errors(what: str) -> Iterator[None]:
    """Turn protocol refusals into HandlerErrors carrying the refusal's own code."""
    try:
        yield
    except HandlerError:
        raise
    except SecurityError as exc:
        code = getattr(exc, "code", ErrorCode.SECAGG_FAILED)
        raise HandlerError(code, f"secure aggregation {what}: {exc}") from exc
    except ValueError as exc:
        raise HandlerError(ErrorCode.SECAGG_FAILED, f"secure aggregation {what}: {exc}") from exc


async def handle_secagg(request: SecaggRequest, context: NodeContext) -> SecaggReply:
    """Answer one step of a secure aggregation setup, or reveal shares to unmask a round.

    Raises:
        HandlerError: SECAGG_FAILED (no identity, unknown context, a step out of order, too
            few nodes, a bad context), BAD_SIGNATURE or UNKNOWN_KEY (relayed keys not signed
            by their node over this context), DECRYPTION_FAILED (shares not made for this node
            and context).
    """
    identity = _identity(context)
    # Shamir splitting and one encryption per peer grow with nodes and rounds: off the loop.
    fields = await anyio.to_thread.run_sync(_run_step, request, context, identity)
    return SecaggReply(
        request_id=request.request_id,
        researcher_id=request.researcher_id,
        node_id=context.node_id,
        node_name=context.node_name,
        secagg_id=request.secagg_id,
        experiment_id=request.experiment_id,
        step=request.step,
        **fields,
    )


def _run_step(request: SecaggRequest, context: NodeContext, identity: Identity) -> dict[str, Any]:
    key = (request.researcher_id, request.secagg_id)
    with _secagg_errors(f"step {request.step!r}"):
        if request.step == "keys":
            return {"public_keys": _start(request, context, identity).public_keys().to_dict()}
        node = _known(context, key, request.experiment_id)
        if request.step == "shares":
            keys = [SecaggKeys.from_dict(item) for item in request.public_keys]
            return {"shares": node.receive_public_keys(keys)}
        if request.step == "deliver":
            node.receive_shares(request.shares)
            return {}
        if request.round is None:
            raise HandlerError(ErrorCode.BAD_ARGUMENTS, "a reveal needs a round")
        return {"revealed": node.reveal(request.round, request.survivors).to_dict()}


def _start(request: SecaggRequest, context: NodeContext, identity: Identity) -> SecaggNode:
    if request.context is None:
        raise HandlerError(ErrorCode.BAD_ARGUMENTS, "the 'keys' step needs a context")
    secagg = SecaggContext.from_dict(request.context)
    if (secagg.secagg_id, secagg.experiment_id) != (request.secagg_id, request.experiment_id):
        raise HandlerError(
            ErrorCode.SECAGG_FAILED, "the context names another secagg id or experiment"
        )
    key = (request.researcher_id, request.secagg_id)
    known = context.secagg.get(key)
    if known is not None:
        if known.context != secagg:
            raise HandlerError(
                ErrorCode.SECAGG_FAILED, f"context {request.secagg_id!r} exists with other terms"
            )
        return known  # its public keys again: they are public, and nothing else changes
    node = SecaggNode(identity, secagg)
    while len(context.secagg) >= MAX_CONTEXTS:
        del context.secagg[next(iter(context.secagg))]
    context.secagg[key] = node
    return node


def _known(context: NodeContext, key: tuple[str, str], experiment_id: str) -> SecaggNode:
    node = context.secagg.get(key)
    if node is None:
        raise HandlerError(
            ErrorCode.SECAGG_FAILED,
            f"this node holds no secure aggregation context {key[1]!r} of this researcher "
            "(never set up, or forgotten when the agent restarted)",
        )
    if node.context.experiment_id != experiment_id:
        raise HandlerError(
            ErrorCode.SECAGG_FAILED, f"context {key[1]!r} belongs to another experiment"
        )
    return node


def secagg_node_for(
    request: TrainRequest | FARequest, context: NodeContext
) -> tuple[SecaggNode, int]:
    """The node's side of the context named by ``request.secagg_arguments``, and the round.

    Raises:
        HandlerError: BAD_ARGUMENTS (no ``secagg_id`` or ``round``, or the round is out of
            the context's range); SECAGG_FAILED (no identity, an unknown context, another
            experiment's, or one whose setup is unfinished).
    """
    _identity(context)
    arguments = request.secagg_arguments or {}
    secagg_id, round_ = arguments.get("secagg_id"), arguments.get("round")
    if not isinstance(secagg_id, str) or not isinstance(round_, int) or isinstance(round_, bool):
        raise HandlerError(
            ErrorCode.BAD_ARGUMENTS, "secagg_arguments need a 'secagg_id' and an integer 'round'"
        )
    node = _known(context, (request.researcher_id, secagg_id), request.experiment_id)
    if not node.participants:
        raise HandlerError(ErrorCode.SECAGG_FAILED, f"the setup of {secagg_id!r} is unfinished")
    if not 0 <= round_ < node.context.rounds:
        raise HandlerError(
            ErrorCode.BAD_ARGUMENTS,
            f"round {round_} is outside the {node.context.rounds} rounds of {secagg_id!r}",
        )
    return node, round_


def flatten_params(
    params: Mapping[str, Any],
) -> tuple[npt.NDArray[np.float64], dict[str, list[int]]]:
    """Concatenate parameters in the order of their sorted names; return their shapes too."""
    names = sorted(params)
    arrays = [np.asarray(params[name], dtype=np.float64) for name in names]
    shapes = {name: list(array.shape) for name, array in zip(names, arrays, strict=True)}
    flat = np.concatenate([a.reshape(-1) for a in arrays]) if arrays else np.zeros(0)
    return flat, shapes


def _mask(
    node: SecaggNode, round_: int, vector: npt.NDArray[np.float64], weight: int
) -> MaskedVector:
    limit = node.context.clipping_range
    if vector.size and not float(np.max(np.abs(vector))) <= limit:
        raise HandlerError(
            ErrorCode.SECAGG_FAILED,
            f"values exceed the clipping range of the secure aggregation (±{limit:g}); "
            "a wider range is needed",
        )
    if not 0 <= weight <= node.context.max_weight:
        raise HandlerError(
            ErrorCode.SECAGG_FAILED,
            f"the weight {weight} exceeds the secure aggregation's maximum "
            f"{node.context.max_weight}",
        )
    with _secagg_errors("masking"):
        return node.mask(vector, round=round_, weight=weight)


def mask_params(
    node: SecaggNode, round_: int, params: Mapping[str, Any], weight: int
) -> dict[str, Any]:
    """Mask trained parameters for ``round_``, weighted by the sample size ``weight``.

    Blocking (about a millisecond per million values and peer): call from a worker thread.

    Returns:
        ``{"masked": uint64 vector, "shapes": {name: shape}}``, what ``TrainReply.params``
        carries: the flattened parameters (sorted names), then the weight, all masked.

    Raises:
        HandlerError: SECAGG_FAILED when a value exceeds the clipping range, the weight the
            maximum, or the round was already masked.
    """
    flat, shapes = flatten_params(params)
    return {"masked": _mask(node, round_, flat, weight), "shapes": shapes}


def _declared_limits(request: FARequest) -> tuple[float | None, int | None]:
    """The ``value_range`` and ``max_rows`` the researcher declared, when it did."""
    arguments = request.secagg_arguments or {}
    limit, rows = arguments.get("value_range"), arguments.get("max_rows")
    try:
        return (
            float(limit) if limit is not None else None,
            int(rows) if rows is not None else None,
        )
    except (TypeError, ValueError) as exc:
        raise HandlerError(
            ErrorCode.BAD_ARGUMENTS, f"bad secure aggregation limits: {exc}"
        ) from exc


def mask_statistics(
    node: SecaggNode, round_: int, table: Table, request: FARequest
) -> tuple[MaskedVector, list[dict[str, Any]]]:
    """Mask the additive totals behind the requested statistics of ``table``.

    The vector holds the table's row count, then for each column its ``count`` and
    ``missing``, its ``sum`` (for sum, mean, variance and std) and its sum of squares (for
    variance and std). Blocking: call from a worker thread.

    Returns:
        The masked vector and its schema, one entry per column:
        ``{"column", "stats", "ddof", "quantities"}``, after ``{"column": None,
        "quantities": ["n_rows"]}``.

    Raises:
        HandlerError: BAD_ARGUMENTS for a statistic that is not a sum of the nodes' values
            (min, max, histogram, quantiles) or an unknown column; SECAGG_FAILED when a value
            is outside the declared ``value_range``, the rows exceed ``max_rows`` (both from
            ``secagg_arguments``) or a total exceeds the clipping range.
    """
    try:
        plan = plan_statistics(
            table.columns,
            stats=request.stats,
            stats_args=request.stats_args,
            dataset_schema=request.dataset_schema,
        )
    except AnalyticsArgumentError as exc:
        raise HandlerError(ErrorCode.BAD_ARGUMENTS, str(exc)) from exc
    limit, max_rows = _declared_limits(request)
    if max_rows is not None and table.n_rows > max_rows:
        raise HandlerError(
            ErrorCode.SECAGG_FAILED,
            f"the dataset has {table.n_rows} rows, more than the {max_rows} the secure "
            "aggregation was set up for; declare a larger max_rows",
        )
    values: list[float] = [float(table.n_rows)]
    schema: list[dict[str, Any]] = [{"column": None, "quantities": ["n_rows"]}]
    for column, wanted in plan.items():
        refused = sorted(set(wanted) - SECURE_STATISTICS)
        if refused:
            raise HandlerError(
                ErrorCode.BAD_ARGUMENTS,
                f"{', '.join(refused)} of {column!r} cannot be computed under secure "
                f"aggregation; available: {', '.join(sorted(SECURE_STATISTICS))}",
            )
        data = table.column(column)
        present = data[~np.isnan(data)]
        if limit is not None and present.size and not float(np.max(np.abs(present))) <= limit:
            raise HandlerError(
                ErrorCode.SECAGG_FAILED,
                f"column {column!r} holds values outside the declared range ±{limit:g} of the "
                "secure aggregation; declare a wider value_range (nothing was sent)",
            )
        quantities = ["count", "missing"]
        values += [float(present.size), float(data.size - present.size)]
        if set(wanted) & {"sum", "mean", "variance", "std"}:
            quantities.append("sum")
            values.append(float(np.sum(present)))
        ddofs = {wanted[name]["ddof"] for name in ("variance", "std") if name in wanted}
        if len(ddofs) > 1:
            raise HandlerError(
                ErrorCode.BAD_ARGUMENTS, "'variance' and 'std' of a column need the same ddof"
            )
        if ddofs:
            quantities.append("sumsq")
            values.append(float(np.sum(present * present)))
        schema.append(
            {
                "column": column,
                "stats": sorted(wanted),
                "ddof": ddofs.pop() if ddofs else None,
                "quantities": quantities,
            }
        )
    return _mask(node, round_, np.asarray(values, dtype=np.float64), 1), schema
