"""The ready plans (the numpy MLP and the scikit-learn linear estimators) trained on the demo
data in simulation, under FedAvg and a server optimizer, and the MLP under FedProx and SCAFFOLD,
to a sensible accuracy."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path
from typing import Any

import anyio
import numpy as np
import pytest

from node_agent.datasets import DatasetRegistry
from node_agent.plans import PlanRegistry
from researcher.jobs.experiment import Experiment, ExperimentResult
from researcher.jobs.strategies import FedProx, Scaffold, Strategy
from researcher.orchestration.fedjob import FedJob
from researcher.orchestration.lifecycle import State
from researcher.orchestration.spec import JobSpec
from researcher.requests.policies import DiscardOnTimeout
from simulation.federation import _simulated_network, simulate
from simulation.sample_data import breast_cancer, shard
from training_plans.mlp import MLPPlan
from training_plans.plan import plan_source


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


def _standardised_shards(root: Path, nodes: list[str]) -> dict[str, str]:
    """Each node's shard of the demo data, standardised with the pooled statistics."""
    data = breast_cancer()
    mean, std = data.x_train.mean(axis=0), data.x_train.std(axis=0)
    datasets = {}
    for index, node in enumerate(nodes):
        x, y = shard(data, index, len(nodes))
        path = root / "nodes" / node / "shard.npz"
        path.parent.mkdir(parents=True, exist_ok=True)
        np.savez(path, X=(x - mean) / std, y=y, columns=np.array(data.columns))
        with DatasetRegistry(path.parent) as registry:
            datasets[node] = registry.add(path, name="shard").dataset_id
    return datasets


@pytest.mark.parametrize("strategy", [FedProx(mu=0.1), Scaffold()], ids=["fedprox", "scaffold"])
def test_the_mlp_trains_under_fedprox_and_scaffold_with_encrypted_aux_vars(
    tmp_path: Path, strategy: Strategy
) -> None:
    nodes = ["site-1", "site-2", "site-3"]
    datasets = _standardised_shards(tmp_path, nodes)

    async def run() -> ExperimentResult:
        async with _simulated_network(tmp_path, nodes) as requests:
            for node in nodes:
                with PlanRegistry(tmp_path / "nodes" / node) as plans:
                    plans.approve(plans.register(plan_source(MLPPlan)).plan_id)
            experiment = Experiment(
                requests, plan=MLPPlan, datasets=datasets, rounds=4,
                training_args={"epochs": 2, "batch_size": 16, "learning_rate": 0.05},
                model_args={"n_features": 30, "hidden": 8}, strategy=strategy,
                encrypt_aux_var=True, policies=[DiscardOnTimeout(60)],
            )  # fmt: skip
            return await experiment.run()

    result = anyio.run(run)

    assert [record.nodes for record in result.rounds] == [nodes] * 4
    assert result.rounds[-1].aggregated_metrics["accuracy"] > 0.9
