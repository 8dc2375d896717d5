"""Jobs: one federated request each, with the argument checks and error handling of the job.

Every job is created just before use and awaited once::

    replies = await FARequestJob(requests, experiment_id="exp", fa_id="fa1",
                                 datasets={"n1": "dataset_1"}, stats=["mean"]).execute()
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from broker_net.crypto.encryption import DecryptionError
from broker_net.crypto.identities import UnknownKeyError
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
    new_id,
)
from researcher.analytics import combine_statistics
from researcher.errors import JobError, NodeErrorReply, NoReplyError
from researcher.payloads import open_reply, seal_request
from researcher.policies import (
    CONTINUE,
    DiscardOnTimeout,
    NodeState,
    Policy,
    RequestStatus,
    Verdict,
)
from researcher.requests import FederatedRequest, MessagesByNode, NodeTiming, Requests
from researcher.secagg import SecureAggregation

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class RequestHooks:
    """How a job's request is recorded while it runs, and resumed by another process.

    Attributes:
        request_id: send under this id instead of a fresh one (to resume a request).
        already_sent: nodes an earlier process sent the request to, with the send time: they
            are not sent to again, their replies come from the durable reply queue.
        on_sending: called with the request id and the nodes before anything is published.
        on_sent: called with each node's send time once every publish is done.
        on_answer: called with the request id and a node id when that node's reply or error
            arrives.
    """

    request_id: str | None = None
    already_sent: Mapping[str, datetime] | None = None
    on_sending: Callable[[str, list[str]], None] | None = None
    on_sent: Callable[[str, dict[str, datetime]], None] | None = None
    on_answer: Callable[[str, str], None] | None = None


class _Watch:
    """Reports a request's sends and answers to its hooks and never stops anything.

    The request layer evaluates its policies once every send is done and again after each
    answer, so a policy is where those moments can be observed.
    """

    def __init__(self, hooks: RequestHooks) -> None:
        self.hooks = hooks
        self.fed: FederatedRequest | None = None
        self._sent_reported = False
        self._answered: set[str] = set()

    def evaluate(self, nodes: Mapping[str, NodeState], now: float) -> Verdict:
        fed = self.fed
        if fed is None:
            return CONTINUE
        if not self._sent_reported:
            self._sent_reported = True
            if self.hooks.on_sent is not None:
                self.hooks.on_sent(fed.request_id, fed.sent_at())
        for node, state in nodes.items():
            answered = state.status in (RequestStatus.SUCCESS, RequestStatus.ERROR)
            if answered and node not in self._answered:
                self._answered.add(node)
                if self.hooks.on_answer is not None:
                    self.hooks.on_answer(fed.request_id, node)
        return CONTINUE

    def next_deadline(self, nodes: Mapping[str, NodeState]) -> float | None:
        return None


class Job:
    """Base of every job: the request layer, the researcher id and the policies to wait under.

    Args:
        requests: a started :class:`Requests`.
        policies: when to stop waiting; each job has a sensible default.
        hooks: record the request as it goes, or resume one an earlier process sent.
    """

    default_policies: Sequence[Policy] = ()

    def __init__(
        self,
        requests: Requests,
        *,
        policies: Sequence[Policy] | None = None,
        hooks: RequestHooks | None = None,
    ) -> None:
        self.requests = requests
        self.policies = list(self.default_policies if policies is None else policies)
        self.hooks = hooks
        self.request: FederatedRequest | None = None

    @property
    def researcher_id(self) -> str:
        """The researcher sending the job."""
        return self.requests.researcher_id

    async def _send(
        self, messages: Any, nodes: Sequence[str], *, request_id: str | None = None
    ) -> FederatedRequest:
        hooks = self.hooks
        if hooks is None:
            self.request = await self.requests.request(
                messages, nodes, self.policies, request_id=request_id
            )
            return self.request
        watch = _Watch(hooks)
        fed = self.requests.send(
            messages, nodes, [watch, *self.policies],
            request_id=hooks.request_id or request_id, already_sent=hooks.already_sent,
        )  # fmt: skip
        watch.fed = fed
        if hooks.on_sending is not None:
            hooks.on_sending(fed.request_id, fed.nodes)
        async with fed:
            self.request = fed
        return fed


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

    With ``secagg`` the job first sets up a secure aggregation with the nodes (see
    :mod:`researcher.secagg`); each node then sends masked totals, and the researcher learns
    only their sums: count, missing, sum, mean, variance and std are available this way.

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

    async def execute(self) -> FAResult:
        """Send the request to every node and combine the statistics.

        Raises:
            NodeErrorReply: a node answered an error.
            NoReplyError: no node answered.
            SecureAggregationError: with ``secagg``, the setup or the unmasking failed.
        """
        secagg: SecureAggregation | None = None
        arguments = self.secagg_arguments
        if self.secagg:
            secagg = SecureAggregation.for_analytics(
                self.requests, experiment_id=self.experiment_id, nodes=list(self.datasets)
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
        _raise_first_error(fed.errors())
        replies: dict[str, FAReply] = fed.replies()
        if not replies:
            raise NoReplyError(
                f"no node answered the analytics request ({_why(fed)})", request_id=fed.request_id
            )
        if secagg is not None:
            return FAResult(replies, await secagg.statistics(0, replies), fed.timings())
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
        hooks: RequestHooks | None = None,
    ) -> None:
        super().__init__(requests, policies=policies, hooks=hooks)
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

    ``encrypt_aux_var`` encrypts each node's ``optim_aux_var`` for that node, and
    ``encrypt_params`` the parameters (both need the researcher's security); each payload is
    bound to the experiment, round, node and request id (see :mod:`researcher.payloads`).
    The nodes encrypt their answers in kind, and the replies come back decrypted; a reply that
    does not decrypt puts its node in ``failed`` with DECRYPTION_FAILED.
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
        hooks: RequestHooks | None = None,
        encrypt_aux_var: bool = False,
        encrypt_params: bool = False,
    ) -> None:
        super().__init__(requests, policies=policies, hooks=hooks)
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
        self.encrypt_aux_var = encrypt_aux_var
        self.encrypt_params = encrypt_params

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
        """Run the round and sort replies from failures.

        Raises:
            JobError: encryption is asked for without security, or for an untrusted node.
        """
        # Encrypted payloads are bound to the request id, so it is chosen before sending.
        request_id = (self.hooks.request_id if self.hooks else None) or new_id("request")
        messages = self.messages()
        if self.encrypt_aux_var or self.encrypt_params:
            messages = self._sealed(messages, request_id)
        fed = await self._send(messages, list(self.datasets), request_id=request_id)
        failed = {node: reason for node, reason in fed.reasons().items()}
        replies: dict[str, TrainReply] = {}
        for node, reply in fed.replies().items():
            if reply.success:
                try:
                    replies[node] = open_reply(
                        reply, self.requests.security, experiment_id=self.experiment_id,
                        round=self.round_number, request_id=fed.request_id,
                    )  # fmt: skip
                except DecryptionError as exc:
                    failed[node] = f"DECRYPTION_FAILED: {exc}"
            else:
                failed[node] = reply.msg or "the node reported a failed round"
        for node, reason in failed.items():
            logger.warning("round %d: node %s failed: %s", self.round_number, node, reason)
        return TrainingResult(replies, failed, fed.timings(), fed.request_id)

    def _sealed(self, messages: MessagesByNode, request_id: str) -> MessagesByNode:
        security = self.requests.security
        if security is None:
            raise JobError("encrypted payloads need the researcher's security (identity, trust)")
        try:
            return MessagesByNode(
                {
                    node: seal_request(
                        message,
                        node,
                        security,
                        request_id=request_id,
                        encrypt_params=self.encrypt_params,
                        encrypt_aux_var=self.encrypt_aux_var,
                    )
                    for node, message in messages.items()
                    if isinstance(message, TrainRequest)
                }
            )
        except UnknownKeyError as exc:
            raise JobError(f"cannot encrypt for an untrusted node: {exc}") from exc


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
        hooks: RequestHooks | None = None,
    ) -> None:
        super().__init__(requests, policies=policies, hooks=hooks)
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
        hooks: RequestHooks | None = None,
    ) -> None:
        super().__init__(requests, policies=policies, hooks=hooks)
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
