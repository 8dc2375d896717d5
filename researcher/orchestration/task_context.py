"""What one attempt of one task runs with, and how a task says it cannot finish.

:class:`TaskContext` gives a task its requests, store, nodes and datasets, the hooks that
record each request it sends (and resume one an earlier process sent), and where it stores each
node's answers; :class:`TaskError` is a task's failure, its message the reason stored.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from researcher.jobs.monitor import MonitorCallback
from researcher.orchestration.spec import JobSpec
from researcher.orchestration.store.job_store import JobStore
from researcher.orchestration.store.records import NodeResult
from researcher.orchestration.task_specs import TaskSpec
from researcher.requests.federated import FederatedRequest
from researcher.requests.hooks import RequestHooks
from researcher.requests.router import Requests

logger = logging.getLogger(__name__)

Approver = Callable[[str, str], Awaitable[None]]
"""``await approve(node_id, plan_id)``: what a node's operator does to approve a plan.

Simulations approve every plan a job submits this way; real nodes leave it to their
operators (``node-agent plans approve``), and a plan-check task waits for them.
"""


class TaskError(RuntimeError):
    """Raised when a task cannot finish; the message is the reason stored on the task."""


@dataclass
class TaskContext:
    """What one attempt of one task runs with.

    Attributes:
        task: the task, its inputs already filled in.
        nodes: the nodes the task runs on.
        datasets: each node's dataset id.
        approver: approves plans as the nodes' operators would (simulations only).
        monitor: also receives the progress of training rounds, which the store keeps.
    """

    requests: Requests
    store: JobStore
    job_id: str
    spec: JobSpec
    task: TaskSpec
    attempt: int
    nodes: list[str]
    datasets: dict[str, str]
    approver: Approver | None = None
    monitor: MonitorCallback | None = None

    @property
    def node_datasets(self) -> dict[str, str]:
        """Dataset id of each of the task's nodes."""
        missing = [node for node in self.nodes if node not in self.datasets]
        if missing:
            raise TaskError(f"no dataset known for nodes {missing}")
        return {node: self.datasets[node] for node in self.nodes}

    def hooks(self, slot: str) -> RequestHooks:
        """Hooks recording the request of ``slot``, resuming it when an earlier process of
        this same attempt sent it.

        Nodes the earlier request reached and that had not answered are waited for (their
        replies are in the durable reply queue); nodes that had answered are asked again
        under the same request id, and answer from the reply they stored, without running
        the work twice.
        """
        store, job_id, name, attempt = self.store, self.job_id, self.task.name, self.attempt
        earlier = store.in_flight(job_id, name, attempt, slot)
        request_id, already_sent = None, None
        if earlier is not None:
            request_id = earlier.request_id
            already_sent = {
                node: at
                for node, at in earlier.sent_at.items()
                if node not in earlier.answered and node in self.nodes
            }
            logger.info("task %s resumes request %s (%s): waiting for %s", name, request_id,
                        slot, sorted(already_sent))  # fmt: skip
        return RequestHooks(
            request_id=request_id,
            already_sent=already_sent,
            on_sending=lambda rid, nodes: store.record_request(
                job_id, name, attempt, slot, rid, nodes
            ),
            on_sent=store.record_sent,
            on_answer=store.record_answer,
        )

    def record(self, fed: FederatedRequest | None, slot: str) -> None:
        """Store each node's answer to a finished request."""
        if fed is None:
            return
        self.store.add_node_results(
            self.job_id, self.task.name, self.attempt, slot, 0, node_results(fed)
        )

    def progress(self, reason: str, **values: Any) -> None:
        """Say what the task is doing."""
        self.store.set_task_progress(self.job_id, self.task.name, values, reason)


def node_results(fed: FederatedRequest) -> list[NodeResult]:
    """Each node's status, reason and times in a finished request."""
    statuses, reasons, timings = fed.status(), fed.reasons(), fed.timings()
    replies = fed.replies()
    results = []
    for node in fed.nodes:
        timing = timings[node]
        reply = replies.get(node)
        results.append(
            NodeResult(
                node_id=node, request_id=fed.request_id, status=statuses[node].value,
                reason=reasons.get(node, ""), sent_at=timing.sent_at,
                round_trip=timing.round_trip, processing=timing.processing,
                queue_and_transit=timing.queue_and_transit,
                sample_size=getattr(reply, "sample_size", None),
                metrics=dict(getattr(reply, "metrics", {}) or {}) or None,
            )
        )  # fmt: skip
    return results


def reasons(fed: FederatedRequest | None) -> str:
    """Why nodes failed a request, one ``node: reason`` each, for a task's error."""
    if fed is None:
        return "no request was sent"
    reasons = fed.reasons()
    errors = fed.errors()
    parts = [f"{node}: {reason}" for node, reason in reasons.items()]
    parts += [f"{n}: {e.code.name} {e.message}" for n, e in errors.items() if n not in reasons]
    return "; ".join(parts) or "no reason given"
