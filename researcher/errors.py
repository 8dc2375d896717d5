"""Errors raised on the researcher side; each names the node and request it concerns."""

from __future__ import annotations

from collections.abc import Mapping

from broker_net.errors import BrokerNetError
from broker_net.messages import ErrorMessage


class RequestError(BrokerNetError):
    """Raised when a federated request or job fails.

    Attributes:
        node_id: the node concerned, when one is.
        request_id: the request concerned, when one is.
    """

    def __init__(
        self, message: str, *, node_id: str | None = None, request_id: str | None = None
    ) -> None:
        super().__init__(message)
        self.node_id = node_id
        self.request_id = request_id


class NodeErrorReply(RequestError):
    """Raised when a node answered with an ErrorMessage and the caller treats it as fatal."""

    def __init__(self, error: ErrorMessage) -> None:
        super().__init__(
            f"node {error.node_id} answered {error.code.name}: {error.message}",
            node_id=error.node_id,
            request_id=error.request_id,
        )
        self.error = error


class RequestTimeoutError(RequestError, TimeoutError):
    """Raised when nodes did not answer in time and the caller needed their answers."""


class NodesMissingError(RequestTimeoutError):
    """Raised when nodes a caller waits for are not seen online in time.

    Attributes:
        missing: the node ids never seen online.
    """

    def __init__(self, missing: list[str], timeout: float) -> None:
        super().__init__(
            f"node(s) {', '.join(missing)} not online after {timeout:g} s: no heartbeat heard"
        )
        self.missing = missing


class NoReplyError(RequestError):
    """Raised when a job got no usable reply from any node."""


class JobError(RequestError):
    """Raised when a job's arguments or results are not usable."""


class NodeErrors(NodeErrorReply, JobError):
    """Raised when nodes answered errors and the job treats them as fatal: it names them all.

    Attributes:
        errors: each failing node's error, by node id, in node order.
        error: the first of them (as :class:`NodeErrorReply` has it); ``node_id`` is its node.
    """

    def __init__(self, errors: Mapping[str, ErrorMessage]) -> None:
        if not errors:
            raise ValueError("NodeErrors needs at least one error")
        ordered = dict(sorted(errors.items()))
        described = [
            f"node {node} answered {e.code.name}: {e.message}" for node, e in ordered.items()
        ]
        message = described[0]
        if len(ordered) > 1:
            message = f"{len(ordered)} nodes answered errors: " + "; ".join(described)
        node, first = next(iter(ordered.items()))
        RequestError.__init__(self, message, node_id=node, request_id=first.request_id)
        self.error = first
        self.errors = ordered


class SecureAggregationError(RequestError):
    """Raised when secure aggregation cannot be set up, or a round cannot be unmasked (a
    node refused a step, or too few nodes are left)."""
