"""The work of a prediction task: a trained model of the store run on each node's dataset.

The model (:class:`~researcher.orchestration.model_specs.ModelRef`) is found in the job store
(:func:`researcher.orchestration.trained_models.load_model`) with the plan and ``model_args`` it
was trained with; the task's own ``plan`` and ``model_args`` override them. Each node keeps its
predictions as a new registered dataset; the task's outputs are those dataset ids and the
nodes' summaries.
"""

from __future__ import annotations

from typing import Any

from researcher.jobs.prediction import PredictionJob
from researcher.orchestration.task_context import TaskContext, TaskError, reasons
from researcher.orchestration.task_specs import PredictionTask
from researcher.orchestration.trained_models import ModelRefError, load_model
from researcher.requests.policies import DiscardOnTimeout


async def run_prediction_task(ctx: TaskContext, task: PredictionTask) -> dict[str, Any]:
    """Predict on each of the task's nodes and return the task's outputs.

    Raises:
        TaskError: the model is unknown, a node has no dataset, or a node did not predict.
    """
    try:
        model = load_model(ctx.store, task.model, job_id=ctx.job_id)
    except ModelRefError as exc:
        raise TaskError(f"cannot predict with {task.model}: {exc}") from exc
    plan = ctx.spec.plans[task.plan] if task.plan else model.plan
    datasets = {node: task.datasets.get(node) or ctx.datasets.get(node) for node in ctx.nodes}
    missing = sorted(node for node, dataset in datasets.items() if not dataset)
    if missing:
        raise TaskError(f"no dataset to predict on for nodes {missing}")
    name = task.model.model if isinstance(task.model.model, str) else "round"
    job = PredictionJob(
        ctx.requests, experiment_id=f"{ctx.job_id}.{task.name}", params=model.params,
        datasets={node: str(dataset) for node, dataset in datasets.items()},
        source=plan.source, plan_class=plan.class_name,
        model_args={**model.model_args, **task.model_args},
        state_ids={node: task.state_ids.get(node) for node in ctx.nodes},
        job_id=model.job_id, model=f"{model.task}/{name}-{model.round}", round=model.round,
        encrypt_params=task.encrypt_params, policies=[DiscardOnTimeout(task.request_timeout)],
        hooks=ctx.hooks("request"),
    )  # fmt: skip
    try:
        result = await job.execute()
    finally:
        ctx.record(job.request, "request")
    failed = sorted(set(datasets) - set(result.replies))
    if failed:
        raise TaskError(f"no predictions from nodes {failed} ({reasons(job.request)})")
    return {
        "model": model.describe(ctx.store),
        "datasets": {node: r.prediction_dataset_id for node, r in result.replies.items()},
        "summaries": {
            node: {"source_dataset": r.dataset_id, "n_rows": r.n_rows, **r.summary}
            for node, r in result.replies.items()
        },
        "n_rows": result.n_rows,
    }
