"""Federated analytics: statistics over one dataset per node, combined exactly."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from broker_net.messages import ErrorMessage, FAReply, FARequest
from researcher.errors import JobError, NoReplyError
from researcher.jobs.base import Job, raise_all_errors, why_no_reply
from researcher.jobs.secagg import SecureAggregation
from researcher.jobs.statistics import combine_statistics
from researcher.requests.federated import MessagesByNode
from researcher.requests.hooks import RequestHooks
from researcher.requests.ledger import NodeTiming
from researcher.requests.policies import Policy
from researcher.requests.router import Requests


@dataclass(frozen=True)
class FAResult:
    """Federated statistics: per-node replies and their exact combination."""

    replies: dict[str, FAReply]
    statistics: dict[str, Any]
    timings: dict[str, NodeTiming]
    errors: dict[str, ErrorMessage] = field(default_factory=dict)
    """Each failing node's error; empty, since every node error is fatal (see
    :class:`~researcher.errors.NodeErrors`), unless a subclass keeps going."""


class FARequestJob(Job):
    """Federated analytics over one dataset per node.

    Exactly one of ``stats`` and ``stats_args`` is required, and ``stats_args`` excludes
    ``dataset_schema`` (it names its columns itself). Every node error is fatal.

    With ``secagg`` the job first sets up a secure aggregation with the nodes (see
    :mod:`researcher.jobs.secagg`); each node then sends masked totals, and the researcher learns
    only their sums: count, missing, sum, mean, variance and std are available this way.
    ``secagg_options`` go to :meth:`SecureAggregation.for_analytics
    <researcher.jobs.secagg.SecureAggregation.for_analytics>`: ``value_range`` (every value
    lies within ±value_range), ``max_rows`` and ``precision_bits``.

    Raises:
        JobError: the arguments break those rules.
    """

    def __init__(
        self,
        requests: Requests,
        *,
        experiment_id: str,
        fa_id: str,
        datasets: Mapping[str, str],
        stats: list[str] | None = None,
        stats_args: dict[str, Any] | None = None,
        dataset_schema: list[str] | dict[str, Any] | None = None,
        secagg_arguments: dict[str, Any] | None = None,
        policies: Sequence[Policy] | None = None,
        hooks: RequestHooks | None = None,
        secagg: bool = False,
        secagg_options: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(requests, policies=policies, hooks=hooks)
        if not stats and not stats_args:
            raise JobError("at least one of 'stats' or 'stats_args' must be provided")
        if stats and stats_args:
            raise JobError("'stats' and 'stats_args' are mutually exclusive")
        if stats_args and dataset_schema is not None:
            raise JobError("'stats_args' and 'dataset_schema' are mutually exclusive")
        if not datasets:
            raise JobError("no node datasets given")
        self.experiment_id = experiment_id
        self.fa_id = fa_id
        self.datasets = dict(datasets)
        self.stats = stats
        self.stats_args = stats_args
        self.dataset_schema = dataset_schema
        self.secagg_arguments = secagg_arguments
        self.secagg = secagg
        self.secagg_options = dict(secagg_options or {})
        unknown = set(self.secagg_options) - {"value_range", "max_rows", "precision_bits"}
        if unknown:
            raise JobError(f"unknown secure aggregation options: {', '.join(sorted(unknown))}")

    async def execute(self) -> FAResult:
        """Send the request to every node and combine the statistics.

        Raises:
            NodeErrors: nodes answered errors; it names every one of them (a
                :class:`~researcher.errors.NodeErrorReply` for the first, and a ``JobError``).
            NoReplyError: no node answered.
            SecureAggregationError: with ``secagg``, the setup or the unmasking failed.
        """
        secagg: SecureAggregation | None = None
        arguments = self.secagg_arguments
        if self.secagg:
            secagg = SecureAggregation.for_analytics(
                self.requests,
                experiment_id=self.experiment_id,
                nodes=list(self.datasets),
                **self.secagg_options,
            )
            await secagg.setup()
            arguments = secagg.arguments(0)
        messages = MessagesByNode(
            {
                node: FARequest(
                    researcher_id=self.researcher_id,
                    experiment_id=self.experiment_id,
                    fa_id=self.fa_id,
                    dataset_id=dataset_id,
                    stats=self.stats,
                    stats_args=self.stats_args,
                    dataset_schema=self.dataset_schema,
                    secagg_arguments=arguments,
                )
                for node, dataset_id in self.datasets.items()
            }
        )
        fed = await self._send(messages, list(self.datasets))
        raise_all_errors(fed.errors())
        replies: dict[str, FAReply] = fed.replies()
        if not replies:
            raise NoReplyError(
                f"no node answered the analytics request ({why_no_reply(fed)})",
                request_id=fed.request_id,
            )
        if secagg is not None:
            return FAResult(replies, await secagg.statistics(0, replies), fed.timings())
        outputs = [reply.output for reply in replies.values() if reply.output is not None]
        return FAResult(replies, combine_statistics(outputs), fed.timings())
