"""The work of an asynchronous training task (FedBuff): its requests, records and outputs.

:func:`run_async_training` runs a :class:`~researcher.jobs.buffered.BufferedExperiment` over
the task's nodes and records everything in the store (:mod:`researcher.orchestration.store.
async_log`): each request before it is sent, each update's fate, each version with its model
in one transaction. A task attempt that a new process resumes continues from its last
committed version: the requests it had in flight are resumed under their ids (the replies
wait in the durable reply queue; a node that had answered answers again from the reply it
stored), so no update is lost or trained twice.
"""

from __future__ import annotations

import logging
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from researcher.errors import RequestError
from researcher.jobs.buffered import BufferedExperiment, Params
from researcher.jobs.buffered_records import UpdateRecord, UpdateStatus, VersionRecord
from researcher.orchestration.progress_recorder import task_monitor
from researcher.orchestration.task_specs import AsyncTrainingTask
from training_plans.plan import TrainingPlan

if TYPE_CHECKING:
    from researcher.orchestration.task_context import TaskContext

logger = logging.getLogger(__name__)


async def run_async_training(
    ctx: TaskContext, task: AsyncTrainingTask, plan_class: type[TrainingPlan]
) -> dict[str, Any]:
    """Run (or resume) one attempt of an asynchronous training task; return its outputs.

    Raises:
        RequestError: training ended before it published a single version.
    """
    store, job_id, attempt, name = ctx.store, ctx.job_id, ctx.attempt, task.name
    folder = store.model_dir(job_id, name, attempt)
    done = store.versions(job_id, name, attempt)
    models = store.models(job_id, name)
    settings = task.fedbuff.settings()
    last = done[-1]["version"] if done else 0
    if 0 in models:  # resumed: start from the last committed version
        initial = _load(models[last])
        keep = range(last - settings.max_staleness, last)
        history = {number: _load(path) for number, path in models.items() if number in keep}
    else:
        model = plan_class()
        model.init_model(task.model_args)
        initial, history = dict(model.get_params()), {}
        store.add_model(job_id, name, attempt, 0, _save(folder / "version-0.npz", initial))
    resume = {
        row["request_id"]: (row["node_id"], row["base_version"])
        for row in store.async_updates(job_id, name, attempt, UpdateStatus.IN_FLIGHT)
        if row["node_id"] in ctx.nodes
    }
    if done or resume:
        ctx.progress(f"resuming at version {last} with {len(resume)} request(s) in flight",
                     version=last)  # fmt: skip

    def on_send(request_id: str, node: str, version: int) -> None:
        store.record_update_sent(job_id, name, attempt, request_id, node, version)

    def on_update(update: UpdateRecord) -> None:
        store.settle_update(job_id, name, attempt, update)

    def on_version(version: VersionRecord, params: Params, applied: list[UpdateRecord]) -> None:
        path = _save(folder / f"version-{version.version}.npz", params)
        shown = ", ".join(f"{k} {v:.4g}" for k, v in sorted(version.metrics.items()))
        store.commit_version(
            job_id, name, attempt, version, applied, path,
            f"version {version.version} published ({shown or 'no metrics'})",
        )  # fmt: skip

    experiment = BufferedExperiment(
        ctx.requests, plan=plan_class, source=ctx.spec.plans[task.plan].source,
        datasets=ctx.node_datasets, settings=settings, stop=task.fedbuff.stop(),
        training_args=task.training_args, model_args=task.model_args,
        state_ids={node: task.state_ids.get(node) for node in ctx.nodes},
        request_timeout=task.request_timeout, disconnect_grace=task.fedbuff.disconnect_grace,
        experiment_id=f"{job_id}.{name}", initial_params=initial, initial_version=last,
        history=history, elapsed=done[-1]["elapsed"] if done else 0.0, hooks=ctx.hooks,
        on_update=on_update, on_version=on_version, on_send=on_send, monitor=task_monitor(ctx),
    )  # fmt: skip
    result = await experiment.run(resume)
    if result.version == 0:
        raise RequestError(f"no model version was published: {result.stopped_because}")
    final = store.models(job_id, name)[result.version]
    counts = Counter(row["status"] for row in store.async_updates(job_id, name, attempt))
    versions = store.versions(job_id, name, attempt)
    return {
        "versions": result.version,
        "metrics": versions[-1]["metrics"] if versions else {},
        "model": str(final.relative_to(store.data_dir)),
        "parameters": {key: list(np.shape(value)) for key, value in result.params.items()},
        "updates": {status.value: counts.get(status.value, 0) for status in UpdateStatus},
        "stopped_because": result.stopped_because,
    }


def _save(path: Path, params: dict[str, npt.NDArray[Any]]) -> Path:
    np.savez(path, **params)  # type: ignore[arg-type]
    return path


def _load(path: Path) -> dict[str, npt.NDArray[np.float64]]:
    with np.load(path) as data:
        return {key: np.asarray(data[key], dtype=np.float64) for key in data.files}
