"""Secure aggregation, driven by the researcher over the network.

:class:`SecureAggregation` runs the protocol of :mod:`broker_net.crypto.secagg` with
:class:`~broker_net.messages.SecaggRequest` messages. :meth:`~SecureAggregation.setup` is three
federated requests, each under ``StopOnError`` and a timeout, which every invited node must
answer:

1. ``keys``: the context goes to every node, which answers its signed round public keys;
2. ``shares``: every node's keys are relayed to all, each answers its seed shares encrypted
   for each peer;
3. ``deliver``: each node gets the shares its peers made for it.

Then each round's requests carry :meth:`~SecureAggregation.arguments`, the nodes answer masked
vectors, and :meth:`~SecureAggregation.aggregate` unmasks their sum: it asks the nodes whose
vectors arrived (the survivors) to ``reveal`` their shares of the survivors' self seeds and of
the dropped nodes' round keys, and removes what is left of the masks. A node that fails its
round after setup (killed, refusing, late) is thereby recovered from, as long as ``threshold``
nodes survive; the revealed shares concern that round only.

::

    secagg = SecureAggregation(requests, experiment_id="exp", nodes=["n1", "n2", "n3"], rounds=5)
    await secagg.setup()
    ... TrainRequest(..., secagg_arguments=secagg.arguments(0)) ...
    params, survivors = await secagg.fedavg(0, replies)
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np
import numpy.typing as npt

from broker_net.crypto.identities import BadSignatureError, UnknownKeyError
from broker_net.crypto.masking import MaskedVector
from broker_net.crypto.secagg import (
    RevealedShares,
    SecaggContext,
    SecaggError,
    SecaggKeys,
    ring_bits_for,
)
from broker_net.crypto.secagg_aggregator import SecaggAggregator, SecaggResult
from broker_net.message_base import new_id
from broker_net.messages import (
    ErrorMessage,
    FAReply,
    SecaggReply,
    SecaggRequest,
    SecaggStep,
    TrainReply,
)
from researcher.errors import SecureAggregationError
from researcher.jobs.masked import masked_params, masked_statistics, statistics_from_sum, unflatten
from researcher.requests.federated import MessagesByNode
from researcher.requests.policies import DiscardOnTimeout, Policy, StopOnError
from researcher.requests.router import Requests

logger = logging.getLogger(__name__)

DEFAULT_TIMEOUT = 60.0
"""Seconds each node has to answer one secure aggregation step."""

RANGE_BITS = 90
"""Fractional bits below a declared range: analytics values are kept to multiples of about
``value_range x 2**-90``, finer than a float's last bit for any value above
``value_range x 2**-37``."""
DEFAULT_VALUE_RANGE = 2.0**40
"""The value range of analytics under secure aggregation when none is declared (about 1.1e12)."""
DEFAULT_MAX_ROWS = 2**32
"""The most rows a node's dataset may hold under secure aggregation when none is declared."""


def analytics_precision_bits(value_range: float) -> int:
    """The fractional bits for values within ``±value_range``: :data:`RANGE_BITS` below the
    range's leading bit (never negative)."""
    return max(0, RANGE_BITS - math.frexp(value_range)[1])


def default_threshold(nodes: int) -> int:
    """A strict majority of the nodes, and at least 2: the survivors a round needs."""
    return max(2, nodes // 2 + 1)


class SecureAggregation:
    """The researcher's side of one secure aggregation context, over :class:`Requests`.

    Args:
        requests: a started :class:`Requests`; with security on, each node's keys must be
            signed by the identity its trust store holds for that node.
        experiment_id: the experiment the context serves.
        nodes: the nodes invited.
        rounds: aggregations the context serves, numbered from 0.
        threshold: fewest survivors of a round (default: a strict majority, at least 2).
        clipping_range: values are clipped to ``[-clipping_range, clipping_range]``; nodes
            refuse values outside it rather than send them clipped.
        precision_bits: values are rounded to multiples of ``2**-precision_bits``.
        max_weight: the largest weight (sample size) a node may give its vector.
        self_mask: vectors carry a self mask, so a late vector of a node declared dropped
            stays hidden; every round then has a reveal exchange (without it, only rounds
            with a dropout do).
        timeout: seconds each node has to answer each step.
        secagg_id: the context's id (default: a fresh one).

    Raises:
        ValueError: fewer than two nodes, or parameters no context can take.
    """

    def __init__(
        self,
        requests: Requests,
        *,
        experiment_id: str,
        nodes: Sequence[str],
        rounds: int = 1,
        threshold: int | None = None,
        clipping_range: float = 1000.0,
        precision_bits: int = 20,
        max_weight: int = 2**20,
        self_mask: bool = True,
        timeout: float = DEFAULT_TIMEOUT,
        secagg_id: str | None = None,
        ring_bits: int | None = None,
        limits: Mapping[str, Any] | None = None,
    ) -> None:
        self.requests = requests
        self.timeout = timeout
        self.limits = dict(limits or {})
        """What each round's ``secagg_arguments`` adds for the nodes to check (analytics:
        ``value_range`` and ``max_rows``)."""
        if ring_bits is None:
            ring_bits = ring_bits_for(len(nodes), max_weight, clipping_range, precision_bits)
        self.context = SecaggContext(
            secagg_id=secagg_id or new_id("secagg"),
            experiment_id=experiment_id,
            node_ids=tuple(nodes),
            threshold=threshold or default_threshold(len(nodes)),
            rounds=rounds,
            clipping_range=clipping_range,
            precision_bits=precision_bits,
            max_weight=max_weight,
            self_mask=self_mask,
            ring_bits=ring_bits,
        )
        trust = requests.security.trust if requests.security is not None else None
        self.aggregator = SecaggAggregator(self.context, trust=trust)
        self.ready = False
        self.revealed_rounds: list[int] = []
        """Rounds unmasked so far, in order."""

    @classmethod
    def for_analytics(cls, requests: Requests, **options: Any) -> SecureAggregation:
        """A one-round context for additive statistics: see :func:`analytics_aggregation`."""
        return analytics_aggregation(requests, **options)

    @property
    def secagg_id(self) -> str:
        """The context's id."""
        return self.context.secagg_id

    def arguments(self, round: int) -> dict[str, Any]:
        """The ``secagg_arguments`` of a request whose answers ``round`` aggregates."""
        return {"secagg_id": self.secagg_id, "round": round, **self.limits}

    # --- setup ---------------------------------------------------------------------------------

    async def setup(self) -> None:
        """Run the keys, shares and deliver exchanges with every invited node.

        Raises:
            SecureAggregationError: a node refused a step (no identity, a bad signature...),
                did not answer in time, or sent keys or shares that do not fit the context.
        """
        nodes = list(self.context.node_ids)
        keys = await self._exchange(
            self._request("keys", context=self.context.to_dict()), nodes, "keys"
        )
        for node, reply in keys.items():
            with _refusals(node):
                self.aggregator.add_public_keys(SecaggKeys.from_dict(reply.public_keys or {}))
        with _refusals(None):
            relayed = [item.to_dict() for item in self.aggregator.public_keys()]
        shares = await self._exchange(self._request("shares", public_keys=relayed), nodes, "shares")
        for node, reply in shares.items():
            with _refusals(node):
                self.aggregator.add_shares(node, reply.shares)
        participants = list(self.aggregator.participants)
        with _refusals(None):
            deliveries = MessagesByNode(
                {
                    node: self._request("deliver", shares=self.aggregator.shares_for(node))
                    for node in participants
                }
            )
        await self._exchange(deliveries, participants, "deliver")
        self.ready = True
        logger.info(
            "secure aggregation %s set up with %s (threshold %d)",
            self.secagg_id, ", ".join(participants), self.context.threshold,
        )  # fmt: skip

    def _request(self, step: SecaggStep, **fields: Any) -> SecaggRequest:
        return SecaggRequest(
            researcher_id=self.requests.researcher_id,
            secagg_id=self.secagg_id,
            experiment_id=self.context.experiment_id,
            step=step,
            **fields,
        )

    async def _exchange(
        self,
        messages: SecaggRequest | MessagesByNode,
        nodes: list[str],
        step: SecaggStep,
        *,
        everyone: bool = True,
    ) -> dict[str, SecaggReply]:
        """Send a step; with ``everyone`` any error or silence is fatal, without it only the
        answers are returned (the others are logged)."""
        policies: list[Policy] = [DiscardOnTimeout(self.timeout)]
        if everyone:
            policies.insert(0, StopOnError())
        fed = await self.requests.request(messages, nodes, policies)
        errors: dict[str, ErrorMessage] = fed.errors()
        for node, error in errors.items():
            logger.warning("secure aggregation step %r: node %s answered %s: %s",
                           step, node, error.code.name, error.message)  # fmt: skip
        if errors and everyone:
            node, error = min(errors.items())
            raise SecureAggregationError(
                f"node {node} refused the secure aggregation step {step!r}: "
                f"{error.code.name}: {error.message}",
                node_id=node,
                request_id=fed.request_id,
            )
        replies: dict[str, SecaggReply] = {
            node: reply
            for node, reply in fed.replies().items()
            if isinstance(reply, SecaggReply)
            and (reply.secagg_id, reply.step) == (self.secagg_id, step)
        }
        missing = sorted(set(nodes) - set(replies))
        if missing and everyone:
            reasons = fed.reasons()
            raise SecureAggregationError(
                f"the secure aggregation step {step!r} got no answer from "
                + "; ".join(
                    f"{node} ({reasons.get(node) or 'no reason given'})" for node in missing
                ),
                node_id=missing[0],
                request_id=fed.request_id,
            )
        return replies

    # --- rounds --------------------------------------------------------------------------------

    async def aggregate(self, round: int, masked: Mapping[str, MaskedVector]) -> SecaggResult:
        """Unmask the sum of the masked vectors of ``round``, one per surviving node.

        Every participant missing from ``masked`` counts as dropped out: the survivors reveal
        their shares of its round key, and its pairwise masks are removed.

        Raises:
            SecureAggregationError: setup was not run, fewer than ``threshold`` survivors or
                answers to the reveal, or shares that rebuild seeds other than committed.
        """
        if not self.ready:
            raise SecureAggregationError(f"secure aggregation {self.secagg_id} is not set up")
        survivors = sorted(masked)
        dropped = sorted(set(self.aggregator.participants) - set(survivors))
        if len(survivors) < self.context.threshold:
            raise SecureAggregationError(
                f"round {round}: {len(survivors)} masked vectors, "
                f"{self.context.threshold} needed to unmask their sum"
            )
        revealed: list[RevealedShares] = []
        if self.aggregator.needs_reveal(survivors):
            if dropped:
                logger.warning(
                    "secure aggregation round %d: %s dropped out; the survivors reveal their "
                    "shares of its round key", round, ", ".join(dropped),
                )  # fmt: skip
            # Any threshold of the survivors' answers unmasks the sum.
            request = self._request("reveal", round=round, survivors=survivors)
            answers = await self._exchange(request, survivors, "reveal", everyone=False)
            for node, reply in answers.items():
                with _refusals(node):
                    revealed.append(RevealedShares.from_dict(reply.revealed or {}))
        with _refusals(None):
            result = self.aggregator.aggregate(round, masked, revealed)
        self.revealed_rounds.append(round)
        return result

    async def fedavg(
        self, round: int, replies: Mapping[str, TrainReply]
    ) -> tuple[dict[str, npt.NDArray[np.float64]], tuple[str, ...]]:
        """The weighted average of the masked parameters in ``replies``, and the survivors.

        A reply whose parameters are not masked is left out (its node counts as dropped), so
        a plain update is never read.

        Raises:
            SecureAggregationError: as :meth:`aggregate`; or masked replies of unequal shapes.
        """
        masked, shapes = masked_params(round, replies)
        result = await self.aggregate(round, masked)
        try:
            mean = result.mean
        except ZeroDivisionError as exc:
            raise SecureAggregationError(f"round {round}: the sample sizes sum to 0") from exc
        return unflatten(mean, shapes), result.survivors

    async def statistics(self, round: int, replies: Mapping[str, FAReply]) -> dict[str, Any]:
        """Pooled statistics from masked analytics replies (see
        :func:`node_agent.secagg_handlers.mask_statistics`), in the form of
        :func:`researcher.jobs.statistics.combine_statistics`.

        Raises:
            SecureAggregationError: as :meth:`aggregate`; or replies of unequal schemas.
        """
        masked, schema = masked_statistics(replies)
        result = await self.aggregate(round, masked)
        return statistics_from_sum(schema, result)


def analytics_aggregation(
    requests: Requests,
    *,
    experiment_id: str,
    nodes: Sequence[str],
    timeout: float = DEFAULT_TIMEOUT,
    value_range: float | None = None,
    max_rows: int | None = None,
    precision_bits: int | None = None,
) -> SecureAggregation:
    """A one-round context for additive statistics of values within ``±value_range``
    (default :data:`DEFAULT_VALUE_RANGE`) over at most ``max_rows`` rows a node (default
    :data:`DEFAULT_MAX_ROWS`).

    Values are kept to multiples of ``2**-precision_bits``, by default
    :func:`analytics_precision_bits` of the range; the ring is the smallest that holds
    ``nodes x max_rows x max(1, range, range**2) x 2**precision_bits`` (counts, sums and
    sums of squares) with a sign bit and a rounding bit. Each node refuses, before it
    sends anything, a value outside the range or more rows than ``max_rows``.

    Raises:
        SecureAggregationError: a range or row bound that is not positive, or settings
            whose sums no ring up to 512 bits can hold; nothing is sent then.
    """
    value_range = DEFAULT_VALUE_RANGE if value_range is None else float(value_range)
    max_rows = DEFAULT_MAX_ROWS if max_rows is None else int(max_rows)
    if not (math.isfinite(value_range) and value_range > 0) or max_rows < 1:
        raise SecureAggregationError(
            "secure aggregation needs a finite positive value_range and max_rows >= 1"
        )
    if precision_bits is None:
        precision_bits = analytics_precision_bits(value_range)
    bound = max_rows * max(1.0, value_range, value_range * value_range)
    try:
        return SecureAggregation(
            requests, experiment_id=experiment_id, nodes=nodes, rounds=1,
            clipping_range=bound, precision_bits=precision_bits, max_weight=1,
            timeout=timeout, limits={"value_range": value_range, "max_rows": max_rows},
        )  # fmt: skip
    except ValueError as exc:
        raise SecureAggregationError(f"secure aggregation cannot hold these sums: {exc}") from exc


@contextmanager
def _refusals(node: str | None) -> Iterator[None]:
    """Turn the aggregator's refusals into SecureAggregationErrors naming the node."""
    try:
        yield
    except (SecaggError, BadSignatureError, UnknownKeyError, ValueError) as exc:
        who = f"node {node}: " if node is not None else ""
        raise SecureAggregationError(f"secure aggregation: {who}{exc}", node_id=node) from exc
