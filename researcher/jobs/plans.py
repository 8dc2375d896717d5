"""Training plans: submit one for review on every node, or ask whether it is approved."""

from __future__ import annotations

import logging
from collections.abc import Sequence

from broker_net.codes import TrainingPlanStatus
from broker_net.messages import (
    ApprovalReply,
    ApprovalRequest,
    TrainingPlanStatusReply,
    TrainingPlanStatusRequest,
)
from researcher.errors import JobError
from researcher.jobs.base import Job
from researcher.requests.hooks import RequestHooks
from researcher.requests.policies import DiscardOnTimeout, Policy
from researcher.requests.router import Requests

logger = logging.getLogger(__name__)


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
                logger.info("node %s: plan is %s", node, reply.status.value)
        for node in set(self.nodes) - set(replies):
            logger.warning("node %s did not answer the status request", node)
        return replies
