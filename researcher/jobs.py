"""Jobs: one federated request each, with the argument checks and error handling of the job.

Every job is created just before use and awaited once::

    replies = await FARequestJob(requests, experiment_id="exp", fa_id="fa1",
                                 datasets={"n1": "dataset_1"}, stats=["mean"]).execute()
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from broker_net.messages import (
    ApprovalReply,
    ApprovalRequest,
    ErrorMessage,
    FAReply,
    FARequest,
    PreprocReply,
    PreprocRequest,
    PreprocStep,
    PreprocType,
    TrainingPlanStatus,
    TrainingPlanStatusReply,
    TrainingPlanStatusRequest,
    TrainReply,
    TrainRequest,
)
from researcher.analytics import combine_statistics
from researcher.errors import JobError, NodeErrorReply, NoReplyError
from researcher.policies import DiscardOnTimeout, Policy
from researcher.requests import FederatedRequest, MessagesByNode, NodeTiming, Requests

logger = logging.getLogger(__name__)


class Job:
    """Base of every job: the request layer, the researcher id and the policies to wait under.

    Args:
        requests: a started :class:`Requests`.
        policies: when to stop waiting; each job has a sensible default.
    """

    default_policies: Sequence[Policy] = ()

    def __init__(self, requests: Requests, *, policies: Sequence[Policy] | None = None) -> None:
        self.requests = requests
        self.policies = list(self.default_policies if policies is None else policies)
        self.request: FederatedRequest | None = None

    @property
    def researcher_id(self) -> str:
        """The researcher sending the job."""
        return self.requests.researcher_id

    async def _send(self, messages: Any, nodes: Sequence[str]) -> FederatedRequest:
        self.request = await self.requests.request(messages, nodes, self.policies)
        return self.request


@dataclass(frozen=True)
class FAResult:
    """Federated statistics: per-node replies and their exact combination."""

    replies: dict[str, FAReply]
    statistics: dict[str, Any]
    timings: dict[str, NodeTiming]


class FARequestJob(Job):
    """Federated analytics over one dataset per node.

    Exactly one of ``stats`` and ``stats_args`` is required, and ``stats_args`` excludes
    ``dataset_schema`` (it names its columns itself). Every node error is fatal.

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
    ) -> None:
        super().__init__(requests, policies=policies)
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

    async def execute(self) -> FAResult:
        """Send the request to every node and combine the statistics.

        Raises:
            NodeErrorReply: a node answered an error.
            NoReplyError: no node answered.
        """
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
                    secagg_arguments=self.secagg_arguments,
                )
                for node, dataset_id in self.datasets.items()
            }
        )
        fed = await self._send(messages, list(self.datasets))
        _raise_first_error(fed.errors())
        replies: dict[str, FAReply] = fed.replies()
        if not replies:
            raise NoReplyError(
                f"no node answered the analytics request ({_why(fed)})", request_id=fed.request_id
            )
        outputs = [reply.output for reply in replies.values() if reply.output is not None]
        return FAResult(replies, combine_statistics(outputs), fed.timings())


@dataclass(frozen=True)
class PreprocResult:
    """Preprocessing replies, with each node's new state id, and the errors."""

    replies: dict[str, PreprocReply]
    errors: dict[str, ErrorMessage]
    state_ids: dict[str, str | None] = field(default_factory=dict)


class PreprocRequestJob(Job):
    """One step of a preprocessing method on every node.

    ``preproc_args`` go to every node, merged with that node's ``preproc_args_nodes`` entry;
    ``state_ids`` chains steps (each node continues from its own state).
    """

    def __init__(
        self,
        requests: Requests,
        *,
        experiment_id: str,
        preproc_id: str,
        datasets: Mapping[str, str],
        preproc_type: PreprocType,
        preproc_step: PreprocStep,
        preproc_args: Mapping[str, Any] | None = None,
        preproc_args_nodes: Mapping[str, Mapping[str, Any]] | None = None,
        state_ids: Mapping[str, str | None] | None = None,
        policies: Sequence[Policy] | None = None,
    ) -> None:
        super().__init__(requests, policies=policies)
        if not datasets:
            raise JobError("no node datasets given")
        unknown = set(preproc_args_nodes or {}) - set(datasets)
        if unknown:
            raise JobError(f"preproc_args_nodes names nodes without a dataset: {sorted(unknown)}")
        self.experiment_id = experiment_id
        self.preproc_id = preproc_id
        self.datasets = dict(datasets)
        self.preproc_type = PreprocType(preproc_type)
        self.preproc_step = PreprocStep(preproc_step)
        self.preproc_args = dict(preproc_args or {})
        self.preproc_args_nodes = {k: dict(v) for k, v in (preproc_args_nodes or {}).items()}
        self.state_ids = dict(state_ids or {})

    async def execute(self) -> PreprocResult:
        """Send the step to every node; errors are returned (and logged), not raised."""
        messages = MessagesByNode()
        for node, dataset_id in self.datasets.items():
            arguments = copy.deepcopy(self.preproc_args)
            arguments.update(self.preproc_args_nodes.get(node, {}))
            messages[node] = PreprocRequest(
                researcher_id=self.researcher_id,
                experiment_id=self.experiment_id,
                dataset_id=dataset_id,
                preproc_type=self.preproc_type,
                preproc_step=self.preproc_step,
                preproc_id=self.preproc_id,
                preproc_args=arguments,
                state_id=self.state_ids.get(node),
            )
        fed = await self._send(messages, list(self.datasets))
        errors = fed.errors()
        for node, error in errors.items():
            logger.error("node %s preprocessing error %s: %s", node, error.code.name, error.message)
        replies: dict[str, PreprocReply] = fed.replies()
        return PreprocResult(replies, errors, {n: r.state_id for n, r in replies.items()})


@dataclass(frozen=True)
class TrainingResult:
    """One training round: successful replies, nodes that failed and why, and timings."""

    replies: dict[str, TrainReply]
    failed: dict[str, str]
    timings: dict[str, NodeTiming]
    request_id: str


class TrainingJob(Job):
    """One training (or validation-only) round on every node.

    Nodes that answer an error, time out or send ``success=False`` are listed in
    ``failed`` with the reason; the caller decides whether the round is still usable.
    """

    def __init__(
        self,
        requests: Requests,
        *,
        experiment_id: str,
        round_number: int,
        training_plan: str,
        training_plan_class: str,
        params: Mapping[str, Any],
        datasets: Mapping[str, str],
        training_args: Mapping[str, Any] | None = None,
        model_args: Mapping[str, Any] | None = None,
        state_ids: Mapping[str, str | None] | None = None,
        aggregator_args: Mapping[str, Mapping[str, Any]] | None = None,
        secagg_arguments: Mapping[str, dict[str, Any]] | None = None,
        optim_aux_var: Mapping[str, dict[str, Any]] | None = None,
        training: bool = True,
        policies: Sequence[Policy] | None = None,
    ) -> None:
        super().__init__(requests, policies=policies)
        if not datasets:
            raise JobError("no node datasets given")
        self.experiment_id = experiment_id
        self.round_number = round_number
        self.training_plan = training_plan
        self.training_plan_class = training_plan_class
        self.params = dict(params)
        self.datasets = dict(datasets)
        self.training_args = dict(training_args or {})
        self.model_args = dict(model_args or {})
        self.state_ids = dict(state_ids or {})
        self.aggregator_args = {k: dict(v) for k, v in (aggregator_args or {}).items()}
        self.secagg_arguments = dict(secagg_arguments or {})
        self.optim_aux_var = dict(optim_aux_var or {})
        self.training = training

    def messages(self) -> MessagesByNode:
        """The request for each node."""
        return MessagesByNode(
            {
                node: TrainRequest(
                    researcher_id=self.researcher_id,
                    experiment_id=self.experiment_id,
                    round=self.round_number,
                    training=self.training,
                    training_plan=self.training_plan,
                    training_plan_class=self.training_plan_class,
                    params=self.params,
                    training_args=self.training_args,
                    model_args=self.model_args,
                    dataset_id=dataset_id,
                    state_id=self.state_ids.get(node),
                    aggregator_args=self.aggregator_args.get(node, {}),
                    secagg_arguments=self.secagg_arguments.get(node),
                    optim_aux_var=self.optim_aux_var.get(node),
                )
                for node, dataset_id in self.datasets.items()
            }
        )

    async def execute(self) -> TrainingResult:
        """Run the round and sort replies from failures."""
        fed = await self._send(self.messages(), list(self.datasets))
        failed = {node: reason for node, reason in fed.reasons().items()}
        replies: dict[str, TrainReply] = {}
        for node, reply in fed.replies().items():
            if reply.success:
                replies[node] = reply
            else:
                failed[node] = reply.msg or "the node reported a failed round"
        for node, reason in failed.items():
            logger.warning("round %d: node %s failed: %s", self.round_number, node, reason)
        return TrainingResult(replies, failed, fed.timings(), fed.request_id)


class TrainingPlanApproveJob(Job):
    """Submit a training plan for review on every node (``success`` means queued, not approved)."""

    default_policies = (DiscardOnTimeout(5),)

    def __init__(
        self,
        requests: Requests,
        *,
        training_plan: str,
        description: str,
        nodes: Sequence[str],
        policies: Sequence[Policy] | None = None,
    ) -> None:
        super().__init__(requests, policies=policies)
        if not training_plan.strip():
            raise JobError("the training plan source is empty")
        self.training_plan = training_plan
        self.description = description
        self.nodes = list(nodes)

    async def execute(self) -> dict[str, ApprovalReply]:
        """Send the plan; return each answering node's ApprovalReply."""
        message = ApprovalRequest(
            researcher_id=self.researcher_id,
            description=self.description,
            training_plan=self.training_plan,
        )
        fed = await self._send(message, self.nodes)
        for node, error in fed.errors().items():
            logger.error("node %s refused the plan: %s %s", node, error.code.name, error.message)
        for node in set(self.nodes) - set(fed.replies()) - set(fed.errors()):
            logger.warning("node %s did not answer the approval request", node)
        return dict(fed.replies())


class TrainingPlanCheckJob(Job):
    """Ask every node whether a training plan is approved there."""

    default_policies = (DiscardOnTimeout(5),)

    def __init__(
        self,
        requests: Requests,
        *,
        experiment_id: str,
        training_plan: str,
        nodes: Sequence[str],
        policies: Sequence[Policy] | None = None,
    ) -> None:
        super().__init__(requests, policies=policies)
        self.experiment_id = experiment_id
        self.training_plan = training_plan
        self.nodes = list(nodes)

    async def execute(self) -> dict[str, TrainingPlanStatusReply]:
        """Return each answering node's status reply, logging the verdicts."""
        message = TrainingPlanStatusRequest(
            researcher_id=self.researcher_id,
            experiment_id=self.experiment_id,
            training_plan=self.training_plan,
        )
        fed = await self._send(message, self.nodes)
        replies: dict[str, TrainingPlanStatusReply] = fed.replies()
        for node, reply in replies.items():
            if not reply.approval_obligation:
                logger.info("node %s does not require approval", node)
            elif reply.status is TrainingPlanStatus.APPROVED:
                logger.info("node %s approved the plan", node)
            else:
                logger.warning("node %s: plan is %s", node, reply.status.value)
        for node in set(self.nodes) - set(replies):
            logger.warning("node %s did not answer the status request", node)
        return replies


def _raise_first_error(errors: Mapping[str, ErrorMessage]) -> None:
    for node, error in errors.items():
        logger.error("node %s error %s: %s", node, error.code.name, error.message)
    if errors:
        raise NodeErrorReply(next(iter(errors.values())))


def _why(fed: FederatedRequest) -> str:
    reasons = fed.reasons()
    return "; ".join(f"{node}: {reason}" for node, reason in reasons.items()) or "no reason given"
