"""Prediction: a trained model run on each node's dataset, the predictions kept on the nodes.

::

    result = await PredictionJob(requests, experiment_id="predict-1", plan=MyPlan,
                                 params=trained, datasets={"n1": "dataset_..."}).execute()
    for node, reply in result.replies.items():
        print(node, reply.prediction_dataset_id, reply.n_rows, reply.summary)

Each node answers the id of the new dataset that holds its predictions and their summary
(rows, per-class counts or mean and standard deviation); the predictions never leave it. With
``encrypt_params`` the model is encrypted for each node, bound to the experiment, round, node
and request id, as training parameters are (:mod:`researcher.jobs.payloads`).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from broker_net.crypto.identities import UnknownKeyError
from broker_net.crypto.payloads import PayloadBinding
from broker_net.message_base import new_id
from broker_net.prediction_messages import PredictReply, PredictRequest
from researcher.errors import JobError
from researcher.jobs.base import Job
from researcher.requests.federated import MessagesByNode
from researcher.requests.hooks import RequestHooks
from researcher.requests.ledger import NodeTiming
from researcher.requests.policies import DiscardOnTimeout, Policy
from researcher.requests.router import Requests
from training_plans.plan import TrainingPlan, plan_source

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class PredictionResult:
    """Each node's answer (its prediction dataset and summary), the nodes that failed and why,
    and timings."""

    replies: dict[str, PredictReply]
    failed: dict[str, str]
    timings: dict[str, NodeTiming]
    request_id: str

    @property
    def n_rows(self) -> int:
        """Rows predicted over every node that answered."""
        return sum(reply.n_rows for reply in self.replies.values())


class PredictionJob(Job):
    """One prediction request to every node of ``datasets``.

    Args:
        plan: the training plan class, or give its ``source`` and ``plan_class`` name.
        params: the trained model's parameters.
        datasets: the dataset id to predict on, on each node.
        job_id, model, round: which model it is, kept in each prediction dataset's provenance
            (``round`` also binds encrypted parameters).
        state_ids: each node's preprocessing state to read the dataset through.
        encrypt_params: encrypt the model for each node (needs the researcher's security).

    Nodes that answer an error or time out are in ``failed`` with the reason.
    """

    default_policies: Sequence[Policy] = (DiscardOnTimeout(600),)

    def __init__(
        self,
        requests: Requests,
        *,
        experiment_id: str,
        params: Mapping[str, Any],
        datasets: Mapping[str, str],
        plan: type[TrainingPlan] | None = None,
        source: str | None = None,
        plan_class: str | None = None,
        model_args: Mapping[str, Any] | None = None,
        state_ids: Mapping[str, str | None] | None = None,
        job_id: str = "",
        model: str = "",
        round: int = 0,
        encrypt_params: bool = False,
        policies: Sequence[Policy] | None = None,
        hooks: RequestHooks | None = None,
    ) -> None:
        super().__init__(requests, policies=policies, hooks=hooks)
        if not datasets:
            raise JobError("no node datasets given")
        if plan is None and (source is None or plan_class is None):
            raise JobError("give the plan class, or its source and class name")
        self.source = source if source is not None else plan_source(plan)  # type: ignore[arg-type]
        self.plan_class = plan_class or (plan.__name__ if plan else "")
        self.experiment_id = experiment_id
        self.params = dict(params)
        self.datasets = dict(datasets)
        self.model_args = dict(model_args or {})
        self.state_ids = dict(state_ids or {})
        self.job_id, self.model, self.round = job_id, model, round
        self.encrypt_params = encrypt_params

    def messages(self, request_id: str) -> MessagesByNode:
        """The request for each node, its parameters encrypted for it when asked.

        Raises:
            JobError: encryption without security, or for an untrusted node.
        """
        messages: dict[str, PredictRequest] = {}
        for node, dataset_id in self.datasets.items():
            message = PredictRequest(
                request_id=request_id, researcher_id=self.researcher_id,
                experiment_id=self.experiment_id, job_id=self.job_id, model=self.model,
                round=self.round, training_plan=self.source, training_plan_class=self.plan_class,
                params=self.params, model_args=self.model_args, dataset_id=dataset_id,
                state_id=self.state_ids.get(node),
            )  # fmt: skip
            messages[node] = self._sealed(message, node) if self.encrypt_params else message
        return MessagesByNode(messages)

    async def execute(self) -> PredictionResult:
        """Send the request and sort the answers from the failures."""
        request_id = (self.hooks.request_id if self.hooks else None) or new_id("request")
        fed = await self._send(self.messages(request_id), list(self.datasets),
                               request_id=request_id)  # fmt: skip
        failed = dict(fed.reasons())
        replies: dict[str, PredictReply] = {}
        for node, reply in fed.replies().items():
            if reply.success:
                replies[node] = reply
            else:
                failed[node] = reply.msg or "the node reported a failed prediction"
        for node, reason in failed.items():
            logger.warning("prediction: node %s failed: %s", node, reason)
        return PredictionResult(replies, failed, fed.timings(), fed.request_id)

    def _sealed(self, message: PredictRequest, node: str) -> PredictRequest:
        security = self.requests.security
        if security is None:
            raise JobError("encrypted parameters need the researcher's security (identity, trust)")
        try:
            recipient = security.trust.get(node)
        except UnknownKeyError as exc:
            raise JobError(f"cannot encrypt for an untrusted node: {exc}") from exc
        binding = PayloadBinding(message.experiment_id, message.round, node, message.request_id)
        sealed = binding.seal(security.identity, recipient, "params", message.params)
        return message.model_copy(update={"params": sealed, "encrypt_params": True})
