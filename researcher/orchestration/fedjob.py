"""FedJob: define a federated job in Python, export it as a spec, run it.

As NVIDIA FLARE's FedJob API: tasks are placed on nodes with :meth:`FedJob.to` (one node) and
:meth:`FedJob.to_nodes` (every node of the job)::

    job = FedJob("breast-cancer", min_nodes=3, dataset_tags=["breast-cancer"])
    plan = job.plan(BreastCancerPlan)
    stats = job.to_nodes(AnalyticsTask(name="stats", stats=["mean", "std"],
                                       exclude_columns=["target"]))
    scale = job.to_nodes(PreprocessingTask(
        name="scale", preproc_type="standardize",
        inputs={"preproc_args.mean": stats.output("mean"),
                "preproc_args.std": stats.output("std")}))
    job.to_nodes(TrainingTask(
        name="train", plan=plan, rounds=5,
        inputs={"state_ids": scale.output("state_ids"),
                "model_args.n_features": stats.output("n_features")}))

    job.export("job.yaml")            # then: researcher job submit job.yaml
    result = await job.run(requests)  # for real, over the requests' transport
    result = simulate(job, 3)         # in one process: simulation.simulate

The tasks are the spec's own models (:mod:`researcher.orchestration.task_specs`); the training
plan travels in the spec as its source text and class name. Simulating a job starts node
agents in this process, so it lives above both parties, in :mod:`simulation.federation`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import numpy.typing as npt

from broker_net.topology import check_id
from researcher.jobs.monitor import MonitorCallback
from researcher.orchestration.lifecycle import State
from researcher.orchestration.scheduler import Scheduler
from researcher.orchestration.spec import (
    DatasetSelector,
    Inheritance,
    JobConf,
    JobSpec,
    PlanSpec,
    SimulatedDataset,
)
from researcher.orchestration.store.job_store import JobStore
from researcher.orchestration.store.records import RoundRow
from researcher.orchestration.task_context import Approver
from researcher.orchestration.task_specs import ALL_NODES, SpecError, TaskSpec
from researcher.requests.router import Requests
from researcher.settings import ResearcherSettings
from training_plans.plan import TrainingPlan, plan_source

T = TypeVar("T", bound=TaskSpec)

DEMO_DATASET_TAG = "breast-cancer"
"""The tag a job finds datasets by unless told otherwise: the demo data's
(:data:`simulation.demo_setup.DEMO_TAG`)."""


@dataclass(frozen=True)
class JobResult:
    """What a finished job produced.

    Attributes:
        state: the job's final state; ``reason`` says why.
        outputs: each succeeded task's outputs.
        rounds: each training task's rounds, with their aggregated metrics.
        models: each training task's final parameters.
    """

    job_id: str
    state: State
    reason: str
    outputs: dict[str, dict[str, Any]]
    rounds: dict[str, list[RoundRow]] = field(default_factory=dict)
    models: dict[str, dict[str, npt.NDArray[np.float64]]] = field(default_factory=dict)

    @classmethod
    def from_store(cls, store: JobStore, job_id: str) -> JobResult:
        """Read a job's result from the store."""
        job = store.job(job_id)
        outputs: dict[str, dict[str, Any]] = {}
        rounds: dict[str, list[RoundRow]] = {}
        models: dict[str, dict[str, npt.NDArray[np.float64]]] = {}
        for task in store.tasks(job_id):
            if task.state is not State.SUCCESS:
                continue
            outputs[task.name] = task.outputs or {}
            if task.kind in ("training", "async_training"):  # versions are stored as rounds
                owner = task.inherited_from or job_id
                rounds[task.name] = store.rounds(owner, task.name)
                model = (task.outputs or {}).get("model")
                if model:
                    with np.load(store.data_dir / model) as data:
                        models[task.name] = {n: np.asarray(data[n]) for n in data.files}
        return cls(job_id, job.state, job.reason, outputs, rounds, models)


class FedJob:
    """A federated job under construction.

    Args:
        name: the job's name.
        min_nodes: online nodes the job needs before it starts.
        mandatory_nodes: nodes that must be online for the job to start.
        dataset_tags: find each node's dataset by these tags (default: the demo data's)...
        dataset_ids: ...or name each node's dataset id.
        priority: higher runs first among waiting jobs.
        auto_retries: times a failed or timed-out task is tried again.
        auto_retry_delay: seconds to wait before each of those retries (default 0).
        task_timeout: seconds a task may run before it is stopped and marked timeout.
        parallelism: tasks run at once.
        node_wait: seconds to wait for the nodes before the job fails.
        inherit_from: an earlier job id whose ``inherit_tasks`` outputs are reused.
        simulation_datasets: dataset files simulated nodes register, by node id (default:
            each simulated node gets a shard of the demo data; see
            :func:`simulation.federation.simulate`).
    """

    def __init__(
        self,
        name: str,
        *,
        min_nodes: int = 1,
        mandatory_nodes: Sequence[str] = (),
        dataset_tags: Sequence[str] = (DEMO_DATASET_TAG,),
        dataset_ids: dict[str, str] | None = None,
        priority: int = 0,
        auto_retries: int = 0,
        auto_retry_delay: float = 0.0,
        task_timeout: float | None = None,
        parallelism: int = 1,
        node_wait: float = 60.0,
        inherit_from: str | None = None,
        inherit_tasks: Sequence[str] = (),
        simulation_datasets: dict[str, SimulatedDataset] | None = None,
    ) -> None:
        self.name = name
        self.conf = JobConf(
            priority=priority, auto_retries=auto_retries, auto_retry_delay=auto_retry_delay,
            task_timeout=task_timeout,
            parallelism=parallelism, min_nodes=min_nodes, mandatory_nodes=list(mandatory_nodes),
            node_wait=node_wait,
            inheritance=Inheritance(job_id=inherit_from, tasks=list(inherit_tasks))
            if inherit_from else None,
        )  # fmt: skip
        self.datasets = (
            DatasetSelector(ids=dict(dataset_ids))
            if dataset_ids
            else DatasetSelector(tags=list(dataset_tags))
        )
        self.plans: dict[str, PlanSpec] = {}
        self.tasks: dict[str, TaskSpec] = {}
        self.simulation_datasets = dict(simulation_datasets or {})

    # --- building ------------------------------------------------------------------------------

    def plan(self, plan: type[TrainingPlan], name: str | None = None) -> str:
        """Add a training plan; return its name, for tasks' ``plan`` field.

        Raises:
            TypeError: ``plan`` is not a TrainingPlan subclass.
            ValueError: its source is not available.
        """
        key = name or plan.__name__
        self.plans[key] = PlanSpec(class_name=plan.__name__, source=plan_source(plan))
        return key

    def to(self, task: T, node_id: str) -> T:
        """Place ``task`` on node ``node_id`` (again for each node); return the task."""
        check_id("node id", node_id)
        self._add(task)
        if task.nodes == ALL_NODES:
            raise SpecError(f"task {task.name!r} already runs on every node")
        if node_id not in task.nodes:
            task.nodes = [*task.nodes, node_id]
        return task

    def to_nodes(self, task: T) -> T:
        """Place ``task`` on every node of the job; return the task."""
        self._add(task)
        task.nodes = ALL_NODES
        return task

    def _add(self, task: TaskSpec) -> None:
        known = self.tasks.get(task.name)
        if known is not None and known is not task:
            raise SpecError(f"the job already has another task named {task.name!r}")
        self.tasks[task.name] = task

    @property
    def spec(self) -> JobSpec:
        """The job as a validated spec.

        Raises:
            SpecError: the job breaks a rule of the spec (the message says which).
        """
        try:
            return JobSpec(
                name=self.name, conf=self.conf, datasets=self.datasets, plans=self.plans,
                tasks=[task.model_copy(deep=True) for task in self.tasks.values()],
                simulation=self.simulation_datasets,
            )  # fmt: skip
        except ValueError as exc:
            raise SpecError(f"invalid job: {exc}") from exc

    @classmethod
    def from_spec(cls, spec: JobSpec) -> FedJob:
        """A FedJob holding ``spec`` (e.g. loaded from YAML), to run or simulate it."""
        job = cls(spec.name)
        job.conf = spec.conf.model_copy(deep=True)
        job.datasets = spec.datasets.model_copy(deep=True)
        job.plans = {k: v.model_copy() for k, v in spec.plans.items()}
        job.tasks = {task.name: task.model_copy(deep=True) for task in spec.tasks}
        job.simulation_datasets = dict(spec.simulation)
        return job

    def export(self, path: Path | str) -> Path:
        """Write the validated spec as YAML to ``path`` (a file, or a folder to hold
        ``<name>.yaml``) and return the file.

        Raises:
            SpecError: the job is not valid.
        """
        target = Path(path)
        if target.is_dir():
            target = target / f"{self.name}.yaml"
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(self.spec.to_yaml(), encoding="utf-8")
        return target

    # --- running -------------------------------------------------------------------------------

    async def run(
        self,
        requests: Requests,
        *,
        store: JobStore | None = None,
        approver: Approver | None = None,
        discovery: float = 3.0,
        monitor: MonitorCallback | None = None,
    ) -> JobResult:
        """Submit the job and run it over ``requests``; return its result.

        Args:
            store: where the job is kept (default: the store in ``ResearcherSettings().data_dir``).
            approver: approves plans as the nodes' operators would; real nodes' operators
                approve them themselves and a plan-check task waits for them.
            discovery: seconds to listen for node heartbeats before fixing the node list.
            monitor: called with each node's progress during training rounds (a function or
                a coroutine function, see :mod:`researcher.jobs.monitor`); the store keeps
                that progress in any case (:meth:`JobStore.progress`).
        """
        own = store is None
        store = store or JobStore(ResearcherSettings().data_dir)
        try:
            scheduler = Scheduler(
                store, requests, approver=approver, discovery=discovery, monitor=monitor
            )
            record = scheduler.submit(self.spec)
            await scheduler.run_job(record.job_id)
            return JobResult.from_store(store, record.job_id)
        finally:
            if own:
                store.close()
