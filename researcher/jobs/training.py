"""Training: one training (or validation-only) round on every node."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from broker_net.crypto.encryption import DecryptionError
from broker_net.crypto.identities import UnknownKeyError
from broker_net.message_base import new_id
from broker_net.messages import TrainReply, TrainRequest
from researcher.errors import JobError
from researcher.jobs.base import Job
from researcher.jobs.payloads import open_reply, seal_request
from researcher.requests.federated import MessagesByNode
from researcher.requests.hooks import RequestHooks
from researcher.requests.ledger import NodeTiming
from researcher.requests.policies import Policy
from researcher.requests.router import Requests

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainingResult:
    """One training round: successful replies, nodes that failed and why, and timings."""

    replies: dict[str, TrainReply]
    failed: dict[str, str]
    timings: dict[str, NodeTiming]
    request_id: str


class TrainingJob(Job):
    """One training (or validation-only) round on every node.

    ``node_training_args`` overrides ``training_args`` on the nodes it names.

    Nodes that answer an error, time out or send ``success=False`` are listed in
    ``failed`` with the reason; the caller decides whether the round is still usable.

    ``encrypt_aux_var`` encrypts each node's ``optim_aux_var`` for that node, and
    ``encrypt_params`` the parameters (both need the researcher's security); each payload is
    bound to the experiment, round, node and request id (see :mod:`researcher.jobs.payloads`).
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
        node_training_args: Mapping[str, Mapping[str, Any]] | None = None,
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
        self.node_training_args = {k: dict(v) for k, v in (node_training_args or {}).items()}
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
                    training_args={**self.training_args, **self.node_training_args.get(node, {})},
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
