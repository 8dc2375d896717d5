"""The ready plans (the numpy MLP and the scikit-learn linear estimators) trained on the demo
data in simulation, under FedAvg and a server optimizer, to a sensible accuracy."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path
from typing import Any

import pytest

from researcher.orchestration.fedjob import FedJob
from researcher.orchestration.lifecycle import State
from researcher.orchestration.spec import JobSpec
from simulation.federation import simulate


def spec_text(plan: str, model_args: dict[str, Any], strategy: str, training: str) -> str:
    return textwrap.dedent(f"""\
    version: 1
    name: ready-plans
    conf: {{min_nodes: 3}}
    datasets: {{tags: [breast-cancer]}}
    plans:
      {plan}:
        class_name: {plan}
        source: "from training_plans import {plan}\\n"
    tasks:
    - kind: plan_approval
      name: approve
      nodes: all
      plan: {plan}
    - kind: analytics
      name: stats
      nodes: all
      stats: [count, mean, std]
      exclude_columns: [target]
    - kind: preprocessing
      name: scale
      nodes: all
      preproc_type: standardize
      inputs:
        preproc_args.mean: {{task: stats, key: mean}}
        preproc_args.std: {{task: stats, key: std}}
    - kind: training
      name: train
      nodes: all
      plan: {plan}
      rounds: 4
      depends_on: [approve]
      training_args: {training}
      model_args: {json.dumps(model_args)}
      strategy: {strategy}
      inputs:
        state_ids: {{task: scale, key: state_ids}}
        model_args.n_features: {{task: stats, key: n_features}}
    """)


CASES = [
    ("MLPPlan", {"hidden": 8}, "{name: fedavg}", "accuracy", 0.9),
    ("MLPPlan", {"hidden": 8, "activation": "relu"}, "{name: fedadam, server_learning_rate: 0.05}",
     "accuracy", 0.9),
    ("SklearnLinearPlan", {"estimator": "SGDClassifier", "estimator_args": {"alpha": 0.001}},
     "{name: fedavg}", "accuracy", 0.9),
    ("SklearnLinearPlan", {"estimator": "Perceptron"}, "{name: fedyogi, server_learning_rate: 0.1}",
     "accuracy", 0.85),
    ("SklearnLinearPlan", {"estimator": "SGDRegressor"},
     "{name: fedavg}", "r2", 0.5),
]  # fmt: skip


@pytest.mark.parametrize(("plan", "model_args", "strategy", "metric", "floor"), CASES)
def test_a_ready_plan_trains_on_the_demo_data(
    tmp_path: Path, plan: str, model_args: dict[str, Any], strategy: str, metric: str, floor: float
) -> None:
    training = (
        "{epochs: 2, batch_size: 16, learning_rate: 0.05}"
        if plan == "MLPPlan"
        else ("{epochs: 2, batch_size: 16}")
    )
    spec = JobSpec.from_yaml(spec_text(plan, model_args, strategy, training))

    result = simulate(FedJob.from_spec(spec), 3, workspace=tmp_path)

    assert result.state is State.SUCCESS, result.reason
    assert len(result.rounds["train"]) == 4
    assert result.outputs["train"]["metrics"][metric] > floor
