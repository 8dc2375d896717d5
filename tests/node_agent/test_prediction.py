"""Prediction on the node: approved plans only, predictions kept as a registered dataset with
its provenance, only a summary in the reply; evaluation of a whole test dataset."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from broker_net.codes import ErrorCode
from broker_net.messages import ApprovalRequest
from broker_net.prediction_messages import PredictReply, PredictRequest
from node_agent.cli_dataset import dataset_app
from node_agent.context import NodeContext
from node_agent.datasets import DatasetRegistry
from node_agent.plans import compute_plan_id
from node_agent.predictions import PREDICTION_TAG, summarise
from training_plans.linear import SklearnLinearPlan
from training_plans.logistic import LogisticRegressionPlan
from training_plans.plan import plan_source

from .test_handlers import PLAN, handle, handle_error, open_context, train_request, write_dataset

pytestmark = pytest.mark.anyio


@pytest.fixture
def context(tmp_path: Path):
    context = open_context(tmp_path / "node", plan_timeout=30)
    yield context
    context.close()


def trained_params(dataset: Path) -> dict[str, np.ndarray]:
    with np.load(dataset) as data:
        x, y = data["X"], data["y"]
    plan = LogisticRegressionPlan()
    plan.init_model({"n_features": x.shape[1]})
    plan.train((x - x.mean(axis=0)) / x.std(axis=0), y, {"epochs": 3})
    return plan.get_params()


def predict_request(dataset_id: str, params, source: str = PLAN, **fields) -> PredictRequest:
    return PredictRequest(
        researcher_id="alice", experiment_id="job_1.predict", job_id="job_1",
        model="train/best-2", round=2, training_plan=source,
        training_plan_class=fields.pop("training_plan_class", "LogisticRegressionPlan"),
        params=params, dataset_id=dataset_id, **fields,
    )  # fmt: skip


async def approve(context: NodeContext, source: str = PLAN) -> str:
    reply = await handle(ApprovalRequest(researcher_id="alice", training_plan=source), context)
    context.plans.approve(reply.training_plan_id)
    return str(reply.training_plan_id)


async def test_predictions_stay_on_the_node_as_a_dataset_with_provenance(context, tmp_path):
    path = write_dataset(tmp_path / "cohort.npz", slice(0, 120))
    source = context.datasets.add(path, name="cohort")
    params = trained_params(path)
    plan_id = await approve(context)

    request = predict_request(source.dataset_id, params)
    reply: PredictReply = await handle(request, context)

    assert reply.success and reply.dataset_id == source.dataset_id and reply.n_rows == 120
    assert "predictions" not in json.dumps(reply.model_dump(mode="json"))
    kept = context.datasets.get(reply.prediction_dataset_id)
    assert kept.tags == [PREDICTION_TAG] and kept.shape == [120, 2]
    assert kept.path.parent == context.settings.data_dir / "predictions"
    made = kept.provenance or {}
    assert made["source_dataset"] == source.dataset_id and made["job_id"] == "job_1"
    assert made["model"] == "train/best-2" and made["round"] == 2
    assert made["plan_id"] == plan_id == compute_plan_id(PLAN)
    assert made["request_id"] == request.request_id and made["created_at"]
    with kept.path.open() as stream:
        rows = list(csv.DictReader(stream))
    predicted = np.array([float(row["prediction"]) for row in rows])
    with np.load(path) as data:
        x = data["X"]
    expected = LogisticRegressionPlan()
    expected.init_model({"n_features": x.shape[1]})
    expected.set_params(params)
    np.testing.assert_array_equal(predicted, expected.predict(x))
    assert [int(row["row"]) for row in rows] == list(range(120))
    counts = reply.summary["class_counts"]
    assert reply.summary["kind"] == "classes" and sum(counts.values()) == 120
    classes, numbers = np.unique(predicted, return_counts=True)
    assert counts == {str(int(c)): int(n) for c, n in zip(classes, numbers, strict=True)}

    # The registry of another process (the operator's CLI) shows it, with its provenance.
    with DatasetRegistry(context.settings.data_dir) as registry:
        assert registry.get(kept.dataset_id).provenance == made
    listed = CliRunner().invoke(
        dataset_app, ["list", "--data-dir", str(context.settings.data_dir)],
        env={"COLUMNS": "400"},
    )  # fmt: skip
    assert listed.exit_code == 0, listed.output
    assert f"predictions on {source.dataset_id} by train/best-2 of job job_1" in listed.output
    as_json = CliRunner().invoke(
        dataset_app, ["list", "--json", "--data-dir", str(context.settings.data_dir)]
    )
    rows_json = {row["dataset_id"]: row for row in json.loads(as_json.output)}
    assert rows_json[kept.dataset_id]["provenance"]["request_id"] == request.request_id
    assert rows_json[source.dataset_id]["provenance"] is None


async def test_an_unapproved_plan_never_predicts(context, tmp_path):
    dataset_id = context.datasets.add(write_dataset(tmp_path / "a.npz", slice(0, 50))).dataset_id
    error = await handle_error(
        predict_request(dataset_id, {}), context, ErrorCode.PLAN_NOT_APPROVED
    )
    assert error.details["training_plan_id"] == compute_plan_id(PLAN)
    plan_id = await approve(context)
    context.plans.reject(plan_id)
    await handle_error(predict_request(dataset_id, {}), context, ErrorCode.PLAN_NOT_APPROVED)
    assert [entry.dataset_id for entry in context.datasets.list()] == [dataset_id]


async def test_unknown_datasets_and_plans_without_predict_are_typed_errors(context, tmp_path):
    await approve(context)
    await handle_error(predict_request("dataset_nope", {}), context, ErrorCode.DATASET_NOT_FOUND)
    dataset_id = context.datasets.add(write_dataset(tmp_path / "a.npz", slice(0, 50))).dataset_id
    mute = PLAN + (
        "\n\nclass Mute(LogisticRegressionPlan):\n"
        "    def predict(self, x):\n        return super(LogisticRegressionPlan, self).predict(x)\n"
    )
    await approve(context, mute)
    error = await handle_error(
        predict_request(dataset_id, {}, mute, training_plan_class="Mute"), context,
        ErrorCode.PLAN_FAILED,
    )  # fmt: skip
    assert error.details["stage"] == "predict"
    assert "does not implement predict" in error.message
    await handle_error(
        predict_request(dataset_id, {}, encrypt_params=True), context, ErrorCode.BAD_ARGUMENTS
    )
    assert len(context.datasets.list()) == 1


async def test_a_regressor_is_summarised_by_mean_and_std(context, tmp_path):
    source = plan_source(SklearnLinearPlan)
    await approve(context, source)
    path = write_dataset(tmp_path / "a.npz", slice(0, 60))
    dataset_id = context.datasets.add(path).dataset_id
    params = {"coef": np.full(30, 0.001), "intercept": np.array([0.5])}
    reply = await handle(
        predict_request(dataset_id, params, source, training_plan_class="SklearnLinearPlan",
                        model_args={"estimator": "SGDRegressor"}),
        context,
    )  # fmt: skip
    with np.load(path) as data:
        values = data["X"] @ params["coef"] + 0.5
    assert reply.summary == pytest.approx(
        {"kind": "values", "mean": float(values.mean()), "std": float(values.std())}
    )
    assert summarise(np.array([1.0, 0.0, 1.0]), True)["class_counts"] == {"0": 1, "1": 2}


async def test_a_validation_only_round_may_evaluate_a_whole_test_dataset(context, tmp_path):
    await approve(context)
    dataset_id = context.datasets.add(write_dataset(tmp_path / "t.npz", slice(0, 40))).dataset_id
    whole = train_request(dataset_id, training=False, training_args={"validation_fraction": 1})
    reply = await handle(whole, context)
    assert reply.sample_size == 40 and "accuracy" in reply.metrics
    training = train_request(dataset_id, training_args={"validation_fraction": 1})
    error = await handle_error(training, context, ErrorCode.BAD_ARGUMENTS)
    assert "[0, 1)" in error.message
