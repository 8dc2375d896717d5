"""Trained models in the job store: a :class:`ModelRef` found as a model file with its plan,
and each training task's stored evaluations and best round.

::

    with JobStore(settings.data_dir) as store:
        model = load_model(store, ModelRef(job="job_...", model="best"))
        experiment = Experiment(requests, plan=MyPlan, datasets=..., initial_params=model.params)

A job's references are checked when it is submitted (:func:`check_model_refs`: the job and
training task exist, a ``best`` model has an evaluation, a round is within the task's rounds)
and found when the task runs (:func:`load_model`: the model file exists).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from researcher.jobs.aggregation import weighted_metrics
from researcher.jobs.evaluation import best_round, metric_goal
from researcher.orchestration.lifecycle import State
from researcher.orchestration.model_specs import EvaluationSpec, ModelRef
from researcher.orchestration.spec import JobSpec, PlanSpec
from researcher.orchestration.store.job_store import JobStore
from researcher.orchestration.store.records import JobNotFoundError
from researcher.orchestration.task_specs import PredictionTask, SpecError, TrainingTask

EVALUATION_SLOT = "evaluation-"
"""The slot of an evaluation's node results is ``evaluation-<round>``."""


class ModelRefError(ValueError):
    """Raised when a model reference names no job, no training task or no such model."""


@dataclass(frozen=True)
class TrainedModel:
    """A model of a training task, as a :class:`ModelRef` found it.

    Attributes:
        job_id: the job the task ran in (for an inherited task, the job where it really ran).
        round: the round after which the model was saved (0: the initial model).
        path: its ``.npz`` file.
        plan: the plan the task trained.
        model_args: the task's ``model_args`` as its spec gave them (inputs not filled in).
    """

    job_id: str
    task: str
    round: int
    path: Path
    params: dict[str, npt.NDArray[np.float64]]
    plan: PlanSpec
    model_args: dict[str, Any]

    def describe(self, store: JobStore) -> dict[str, Any]:
        """Which model this is, as plain data."""
        return {"job": self.job_id, "task": self.task, "round": self.round,
                "file": str(self.path.relative_to(store.data_dir))}  # fmt: skip


def check_model_refs(store: JobStore, spec: JobSpec) -> JobSpec:
    """Check every model ``spec``'s tasks name (warm starts, predictions); return ``spec``.

    Raises:
        SpecError: a reference names no job, no training task of it, a ``best`` model of a
            task without evaluation, or a round beyond the task's rounds.
    """
    for task in spec.tasks:
        ref = task.initial_model if isinstance(task, TrainingTask) else None
        ref = task.model if isinstance(task, PredictionTask) else ref
        if ref is None:
            continue
        try:
            source = spec if ref.job is None else store.job(ref.job).spec
            _training_spec(source, ref)
        except (ModelRefError, JobNotFoundError) as exc:
            raise SpecError(f"task {task.name!r}: {_reason(ref, exc)}") from exc
    return spec


def load_model(store: JobStore, ref: ModelRef, *, job_id: str | None = None) -> TrainedModel:
    """The model ``ref`` names; ``job_id`` is the job it belongs to when ``ref.job`` is unset.

    Raises:
        ModelRefError: no such job, training task or model (not trained yet, no evaluation,
            no such round).
    """
    owner_job = ref.job or job_id
    if owner_job is None:
        raise ModelRefError(f"{ref}: no job given")
    try:
        spec = store.job(owner_job).spec
        task = _training_spec(spec, ref)
        record = store.task(owner_job, task.name)
    except JobNotFoundError as exc:
        raise ModelRefError(_reason(ref, exc)) from exc
    owner = record.inherited_from or owner_job
    models = store.models(owner, task.name)
    where = f"task {task.name} of job {owner_job}"
    if ref.model in ("final", "best") and record.state is not State.SUCCESS:
        raise ModelRefError(f"{where} has no {ref.model} model: it is {record.state.value}")
    if ref.model == "final":
        number = max(models)
    elif ref.model == "best":
        best = (record.outputs or {}).get("best")
        if not best:
            raise ModelRefError(f"{where} has no best model: no evaluation had its metric")
        number = int(best["round"])
    else:
        number = int(ref.model)
    if number not in models:
        known = ", ".join(str(n) for n in models) or "none yet"
        raise ModelRefError(f"{where} has no model of round {number} (rounds: {known})")
    path = models[number]
    with np.load(path) as data:
        params = {name: np.asarray(data[name], dtype=np.float64) for name in data.files}
    return TrainedModel(owner, task.name, number, path, params, spec.plans[task.plan],
                        dict(task.model_args))  # fmt: skip


def stored_evaluations(store: JobStore, job_id: str, task: str) -> list[dict[str, Any]]:
    """Each stored evaluation of a training task (its latest attempt), by round: the
    metrics weighted by sample size and each node's answer."""
    by_round: dict[int, dict[str, dict[str, Any]]] = defaultdict(dict)
    for entry in store.node_results(job_id, task):
        if entry["slot"].startswith(EVALUATION_SLOT):
            by_round[entry["round"]][entry["node_id"]] = {
                key: entry[key] for key in ("status", "reason", "metrics", "sample_size")
            }
    evaluations = []
    for number in sorted(by_round):
        nodes = by_round[number]
        answered = {n: e for n, e in nodes.items() if e["status"] == "SUCCESS" and e["metrics"]}
        metrics = weighted_metrics(
            {n: e["metrics"] for n, e in answered.items()},
            {n: e["sample_size"] or 0 for n, e in answered.items()},
        )
        evaluations.append({"round": number, "metrics": metrics, "nodes": nodes})
    return evaluations


def best_evaluation(
    evaluations: list[dict[str, Any]], spec: EvaluationSpec
) -> dict[str, Any] | None:
    """The best of ``evaluations`` by the spec's metric: round, metric, goal and value."""
    found = best_round(((e["round"], e["metrics"]) for e in evaluations), spec.metric, spec.goal)
    if found is None:
        return None
    goal = spec.goal or metric_goal(spec.metric)
    return {"round": found[0], "metric": spec.metric, "goal": goal, "value": found[1]}


def _training_spec(spec: JobSpec, ref: ModelRef) -> TrainingTask:
    """The training task of ``spec`` that ``ref`` names, checked against its model name."""
    training = [task for task in spec.tasks if isinstance(task, TrainingTask)]
    if ref.task is None:
        if len(training) != 1:
            names = ", ".join(t.name for t in training) or "none"
            raise ModelRefError(f"name its training task (the job has: {names})")
        task = training[0]
    else:
        found = [t for t in training if t.name == ref.task]
        if not found:
            names = ", ".join(t.name for t in training) or "none"
            raise ModelRefError(f"no training task {ref.task!r} (training tasks: {names})")
        task = found[0]
    if ref.model == "best" and task.evaluation is None:
        raise ModelRefError(f"task {task.name} has no evaluation, hence no best model")
    if isinstance(ref.model, int) and ref.model > task.rounds:
        raise ModelRefError(f"task {task.name} runs {task.rounds} rounds, not {ref.model}")
    return task


def _reason(ref: ModelRef, exc: Exception) -> str:
    if isinstance(exc, JobNotFoundError):
        return f"{ref}: no job has id {exc.job_id!r}"
    return f"{ref}: {exc}"
