"""Starting a job: its nodes, their datasets and the tasks it inherits.

A job first waits (state ``waiting``, its reason saying for what) until ``min_nodes`` nodes,
every mandatory node and every node a task names are online, from the nodes' heartbeats,
and fails with the missing nodes written on it once ``node_wait`` seconds have passed. Its
datasets are then found (by id, or by tags through a ListRequest) and the tasks it inherits
are copied from the earlier job.
"""

from __future__ import annotations

import time
from typing import Any

import anyio

from broker_net.messages import ListReply, ListRequest
from researcher.orchestration.lifecycle import State
from researcher.orchestration.spec import JobSpec
from researcher.orchestration.store.job_store import JobStore
from researcher.orchestration.store.records import JobNotFoundError, JobRecord
from researcher.orchestration.task_specs import ALL_NODES
from researcher.requests.policies import DiscardOnTimeout
from researcher.requests.router import Requests


class JobStartError(RuntimeError):
    """Raised when a job cannot start (nodes missing, nothing to inherit, no datasets); the
    message is the reason written on the failed job."""


class JobStart:
    """Starts the jobs of a store over the researcher's request layer.

    Args:
        listen_until: monotonic time before which a job placed on every node keeps
            listening for heartbeats before it fixes its node list.
    """

    def __init__(self, store: JobStore, requests: Requests, *, listen_until: float) -> None:
        self.store = store
        self.requests = requests
        self.listen_until = listen_until

    async def __call__(self, job: JobRecord) -> tuple[list[str], dict[str, str]]:
        """Wait for the job's nodes, find their datasets, record both and copy the
        inherited tasks; return the nodes and each one's dataset id.

        Raises:
            JobStartError: the job cannot start; the message says why.
        """
        nodes = await self._wait_for_nodes(job)
        datasets = await self._find_datasets(job.spec, nodes)
        self.store.set_job_nodes(job.job_id, nodes, datasets)
        self._inherit(job)
        return nodes, datasets

    async def _wait_for_nodes(self, job: JobRecord) -> list[str]:
        conf = job.spec.conf
        named = set(job.spec.named_nodes())
        required = named | set(conf.mandatory_nodes)
        every_node = any(task.nodes == ALL_NODES for task in job.spec.tasks)
        deadline = time.monotonic() + conf.node_wait
        last_reason = ""
        while True:
            now = time.monotonic()
            online = set(self.requests.presence.online_ids())
            nodes = named | online if every_node else named | (required & online)
            missing = sorted(required - online)
            short = conf.min_nodes - len(nodes & online)
            listening = every_node and now < self.listen_until
            if not missing and short <= 0 and not listening and nodes:
                return sorted(nodes)
            problems = []
            if missing:
                problems.append(f"nodes {', '.join(missing)} are offline")
            if short > 0:
                problems.append(f"{len(nodes & online)} of the {conf.min_nodes} nodes needed "
                                "are online")  # fmt: skip
            if not nodes and not problems:
                problems.append("no node is online")
            seen = ", ".join(sorted(online)) or "none"
            if now >= deadline and (problems or not nodes):
                raise JobStartError(
                    f"gave up after waiting {conf.node_wait:g} s for nodes: "
                    f"{'; '.join(problems)} (online: {seen})"
                )
            reason = (
                f"waiting for nodes: {'; '.join(problems)} (online: {seen}); gives up in "
                f"{max(deadline - now, 0):.0f} s"
                if problems
                else "listening for node heartbeats"
            )
            if reason != last_reason:
                self.store.set_job_reason(job.job_id, reason)
                last_reason = reason
            await anyio.sleep(0.1)

    async def _find_datasets(self, spec: JobSpec, nodes: list[str]) -> dict[str, str]:
        selector = spec.datasets
        if selector.ids:
            missing = [node for node in nodes if node not in selector.ids]
            if missing:
                raise JobStartError(f"the spec names no dataset for nodes {missing}")
            return {node: selector.ids[node] for node in nodes}
        fed = await self.requests.request(
            ListRequest(researcher_id=self.requests.researcher_id, tags=selector.tags),
            nodes,
            [DiscardOnTimeout(30)],
        )
        datasets: dict[str, str] = {}
        for node, reply in fed.replies().items():
            if isinstance(reply, ListReply) and reply.datasets:
                datasets[node] = reply.datasets[0].dataset_id
        missing = [node for node in nodes if node not in datasets]
        if missing:
            why = fed.reasons()
            detail = "; ".join(f"{n}: {why.get(n, 'no such dataset')}" for n in missing)
            raise JobStartError(f"no dataset tagged {selector.tags} on nodes {missing} ({detail})")
        return datasets

    def _inherit(self, job: JobRecord) -> None:
        inheritance = job.spec.conf.inheritance
        if inheritance is None:
            return
        copied: list[tuple[str, str, dict[str, Any] | None]] = []
        for name in inheritance.tasks:
            if self.store.task(job.job_id, name).state is State.SUCCESS:
                continue
            try:
                earlier = self.store.task(inheritance.job_id, name)
            except JobNotFoundError as exc:
                raise JobStartError(f"cannot inherit task {name}: {exc}") from exc
            if earlier.state is not State.SUCCESS:
                raise JobStartError(
                    f"cannot inherit task {name} of job {inheritance.job_id}: it is "
                    f"{earlier.state.value}, only succeeded tasks can be inherited"
                )
            # A task inherited in turn points to the job where it really ran.
            copied.append((name, earlier.inherited_from or inheritance.job_id, earlier.outputs))
        for name, origin, outputs in copied:
            self.store.set_task_state(
                job.job_id, name, State.SUCCESS,
                f"inherited from job {inheritance.job_id}: its outputs are reused, not run again",
                inherited_from=origin, outputs=outputs or {},
            )  # fmt: skip
