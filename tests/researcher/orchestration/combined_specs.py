"""Job specs that combine a strategy, a client sampling, an evaluation, a warm start, secure
aggregation and a prediction, shared by the in-memory and the RabbitMQ tests."""

from __future__ import annotations

from typing import Any

import yaml

from researcher.orchestration.fedjob import FedJob
from researcher.orchestration.model_specs import EvaluationSpec
from researcher.orchestration.round_specs import SamplingSpec
from researcher.orchestration.spec import JobSpec
from researcher.orchestration.task_specs import TrainingTask
from tests.researcher.orchestration.test_scheduler import training_job

COMBINED_TASKS = """
- kind: training
  name: train
  nodes: all
  depends_on: [check]
  plan: BreastCancerPlan
  rounds: 3
  training_args: {epochs: 1, batch_size: 16, learning_rate: 0.1, seed: 1}
  inputs:
    state_ids: {task: scale, key: state_ids}
    model_args.n_features: {task: stats, key: n_features}
  strategy: {name: fedadam, server_learning_rate: 0.05}
  sampling: {count: 2, seed: 7, min_nodes: 2}
  secagg: {precision_bits: 24}
  evaluation: {every: 1, metric: accuracy}
  initial_model: {job: EARLIER_JOB, task: train, model: best}
- kind: prediction
  name: predict
  nodes: all
  model: {task: train, model: best}
  encrypt_params: true
  inputs:
    state_ids: {task: scale, key: state_ids}
"""
"""The combined tasks as a researcher writes them; the job id of the earlier job goes in."""


def earlier_job(name: str = "earlier", **settings: Any) -> FedJob:
    """The demo pipeline, its training evaluated after each of 2 rounds: the job the combined
    spec starts from."""
    job = training_job(name, rounds=2, **settings)
    train = job.tasks["train"]
    assert isinstance(train, TrainingTask)
    train.evaluation = EvaluationSpec(every=1, metric="accuracy")
    return job


def combined_yaml(earlier_job_id: str, name: str = "combined", **settings: Any) -> str:
    """The YAML of the demo pipeline's approval, statistics and scaling, then
    :data:`COMBINED_TASKS`."""
    data = yaml.safe_load(training_job(name, **settings).spec.to_yaml())
    data["tasks"] = [
        t for t in data["tasks"] if t["name"] in ("approve", "check", "stats", "scale")
    ]
    data["tasks"] += yaml.safe_load(COMBINED_TASKS.replace("EARLIER_JOB", earlier_job_id))
    text = yaml.safe_dump(data, sort_keys=False)
    JobSpec.from_yaml(text)  # valid as written
    return text


def sampled_job(name: str, *, secagg: bool) -> FedJob:
    """The demo pipeline trained 3 rounds on a seeded sample of 2 of the 3 nodes."""
    job = training_job(name, rounds=3)
    train = job.tasks["train"]
    assert isinstance(train, TrainingTask)
    train.sampling = SamplingSpec(count=2, seed=1, min_nodes=2)
    train.secagg = secagg
    return job
