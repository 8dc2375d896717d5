"""Asynchronous federated training, FedBuff (Nguyen et al. 2022) over the network.

::

    experiment = BufferedExperiment(
        requests, plan=MyPlan, datasets={"n1": "d1", "n2": "d2", "n3": "d3"},
        settings=FedBuffSettings(buffer_size=2, server_learning_rate=1.0, max_staleness=4),
        stop=StopWhen(max_versions=20, time_budget=600),
    )
    result = await experiment.run()

Each node of the pool has exactly one training request in flight, a request of its own (one
node each, through :meth:`Requests.send <researcher.requests.router.Requests.send>`) that
carries the newest model and its ``model_version``; the node echoes that version in its reply.
As each reply arrives its update goes to :class:`~researcher.jobs.fedbuff.FedBuffServer`
(dropped when too stale, else buffered; every K updates a new version is published) and the
node at once gets new work on the newest version. Nobody waits for the slowest node.

The pool follows presence: a node of ``datasets`` that is online (its heartbeats on time) joins
and gets work on the current version; a node whose request times out, that disconnects
(:class:`~researcher.requests.policies.StopOnDisconnect`) or answers an error leaves the pool,
its update lost and named, and rejoins after a heartbeat newer than its departure. Training
ends at :class:`~researcher.jobs.buffered_records.StopWhen`; the requests still in flight are
then cancelled on their nodes. Secure aggregation is refused: its pairwise masks cancel only
in the sum over a fixed cohort, and a buffer has none.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from typing import Any

import anyio
import anyio.abc
import numpy as np
import numpy.typing as npt

from broker_net.message_base import new_id
from broker_net.messages import TrainReply, TrainRequest
from researcher.jobs.buffered_records import (
    SECAGG_REFUSED,
    BufferedResult,
    StopWhen,
    UpdateRecord,
    UpdateStatus,
    VersionRecord,
)
from researcher.jobs.fedbuff import (
    FedBuffServer,
    FedBuffSettings,
    PublishedVersion,
    buffer_metrics,
)
from researcher.jobs.monitor import MonitorCallback, ProgressMonitor, monitored, monitoring
from researcher.jobs.node_pool import NodePool
from researcher.requests.cancel_answers import await_cancel_answers
from researcher.requests.federated import FederatedRequest
from researcher.requests.hooks import RequestHooks
from researcher.requests.policies import DiscardOnTimeout, RequestStatus, StopOnDisconnect
from researcher.requests.router import Requests
from training_plans.plan import TrainingPlan, plan_source

logger = logging.getLogger(__name__)

Params = dict[str, npt.NDArray[np.float64]]


class BufferedExperiment:
    """FedBuff training of a training plan over the nodes of ``datasets``.

    Args:
        requests: a started :class:`Requests`.
        plan: the training plan class; its source is sent to the nodes.
        datasets: each node's dataset id: the nodes that may join the pool.
        settings: the server's buffer size, learning rate, staleness weighting and limit.
        stop: when training ends.
        request_timeout: seconds a node may take to answer one request.
        disconnect_grace: seconds a node may be gone before its request is given up.
        evaluate: each version's parameters -> metrics, joined to the version's metrics.
        hooks: the :class:`RequestHooks` of each request, by id (to record or resume it).
        monitor: called with each node's progress as it trains (:mod:`researcher.jobs.monitor`).
        on_update: called with each request's record once its fate is settled.
        on_version: called with each version's record, parameters and applied updates.
        on_send: called with each request id, node and base version before it is sent.
        initial_version, history: resume at this version (``initial_params``) and earlier ones.
        retry_delay: seconds a node that left the pool waits before it may rejoin.
        elapsed: seconds of training an earlier process spent (counts against the budget).
        secagg: refused with a ValueError (see the module's description).
    """

    def __init__(
        self,
        requests: Requests,
        *,
        plan: type[TrainingPlan],
        datasets: Mapping[str, str],
        settings: FedBuffSettings,
        stop: StopWhen,
        training_args: Mapping[str, Any] | None = None,
        model_args: Mapping[str, Any] | None = None,
        state_ids: Mapping[str, str | None] | None = None,
        request_timeout: float = 600.0,
        disconnect_grace: float = 5.0,
        experiment_id: str | None = None,
        initial_params: Mapping[str, npt.NDArray[Any]] | None = None,
        initial_version: int = 0,
        history: Mapping[int, Mapping[str, npt.NDArray[Any]]] | None = None,
        source: str | None = None,
        evaluate: Callable[[Params], Mapping[str, float]] | None = None,
        hooks: Callable[[str], RequestHooks | None] | None = None,
        monitor: MonitorCallback | None = None,
        on_update: Callable[[UpdateRecord], None] | None = None,
        on_version: Callable[[VersionRecord, Params, list[UpdateRecord]], None] | None = None,
        on_send: Callable[[str, str, int], None] | None = None,
        retry_delay: float = 1.0,
        elapsed: float = 0.0,
        secagg: bool = False,
    ) -> None:
        if secagg:
            raise ValueError(SECAGG_REFUSED)
        if not datasets:
            raise ValueError("asynchronous training needs at least one node dataset")
        self.requests = requests
        self.plan = plan
        self.source = source if source is not None else plan_source(plan)
        self.datasets = dict(datasets)
        self.stop = stop
        self.training_args = dict(training_args or {})
        self.model_args = dict(model_args or {})
        self.state_ids = dict(state_ids or {})
        self.request_timeout = request_timeout
        self.disconnect_grace = disconnect_grace
        self.experiment_id = experiment_id or new_id("experiment")
        self.evaluate = evaluate
        self.hooks = hooks
        self.monitor = ProgressMonitor(monitor) if monitor is not None else None
        self.on_update, self.on_version, self.on_send = on_update, on_version, on_send
        if initial_params is None:
            initial_params = _initial_params(plan, self.model_args)
        self.server = FedBuffServer(
            settings, initial_params, initial_version=initial_version, history=history
        )
        self.result = BufferedResult(self.experiment_id, self.server.params, self.server.version)
        self.pool = NodePool(self.datasets, requests.presence, retry_delay)
        self._buffered: dict[str, UpdateRecord] = {}
        self._cancelled: set[str] = set()
        self._done = anyio.Event()
        self._elapsed = elapsed
        self._started = 0.0

    async def run(self, resume: Mapping[str, tuple[str, int]] | None = None) -> BufferedResult:
        """Train until a stop condition is met; return every version and update.

        Args:
            resume: requests an earlier process sent and did not settle, by id: the node and
                version of each. Their nodes take them up first, in order (``hooks(id)`` says
                what reached the node).
        """
        self._started = time.monotonic() - self._elapsed
        if (reached := self.stop.reached(self.server.version, {})) is not None:
            self.result.stopped_because = reached  # e.g. resumed after the last version
            for request_id, (node, version) in (resume or {}).items():
                self._settle(UpdateRecord(request_id, node, version, UpdateStatus.CANCELLED),
                             UpdateStatus.CANCELLED, "training had ended")  # fmt: skip
            return self.result
        budget = self.stop.time_budget
        left = float("inf") if budget is None else budget - self._elapsed
        try:
            async with monitoring(self.monitor):
                with anyio.move_on_after(left) as scope:
                    async with anyio.create_task_group() as group:
                        for node, pending in _by_node(resume or {}).items():
                            self.pool.join(node)
                            group.start_soon(self._work, node, pending)
                        group.start_soon(self._watch_pool, group)
                        await self._done.wait()
                        group.cancel_scope.cancel()
            if scope.cancelled_caught:
                self.result.stopped_because = f"the time budget of {budget:g} s is spent"
        finally:  # also when the task running training is cancelled (stopped, timed out)
            for record in self._buffered.values():
                self._settle(
                    record, UpdateStatus.UNAPPLIED, "training ended before the buffer filled"
                )
            self._buffered.clear()
            with anyio.CancelScope(shield=True):
                await await_cancel_answers(self.requests, self._cancelled, DRAIN_TIMEOUT)
        self.result.params, self.result.version = self.server.params, self.server.version
        logger.info("asynchronous training %s ended at version %d: %s", self.experiment_id,
                    self.server.version, self.result.stopped_because)  # fmt: skip
        return self.result

    def _end(self, why: str) -> None:
        if not self._done.is_set():
            self.result.stopped_because = why
            self._done.set()

    async def _watch_pool(self, group: anyio.abc.TaskGroup) -> None:
        """Give work to each node that joins the pool; end training when it stays empty."""
        while True:
            now = time.monotonic()
            for node in self.pool.joiners(now):
                logger.info("node %s joins the pool at version %d", node, self.server.version)
                self.pool.join(node)
                group.start_soon(self._work, node, list[tuple[str, int]]())
            if self.pool.empty_for(now) >= self.stop.node_wait:
                self._end(f"no node was available for {self.stop.node_wait:g} s")
                return
            await anyio.sleep(self.requests.presence_check_interval)

    async def _work(self, node: str, resumed: list[tuple[str, int]]) -> None:
        """Keep one request in flight on ``node`` until it leaves the pool or training ends;
        first the requests an earlier process left in flight there."""
        try:
            while not self._done.is_set():
                request_id, version = (
                    resumed.pop(0) if resumed else (new_id("request"), self.server.version)
                )
                if not await self._train_once(node, request_id, version):
                    return
        finally:
            self.pool.leave(node, failed=not self._done.is_set())
            status = UpdateStatus.CANCELLED if self._done.is_set() else UpdateStatus.LOST
            for request_id, version in resumed:
                record = UpdateRecord(request_id, node, version, status)
                self._settle(record, status, f"node {node} left before this request resumed")

    async def _train_once(self, node: str, request_id: str, version: int) -> bool:
        """Send one request, wait for it and take its update; False when the node leaves."""
        params = self.server.versions.get(version)
        if params is None:  # a resumed request on a version too old to apply anyway
            record = UpdateRecord(request_id, node, version, UpdateStatus.STALE)
            self._settle(record, UpdateStatus.STALE, f"version {version} is no longer kept")
            return True
        if self.on_send is not None:
            self.on_send(request_id, node, version)
        message = TrainRequest(
            request_id=request_id, researcher_id=self.requests.researcher_id,
            experiment_id=self.experiment_id, round=version, training_plan=self.source,
            training_plan_class=self.plan.__name__, params=params,
            training_args=self.training_args, model_args=self.model_args,
            dataset_id=self.datasets[node], state_id=self.state_ids.get(node),
            model_version=version,
        )  # fmt: skip
        policies = [DiscardOnTimeout(self.request_timeout), StopOnDisconnect(self.disconnect_grace)]
        hooks = monitored(self.hooks(request_id) if self.hooks else None, self.monitor)
        fed = self.requests.send(message, [node], policies, hooks=hooks)
        try:
            async with fed:
                pass
        except anyio.get_cancelled_exc_class():
            self._cancelled.add(request_id)
            record = UpdateRecord(request_id, node, version, UpdateStatus.CANCELLED)
            self._settle(record, UpdateStatus.CANCELLED, "training ended while the node trained")
            raise
        return self._take(node, version, fed)

    def _take(self, node: str, version: int, fed: FederatedRequest) -> bool:
        timing = fed.timings().get(node)
        base = UpdateRecord(
            fed.request_id, node, version, UpdateStatus.LOST,
            sent_at=timing.sent_at if timing else None,
            round_trip=timing.round_trip if timing else None,
        )  # fmt: skip
        reply, why = _usable_reply(node, version, fed)
        if reply is None or reply.params is None or reply.sample_size is None:
            self._settle(base, UpdateStatus.LOST, why)
            return False
        record = _with(base, sample_size=reply.sample_size, metrics=dict(reply.metrics))
        self.pool.answered(node)
        if self._done.is_set():
            self._settle(record, UpdateStatus.UNAPPLIED, "training ended before the buffer filled")
            return False
        arrival, published = self.server.receive(
            fed.request_id, node, version, reply.params, reply.sample_size, reply.metrics
        )
        record = _with(record, staleness=arrival.staleness)
        if arrival.dropped:
            limit = self.server.settings.max_staleness
            why = f"node {node}: staleness {arrival.staleness} is over {limit}"
            self._settle(record, UpdateStatus.STALE, why)
            return True
        self._buffered[fed.request_id] = record
        if published is not None:
            self._publish(published)
        return True

    def _publish(self, published: PublishedVersion) -> None:
        applied = [_with(self._buffered.pop(u.key), status=UpdateStatus.APPLIED, weight=u.weight,
                         applied_in=published.version) for u in published.applied]  # fmt: skip
        metrics = buffer_metrics(published.applied)
        if self.evaluate is not None:
            metrics.update(self.evaluate(published.params))
        version = VersionRecord(
            version=published.version, metrics=metrics,
            updates=[u.key for u in published.applied],
            nodes=[u.node_id for u in published.applied],
            staleness=[u.staleness for u in published.applied],
            elapsed=time.monotonic() - self._started,
        )  # fmt: skip
        self.result.versions.append(version)
        self.result.updates.extend(applied)
        self.result.params, self.result.version = published.params, published.version
        logger.info("version %d from %s: %s", version.version, version.nodes, metrics)
        if self.on_version is not None:
            self.on_version(version, published.params, applied)
        if (reached := self.stop.reached(published.version, metrics)) is not None:
            self._end(reached)

    def _settle(self, record: UpdateRecord, status: UpdateStatus, reason: str) -> None:
        settled = _with(record, status=status, reason=reason)
        if status is UpdateStatus.LOST:
            logger.warning("update %s lost: %s", record.request_id, reason)
        self.result.updates.append(settled)
        if self.on_update is not None:
            self.on_update(settled)


DRAIN_TIMEOUT = 5.0
"""Seconds training waits, once over, for the nodes' answers to the requests it cancelled and
to the cancels (:func:`~researcher.requests.cancel_answers.await_cancel_answers`)."""


def _initial_params(plan: type[TrainingPlan], model_args: Mapping[str, Any]) -> Params:
    model = plan()
    model.init_model(dict(model_args))
    return dict(model.get_params())


def _usable_reply(node: str, version: int, fed: FederatedRequest) -> tuple[TrainReply | None, str]:
    """``node``'s reply when it holds an update of ``version``, else why the update is lost."""
    reply = fed.replies().get(node)
    status = fed.status().get(node, RequestStatus.STOPPED)
    if not isinstance(reply, TrainReply) or status is not RequestStatus.SUCCESS:
        return None, f"node {node}: {fed.reasons().get(node) or status.value}"
    if not reply.success or not reply.params or not reply.sample_size:
        return None, f"node {node}: {reply.msg or 'no update'}"
    if reply.model_version != version:
        return None, f"node {node} answered for version {reply.model_version}, not {version}"
    return reply, ""


def _by_node(resume: Mapping[str, tuple[str, int]]) -> dict[str, list[tuple[str, int]]]:
    """The resumed requests of each node, oldest version first."""
    found: dict[str, list[tuple[str, int]]] = {}
    for request_id, (node, version) in resume.items():
        found.setdefault(node, []).append((request_id, version))
    return {node: sorted(pending, key=lambda p: p[1]) for node, pending in found.items()}


def _with(record: UpdateRecord, **changes: Any) -> UpdateRecord:
    values = {**vars(record), **changes}
    return UpdateRecord(**values)
