"""The work of a training task: rounds of an Experiment, each committed with its model file.

A resumed training task continues after its last committed round, from that round's model and
strategy state. :func:`load_plan_class` builds the plan's class from the spec's source to
create the initial model; the parameters travel between rounds as ``.npz`` files in the job's
folder.
"""

from __future__ import annotations

import hashlib
import json
import sys
import types
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from researcher.jobs.evaluation import Evaluation, EvaluationRecord
from researcher.jobs.experiment import Experiment, RoundRecord
from researcher.jobs.sampling import Sampling
from researcher.jobs.strategies import make_strategy
from researcher.orchestration.progress_recorder import task_monitor
from researcher.orchestration.round_specs import secagg_settings
from researcher.orchestration.spec import PlanSpec
from researcher.orchestration.store.records import NodeResult, RoundRow, now_text
from researcher.orchestration.task_context import TaskContext, TaskError
from researcher.orchestration.task_specs import TrainingTask
from researcher.orchestration.trained_models import (
    EVALUATION_SLOT,
    ModelRefError,
    best_evaluation,
    load_model,
    stored_evaluations,
)
from researcher.requests.policies import DiscardOnTimeout
from training_plans.plan import TrainingPlan

_STARTED_FROM = "initial-model.json"
"""Beside a warm-started task's models: which model it started from."""


async def run_training_task(ctx: TaskContext, task: TrainingTask) -> dict[str, Any]:
    """Run (or resume) the rounds of ``task`` and return its outputs."""
    store, job_id = ctx.store, ctx.job_id
    plan = ctx.spec.plans[task.plan]
    plan_class = load_plan_class(plan)
    folder = store.model_dir(job_id, task.name, ctx.attempt)
    done = store.rounds(job_id, task.name, ctx.attempt)
    models = store.models(job_id, task.name)
    strategy = make_strategy(task.strategy.name, **task.strategy.settings())
    if done:
        initial = load_params(models[done[-1].round])
        state = _state_path(models[done[-1].round])
        if state.exists():
            strategy.load_state(load_params(state))
    else:
        initial = _initial_params(ctx, task, plan_class, folder / _STARTED_FROM)
        path = save_params(folder / "round-0.npz", initial)
        store.add_model(job_id, task.name, ctx.attempt, 0, path)
    sampling_spec = task.sampling
    sampling = Sampling(**sampling_spec.model_dump()) if sampling_spec is not None else None
    experiment = Experiment(
        ctx.requests, plan=plan_class, source=plan.source, datasets=ctx.node_datasets,
        rounds=task.rounds, training_args=task.training_args, model_args=task.model_args,
        state_ids={n: task.state_ids.get(n) for n in ctx.nodes},
        policies=[DiscardOnTimeout(task.request_timeout)],
        min_replies=task.min_replies or (sampling.min_nodes if sampling else len(ctx.nodes)),
        experiment_id=f"{job_id}.{task.name}", initial_params=initial,
        hooks=lambda number: ctx.hooks(f"round-{number}"), strategy=strategy, sampling=sampling,
        encrypt_aux_var=task.strategy.encrypt_aux_var, monitor=task_monitor(ctx),
        secagg=(secagg := secagg_settings(task.secagg)) is not None,
        secagg_options=secagg.training_options() if secagg else None,
        evaluation=_evaluation(ctx, task),
    )  # fmt: skip
    if done:
        ctx.progress(f"resuming after round {done[-1].round} of {task.rounds}",
                     round=done[-1].round, rounds=task.rounds)  # fmt: skip

    def on_round(record: RoundRecord) -> None:
        path = save_params(folder / f"round-{record.round}.npz", experiment.params)
        if state := experiment.strategy.state():
            save_params(_state_path(path), state)
        if record.evaluation is not None:
            store.add_node_results(job_id, task.name, ctx.attempt,
                                   f"{EVALUATION_SLOT}{record.round}", record.round,
                                   round_results(record.evaluation))  # fmt: skip
        store.commit_round(
            job_id, task.name, ctx.attempt,
            RoundRow(task.name, ctx.attempt, record.round, record.request_id,
                     record.aggregated_metrics, record.failed, record.duration, now_text()),
            round_results(record), path, task.rounds,
        )  # fmt: skip

    await experiment.run(on_round, first_round=len(done) + 1)
    rounds = store.rounds(job_id, task.name, ctx.attempt)
    final = store.models(job_id, task.name)[rounds[-1].round]
    params = load_params(final)
    outputs: dict[str, Any] = {
        "rounds": len(rounds),
        "metrics": rounds[-1].metrics,
        "model": str(final.relative_to(store.data_dir)),
        "parameters": {name: list(np.shape(value)) for name, value in params.items()},
    }
    started_from = folder / _STARTED_FROM
    if started_from.exists():
        outputs["initial_model"] = json.loads(started_from.read_text())
    if task.evaluation is not None:
        evaluations = stored_evaluations(store, job_id, task.name)
        best = best_evaluation(evaluations, task.evaluation)
        if best is not None:
            best["model"] = str(store.models(job_id, task.name)[best["round"]].relative_to(
                store.data_dir))  # fmt: skip
        outputs.update(evaluations=evaluations, best=best)
    return outputs


def _initial_params(
    ctx: TaskContext, task: TrainingTask, plan_class: type[TrainingPlan], started_from: Path
) -> dict[str, npt.NDArray[Any]]:
    """A new model of the plan, or the model ``initial_model`` names (a warm start), checked
    to fit the plan; which model that was is written to ``started_from``.

    Raises:
        TaskError: no such model, or it does not fit the plan.
    """
    model = plan_class()
    model.init_model(task.model_args)
    if task.initial_model is None:
        return dict(model.get_params())
    try:
        found = load_model(ctx.store, task.initial_model, job_id=ctx.job_id)
    except ModelRefError as exc:
        raise TaskError(f"cannot start from {task.initial_model}: {exc}") from exc
    try:
        model.set_params(found.params)
    except (KeyError, ValueError, TypeError) as exc:
        raise TaskError(
            f"{task.initial_model} (round {found.round}) does not fit plan {task.plan}: {exc}"
        ) from exc
    started_from.write_text(json.dumps(found.describe(ctx.store)))
    ctx.progress(f"starting from round {found.round} of task {found.task} of job {found.job_id}")
    return dict(found.params)


def _evaluation(ctx: TaskContext, task: TrainingTask) -> Evaluation | None:
    spec = task.evaluation
    if spec is None:
        return None
    unknown = sorted(set(spec.test_datasets) - set(ctx.nodes))
    if unknown:
        raise TaskError(f"evaluation test_datasets name nodes the task does not run on: {unknown}")
    return Evaluation(
        every=spec.every, at_end=spec.at_end, test_datasets=spec.test_datasets,
        metric=spec.metric, goal=spec.goal, policies=[DiscardOnTimeout(task.request_timeout)],
        hooks=lambda number: ctx.hooks(f"{EVALUATION_SLOT}{number}"),
    )  # fmt: skip


def round_results(record: RoundRecord | EvaluationRecord) -> list[NodeResult]:
    results = []
    for node in sorted(set(record.timings) | set(record.nodes) | set(record.failed)):
        timing = record.timings.get(node)
        results.append(
            NodeResult(
                node_id=node, request_id=record.request_id,
                status="SUCCESS" if node in record.nodes else "FAILED",
                reason=record.failed.get(node, ""),
                sent_at=timing.sent_at if timing else None,
                round_trip=timing.round_trip if timing else None,
                processing=timing.processing if timing else None,
                queue_and_transit=timing.queue_and_transit if timing else None,
                sample_size=record.sample_sizes.get(node),
                metrics=record.metrics.get(node),
            )
        )  # fmt: skip
    return results


def load_plan_class(plan: PlanSpec) -> type[TrainingPlan]:
    """Build the plan's class from its source, as a node does, to create the initial model.

    The source is the researcher's own plan (from the job spec), run in this process.

    Raises:
        TaskError: the source fails to run or its class is not a TrainingPlan.
    """
    digest = hashlib.sha256(plan.source.encode("utf-8")).hexdigest()[:16]
    name = f"broker_net_job_plan_{digest}"
    module = sys.modules.get(name)
    if module is None:
        module = types.ModuleType(name)
        sys.modules[name] = module
        try:
            exec(compile(plan.source, f"<plan {plan.class_name}>", "exec"), module.__dict__)
        except Exception as exc:
            del sys.modules[name]
            raise TaskError(f"the plan {plan.class_name} fails to load: {exc}") from exc
    found = getattr(module, plan.class_name, None)
    if not (isinstance(found, type) and issubclass(found, TrainingPlan)):
        raise TaskError(f"{plan.class_name} is not a TrainingPlan subclass")
    return found


def save_params(path: Path, params: dict[str, npt.NDArray[Any]]) -> Path:
    """Write ``params`` to the ``.npz`` file ``path``; return it."""
    np.savez(path, **params)  # type: ignore[arg-type]
    return path


def _state_path(model: Path) -> Path:
    """The strategy's state saved beside a round's model."""
    return model.with_name(f"{model.stem}.strategy.npz")


def load_params(path: Path) -> dict[str, npt.NDArray[np.float64]]:
    """The parameters in the ``.npz`` file ``path``, as float64 arrays."""
    with np.load(path) as data:
        return {name: np.asarray(data[name], dtype=np.float64) for name in data.files}
