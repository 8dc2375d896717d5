"""Warm plan workers: one sandboxed process kept between the rounds of an experiment.

Starting a worker (a Python interpreter, numpy, the codec, the plan's module) costs more than a
round of a small model. :class:`PlanWorkers` keeps a worker per (researcher, experiment,
dataset, plan) and sends it the next round's job, so the plan is loaded and built once. Each
worker has the same sandbox as a fresh one (:mod:`node_agent.sandbox`). The pool is bounded:

- at most ``size`` workers; a new key takes the place of the least recently used idle one, and
  when every worker is busy the round runs in a fresh process that is not kept;
- a worker is killed after ``idle_timeout`` seconds unused, after ``max_rounds`` rounds or when
  its processes' resident memory passes ``max_rss`` (the next round starts a fresh one);
- a worker whose round failed, timed out or was cancelled is killed, never reused;
- revoking a plan's approval kills its workers at once (:meth:`PlanWorkers.revoke`, called by
  the plan registry), and a background check every ``check_interval`` seconds kills workers of
  plans no longer allowed (an operator's change from another process).
"""

from __future__ import annotations

import logging
import threading
import time
import weakref
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import anyio
import anyio.to_thread

from broker_net.codes import TrainingPlanStatus
from node_agent.context import NodeContext
from node_agent.plan_process import PlanProcess, ProgressCallback
from node_agent.plans import PlanNotFoundError, PlanRegistry
from node_agent.sandbox import SandboxPolicy, detect_isolation

logger = logging.getLogger(__name__)

WorkerKey = tuple[Hashable, ...]
"""What a warm worker serves: the same key reuses it."""


class WorkerTimeoutError(TimeoutError):
    """The round ran past its deadline; its worker has been killed."""


@dataclass(eq=False)
class _Worker:
    key: WorkerKey
    plan_id: str
    process: PlanProcess
    kept: bool = True
    busy: bool = True
    rounds: int = 0
    last_used: float = field(default_factory=time.monotonic)


@dataclass(frozen=True)
class WorkerInfo:
    """A warm worker, as :meth:`PlanWorkers.workers` shows it."""

    key: WorkerKey
    plan_id: str
    pid: int
    rounds: int
    busy: bool


class PlanWorkers:
    """A bounded pool of warm plan workers (see the module docs). Thread-safe; :meth:`close` it.

    Args:
        policy: the sandbox of every worker.
        size: most workers kept at once; 0 keeps none (every round in a fresh process).
        allowed: ``allowed(plan_id)`` tells whether a plan may still run; workers of plans
            that may not are killed by the background check.
    """

    def __init__(
        self,
        policy: SandboxPolicy,
        *,
        size: int = 2,
        idle_timeout: float = 300.0,
        max_rounds: int = 100,
        max_rss: int = 2 * 1024**3,
        allowed: Callable[[str], bool] | None = None,
        check_interval: float = 2.0,
    ) -> None:
        self.policy = policy
        self.size = size
        self.idle_timeout = idle_timeout
        self.max_rounds = max_rounds
        self.max_rss = max_rss
        self._allowed = allowed
        self._check_interval = check_interval
        self._lock = threading.Lock()
        self._workers: list[_Worker] = []
        self._closed = threading.Event()
        self._checker: threading.Thread | None = None

    def workers(self) -> list[WorkerInfo]:
        """The workers kept now."""
        with self._lock:
            return [
                WorkerInfo(w.key, w.plan_id, w.process.pid, w.rounds, w.busy) for w in self._workers
            ]

    async def run(
        self, key: WorkerKey, plan_id: str, job: bytes, *, timeout: float,
        on_progress: ProgressCallback | None = None,
    ) -> tuple[dict[str, Any], str]:  # fmt: skip
        """Run one encoded job on the warm worker of ``key`` (started if needed); the plan's
        progress goes to ``on_progress``, called from a worker thread.

        Returns:
            The worker's result and what it printed during the round (head and tail).

        Raises:
            WorkerTimeoutError: the round (with the worker's start) took over ``timeout`` s.
            WorkerLostError: the worker died or broke the protocol.
        """
        worker = self._checkout(key)
        try:
            with anyio.fail_after(timeout):
                if worker is None:
                    isolation = await anyio.to_thread.run_sync(detect_isolation, self.policy)
                    cpu = self.policy.cpu_seconds(timeout, self.max_rounds)
                    process = PlanProcess.start(self.policy, isolation, cpu_seconds=cpu)
                    worker = self._adopt(key, plan_id, process)
                result = await anyio.to_thread.run_sync(
                    worker.process.exchange, job, on_progress, abandon_on_cancel=True
                )
        except TimeoutError:
            if worker is not None:
                await self._discard(worker)
            raise WorkerTimeoutError(f"the round ran longer than {timeout:g} s") from None
        except BaseException:
            if worker is not None:
                await self._discard(worker)
            raise
        if not (result.get("ok") and _well_formed(result)):
            await self._discard(worker)  # and then all it printed has arrived
            return result, worker.process.output(wait=1.0)
        output = worker.process.output()
        await self._release(worker)
        return result, output

    def _checkout(self, key: WorkerKey) -> _Worker | None:
        with self._lock:
            for worker in self._workers:
                if worker.key == key and not worker.busy and worker.process.alive:
                    worker.busy = True
                    return worker
        return None

    def _adopt(self, key: WorkerKey, plan_id: str, process: PlanProcess) -> _Worker:
        worker = _Worker(key, plan_id, process)
        evicted: list[_Worker] = []
        with self._lock:
            self._workers = [w for w in self._workers if w.busy or w.process.alive]
            if self._closed.is_set() or self.size == 0:
                worker.kept = False
            elif len(self._workers) >= self.size:
                idle = [w for w in self._workers if not w.busy]
                if idle:
                    oldest = min(idle, key=lambda w: w.last_used)
                    self._workers.remove(oldest)
                    evicted.append(oldest)
                else:
                    worker.kept = False
            if worker.kept:
                self._workers.append(worker)
                self._start_checker()
        for old in evicted:
            logger.info("plan worker %d makes room for a new experiment", old.process.pid)
            old.process.kill()
        return worker

    async def _release(self, worker: _Worker) -> None:
        worker.rounds += 1
        worker.last_used = time.monotonic()
        reason = ""
        if not worker.kept:
            reason = "not kept"
        elif worker.rounds >= self.max_rounds:
            reason = f"served {worker.rounds} rounds"
        else:
            rss = await anyio.to_thread.run_sync(worker.process.rss)
            if rss > self.max_rss:
                reason = f"uses {rss // 2**20} MiB"
        if reason:
            logger.info("plan worker %d is replaced: %s", worker.process.pid, reason)
            await self._discard(worker)
            return
        with self._lock:
            worker.busy = False
            if self._closed.is_set():
                reason = "closed"
        if reason:
            await self._discard(worker)

    async def _discard(self, worker: _Worker) -> None:
        with self._lock:
            if worker in self._workers:
                self._workers.remove(worker)
        await worker.process.akill()

    def revoke(self, plan_id: str | None) -> None:
        """Kill the workers of ``plan_id`` now (all of them, and close the pool, for None)."""
        if plan_id is None:
            self.close()
            return
        self._kill(lambda w: w.plan_id == plan_id, "its approval was revoked")

    def close(self) -> None:
        """Kill every worker, busy or not; later rounds run in fresh processes."""
        self._closed.set()
        self._kill(lambda w: True, "the agent stops")

    def _kill(self, condition: Callable[[_Worker], bool], why: str) -> None:
        with self._lock:
            doomed = [w for w in self._workers if condition(w)]
            self._workers = [w for w in self._workers if w not in doomed]
        for worker in doomed:
            logger.info("plan worker %d is killed: %s", worker.process.pid, why)
            worker.process.kill()

    def _start_checker(self) -> None:
        if self._checker is None or not self._checker.is_alive():
            self._checker = threading.Thread(
                target=self._check_loop, name="plan-workers", daemon=True
            )
            self._checker.start()

    def _check_loop(self) -> None:
        while not self._closed.wait(self._check_interval):
            self._kill(partial(_idle_since_before, time.monotonic() - self.idle_timeout), "idle")
            if self._allowed is not None:
                with self._lock:
                    plans = {w.plan_id for w in self._workers}
                for plan_id in plans:
                    if not self._still_allowed(plan_id):
                        self.revoke(plan_id)
            with self._lock:
                if not self._workers:
                    self._checker = None
                    return

    def _still_allowed(self, plan_id: str) -> bool:
        assert self._allowed is not None
        try:
            return self._allowed(plan_id)
        except Exception:  # a registry that is closing: keep the worker until the next check
            return True


def _well_formed(result: dict[str, Any]) -> bool:
    """Whether a successful result has the shape the worker gives it (a plan that took over
    its process could send anything: such a worker is not kept)."""
    numbers = (int, float)
    try:
        return (
            isinstance(result["params"], dict)
            and isinstance(result["sample_size"], int)
            and all(isinstance(v, numbers) for v in result["metrics"].values())
            and all(isinstance(v, numbers) for v in result["timing"].values())
        )
    except (KeyError, TypeError, AttributeError):
        return False


def _idle_since_before(moment: float, worker: _Worker) -> bool:
    return not worker.busy and worker.last_used < moment


_pools: weakref.WeakKeyDictionary[PlanRegistry, PlanWorkers] = weakref.WeakKeyDictionary()
_pools_lock = threading.Lock()


def plan_workers_for(context: NodeContext) -> PlanWorkers:
    """The warm plan workers of a node, made on first use from its settings.

    They are bound to the node's plan registry: rejecting a plan kills its workers, closing the
    registry (the agent stops) kills them all.
    """
    registry = context.plans
    with _pools_lock:
        pool = _pools.get(registry)
        if pool is None:
            settings = context.settings

            def allowed(plan_id: str) -> bool:
                try:
                    status = registry.show(plan_id).status
                except PlanNotFoundError:
                    status = TrainingPlanStatus.NOT_REGISTERED
                if status is TrainingPlanStatus.REJECTED:
                    return False
                return status is TrainingPlanStatus.APPROVED or not settings.require_approval

            pool = PlanWorkers(
                SandboxPolicy.from_settings(settings),
                size=settings.plan_workers,
                idle_timeout=settings.plan_worker_idle_timeout,
                max_rounds=settings.plan_worker_max_rounds,
                max_rss=settings.plan_worker_max_rss,
                allowed=allowed,
            )
            registry.add_revoke_listener(partial(_revoked, registry, pool))
            _pools[registry] = pool
    return pool


def _revoked(registry: PlanRegistry, pool: PlanWorkers, plan_id: str | None) -> None:
    pool.revoke(plan_id)
    if plan_id is None:
        with _pools_lock:
            _pools.pop(registry, None)
