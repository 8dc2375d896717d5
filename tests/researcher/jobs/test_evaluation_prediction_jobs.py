"""The Python API on the in-memory transport: an Experiment evaluated every round keeps its
best model; a PredictionJob runs it on the nodes; an evaluation no node can run fails."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from node_agent.datasets import DatasetRegistry
from researcher.errors import RequestError
from researcher.jobs.evaluation import Evaluation
from researcher.jobs.experiment import Experiment, RoundRecord
from researcher.jobs.plans import TrainingPlanApproveJob
from researcher.jobs.prediction import PredictionJob
from researcher.requests.policies import DiscardOnTimeout
from simulation.demo_setup import DEMO_TAG
from simulation.federation import operator
from tests.researcher.orchestration.test_scheduler import NODES, network
from training_plans.mlp import MLPPlan
from training_plans.plan import plan_source

pytestmark = pytest.mark.anyio

MODEL_ARGS = {"hidden": 4, "n_features": 30}


def shards(root: Path) -> dict[str, str]:
    datasets = {}
    for node in NODES:
        with DatasetRegistry(root / "nodes" / node) as registry:
            datasets[node] = registry.list([DEMO_TAG])[0].dataset_id
    return datasets


async def test_an_experiment_keeps_its_best_evaluated_model_and_predicts_with_it(
    tmp_path: Path,
) -> None:
    async with network(tmp_path) as requests:
        approved = await TrainingPlanApproveJob(
            requests, training_plan=plan_source(MLPPlan), nodes=NODES, description="mlp"
        ).execute()
        for node, reply in approved.items():
            await operator(tmp_path / "nodes")(node, str(reply.training_plan_id))
        datasets = shards(tmp_path)
        evaluation = Evaluation(every=1, metric="loss")
        experiment = Experiment(
            requests, plan=MLPPlan, datasets=datasets, rounds=3, min_replies=2,
            training_args={"epochs": 1, "learning_rate": 0.001, "seed": 3},
            model_args=MODEL_ARGS, evaluation=evaluation, output_dir=tmp_path / "out",
            policies=[DiscardOnTimeout(60)],
        )  # fmt: skip
        params_after: dict[int, dict[str, np.ndarray]] = {}

        def keep(record: RoundRecord) -> None:
            params_after[record.round] = {k: v.copy() for k, v in experiment.params.items()}

        result = await experiment.run(keep)

        losses = [record.evaluation.aggregated_metrics["loss"] for record in result.rounds]  # type: ignore[union-attr]
        assert result.best is not None and result.best.metric == "loss"
        assert result.best.round == 1 + losses.index(min(losses))
        assert result.best.value == min(losses)
        for name, value in params_after[result.best.round].items():
            np.testing.assert_array_equal(result.best.params[name], value)
        for record in result.rounds:
            assert record.evaluation is not None and sorted(record.evaluation.nodes) == NODES
            assert record.evaluation.test_datasets == {}
        with np.load(tmp_path / "out" / experiment.experiment_id / "best.npz") as saved:
            np.testing.assert_array_equal(saved["w1"], result.best.params["w1"])

        predicted = await PredictionJob(
            requests, experiment_id="predict", plan=MLPPlan, params=result.best.params,
            datasets=datasets, model_args=MODEL_ARGS, model="best", round=result.best.round,
        ).execute()  # fmt: skip
        assert sorted(predicted.replies) == NODES and not predicted.failed
        for node, reply in predicted.replies.items():
            with DatasetRegistry(tmp_path / "nodes" / node) as registry:
                assert registry.get(reply.prediction_dataset_id).provenance["round"] == (  # type: ignore[index]
                    result.best.round
                )
                rows = registry.get(datasets[node]).shape[0]
            assert reply.n_rows == rows == sum(reply.summary["class_counts"].values())

        nowhere = Evaluation(test_datasets={node: "dataset_missing" for node in NODES})
        failing = Experiment(
            requests, plan=MLPPlan, datasets=datasets, rounds=1, min_replies=2,
            model_args=MODEL_ARGS, evaluation=nowhere, policies=[DiscardOnTimeout(60)],
        )  # fmt: skip
        with pytest.raises(RequestError, match="evaluation after round 1: 0 node"):
            await failing.run()
