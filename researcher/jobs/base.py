"""Jobs: one federated request each, with the argument checks and error handling of the job.

Every job is created just before use and awaited once::

    replies = await FARequestJob(requests, experiment_id="exp", fa_id="fa1",
                                 datasets={"n1": "dataset_1"}, stats=["mean"]).execute()

:class:`Job` is the base of the jobs of :mod:`researcher.jobs.analytics`,
:mod:`researcher.jobs.preprocessing`, :mod:`researcher.jobs.training` and
:mod:`researcher.jobs.plans`.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

from broker_net.messages import ErrorMessage
from researcher.errors import NodeErrorReply, NodeErrors
from researcher.requests.federated import FederatedRequest
from researcher.requests.hooks import RequestHooks
from researcher.requests.policies import Policy
from researcher.requests.router import Requests

logger = logging.getLogger(__name__)


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
        async with self.requests.send(
            messages, nodes, self.policies, request_id=request_id, hooks=self.hooks
        ) as fed:
            self.request = fed
        return fed


def raise_all_errors(errors: Mapping[str, ErrorMessage]) -> None:
    """Log every node error, then raise them all as one :class:`NodeErrors`."""
    for node, error in errors.items():
        logger.error("node %s error %s: %s", node, error.code.name, error.message)
    if errors:
        raise NodeErrors(errors)


def raise_first_error(errors: Mapping[str, ErrorMessage]) -> None:
    """Log every node error, then raise the first as a :class:`NodeErrorReply`."""
    for node, error in errors.items():
        logger.error("node %s error %s: %s", node, error.code.name, error.message)
    if errors:
        raise NodeErrorReply(next(iter(errors.values())))


def why_no_reply(fed: FederatedRequest) -> str:
    """Why the nodes of ``fed`` gave no reply, node by node."""
    reasons = fed.reasons()
    return "; ".join(f"{node}: {reason}" for node, reason in reasons.items()) or "no reason given"
