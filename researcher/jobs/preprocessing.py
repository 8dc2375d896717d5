"""Preprocessing: one step of a preprocessing method on every node."""

from __future__ import annotations

import copy
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from broker_net.codes import PreprocStep, PreprocType
from broker_net.messages import ErrorMessage, PreprocReply, PreprocRequest
from researcher.errors import JobError
from researcher.jobs.base import Job
from researcher.requests.federated import MessagesByNode
from researcher.requests.hooks import RequestHooks
from researcher.requests.policies import Policy
from researcher.requests.router import Requests

logger = logging.getLogger(__name__)


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
