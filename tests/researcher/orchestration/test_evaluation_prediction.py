"""Evaluation rounds and the best model, prediction tasks and warm starts, in simulated jobs
(node agents on the in-memory transport) that share one workspace and job store."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from node_agent.datasets import DatasetRegistry
from researcher.cli.jobs import standalone_app
from researcher.jobs.evaluation import Evaluation, best_round, metric_goal
from researcher.orchestration import outputs
from researcher.orchestration.fedjob import FedJob
from researcher.orchestration.lifecycle import State
from researcher.orchestration.model_specs import EvaluationSpec, ModelRef
from researcher.orchestration.store.job_store import JobStore
from researcher.orchestration.task_specs import PredictionTask, SpecError, TrainingTask
from researcher.orchestration.trained_models import ModelRefError, check_model_refs, load_model
from simulation.demo_setup import register_demo_shard
from simulation.federation import simulate_async
from simulation.sample_data import TARGET, breast_cancer
from tests.researcher.orchestration.test_scheduler import TRAINING_ARGS, training_job

pytestmark = pytest.mark.anyio

NODES = ["site-1", "site-2", "site-3"]


def prepare_nodes(root: Path) -> tuple[dict[str, str], dict[str, str], dict[str, int]]:
    """Each node's demo shard and a share of the held-out test set, registered as an operator
    would: the shard ids, the test dataset ids and the test rows by node."""
    data = breast_cancer()
    shards, tests, test_rows = {}, {}, {}
    for index, node in enumerate(NODES):
        folder = root / "nodes" / node
        shards[node] = register_demo_shard(folder, index, len(NODES))[0].dataset_id
        rows = np.array_split(np.arange(len(data.y_test)), len(NODES))[index]
        path = folder / "held-out.csv"
        table = np.column_stack([data.x_test[rows], data.y_test[rows]])
        np.savetxt(path, table, delimiter=",", header=",".join([*data.columns, TARGET]),
                   comments="", fmt="%.10g")  # fmt: skip
        with DatasetRegistry(folder) as registry:
            tests[node] = registry.add(path, name="held-out", target=TARGET).dataset_id
        test_rows[node] = len(rows)
    return shards, tests, test_rows


def evaluated_job(test_datasets: dict[str, str]) -> FedJob:
    """The demo pipeline, its training evaluated every round by accuracy; a second training
    evaluated once on the test datasets; a prediction with the first one's best model."""
    job = training_job("evaluated", rounds=3)
    train = job.tasks["train"]
    assert isinstance(train, TrainingTask)
    train.evaluation = EvaluationSpec(every=1, metric="accuracy")
    stats, scale = job.tasks["stats"], job.tasks["scale"]
    job.to_nodes(
        TrainingTask(
            name="held-out", plan=train.plan, rounds=2, depends_on=["train"],
            training_args=TRAINING_ARGS,
            inputs={"model_args.n_features": stats.output("n_features")},
            evaluation=EvaluationSpec(test_datasets=test_datasets, metric="loss"),
        )
    )  # fmt: skip
    job.to_nodes(
        PredictionTask(
            name="predict", model=ModelRef(task="train", model="best"),
            inputs={"state_ids": scale.output("state_ids")},
        )
    )  # fmt: skip
    return job


async def test_evaluation_best_model_prediction_and_warm_start(tmp_path: Path) -> None:
    shards, tests, test_rows = prepare_nodes(tmp_path)
    first = await simulate_async(evaluated_job(tests), len(NODES), workspace=tmp_path)
    assert first.state is State.SUCCESS, first.reason

    # Evaluation after every round, on each node's validation split; the best by accuracy.
    train = first.outputs["train"]
    evaluations = train["evaluations"]
    assert [e["round"] for e in evaluations] == [1, 2, 3]
    for evaluation in evaluations:
        assert sorted(evaluation["nodes"]) == NODES
        sizes = {n: e["sample_size"] for n, e in evaluation["nodes"].items()}
        assert all(e["status"] == "SUCCESS" for e in evaluation["nodes"].values())
        assert all(size > 0 for size in sizes.values())
        weighted = sum(
            e["metrics"]["accuracy"] * sizes[n] for n, e in evaluation["nodes"].items()
        ) / sum(sizes.values())
        assert evaluation["metrics"]["accuracy"] == pytest.approx(weighted)
    accuracies = [e["metrics"]["accuracy"] for e in evaluations]
    best = train["best"]
    assert best["round"] == 1 + accuracies.index(max(accuracies))
    assert best["value"] == max(accuracies) and best["goal"] == "max"

    with JobStore(tmp_path / "researcher") as store:
        models = store.models(first.job_id, "train")
        assert best["model"] == str(models[best["round"]].relative_to(store.data_dir))
        shown = outputs.metrics(store, first.job_id, "train")["tasks"]["train"]
        assert shown["best"] == best
        assert [r["evaluation"]["round"] for r in shown["rounds"]] == [1, 2, 3]
        assert all(sorted(r["nodes"]) == NODES for r in shown["rounds"])
        downloaded = outputs.download_model(store, first.job_id, tmp_path / "out", "train")
        with np.load(Path(downloaded["directory"]) / "best.npz") as saved:
            best_params = {name: np.asarray(saved[name]) for name in saved.files}

    # The held-out training was evaluated once, at its end, on every row of the test sets.
    (held_out,) = first.outputs["held-out"]["evaluations"]
    assert held_out["round"] == 2
    assert {n: e["sample_size"] for n, e in held_out["nodes"].items()} == test_rows
    assert first.outputs["held-out"]["best"]["goal"] == "min"

    # Prediction: a new dataset on each node with its provenance, a summary in the outputs.
    predict = first.outputs["predict"]
    assert predict["model"]["job"] == first.job_id and predict["model"]["round"] == best["round"]
    for node in NODES:
        summary = predict["summaries"][node]
        assert summary["source_dataset"] == shards[node] and summary["kind"] == "classes"
        assert sum(summary["class_counts"].values()) == summary["n_rows"]
        with DatasetRegistry(tmp_path / "nodes" / node) as registry:
            kept = registry.get(predict["datasets"][node])
            assert kept.shape == [summary["n_rows"], 2]
            assert registry.get(shards[node]).shape[0] == summary["n_rows"]
        made = kept.provenance or {}
        assert made["source_dataset"] == shards[node] and made["job_id"] == first.job_id
        assert made["model"] == f"train/best-{best['round']}"
    assert predict["n_rows"] == sum(s["n_rows"] for s in predict["summaries"].values())

    # What `researcher output` shows of them.
    env = {"BROKER_NET_RESEARCHER_DATA_DIR": str(tmp_path / "researcher"), "COLUMNS": "300"}
    shown_metrics = CliRunner().invoke(
        standalone_app(), ["output", "metrics", first.job_id, "--task", "train"], env=env
    )
    assert shown_metrics.exit_code == 0, shown_metrics.output
    assert "eval_accuracy" in shown_metrics.output
    assert f"best: round {best['round']} (accuracy {best['value']:.4f})" in shown_metrics.output
    shown_data = CliRunner().invoke(
        standalone_app(), ["output", "data", first.job_id, "--task", "predict"], env=env
    )
    assert shown_data.exit_code == 0, shown_data.output
    assert (
        "class_counts" in shown_data.output and predict["datasets"]["site-1"] in shown_data.output
    )

    # A warm start from that best model: the new training's round 0 is that model.
    warm = training_job("warm", rounds=1)
    warm_train = warm.tasks["train"]
    assert isinstance(warm_train, TrainingTask)
    warm_train.initial_model = ModelRef(job=first.job_id, task="train", model="best")
    second = await simulate_async(warm, len(NODES), workspace=tmp_path)
    assert second.state is State.SUCCESS, second.reason
    with JobStore(tmp_path / "researcher") as store:
        start = load_model(store, ModelRef(job=second.job_id, task="train", model=0))
        assert load_model(store, ModelRef(job=second.job_id, task="train")).round == 1
        for name, value in best_params.items():
            np.testing.assert_array_equal(start.params[name], value)
        assert second.outputs["train"]["initial_model"] == {
            "job": first.job_id, "task": "train", "round": best["round"], "file": best["model"],
        }  # fmt: skip

        # Unknown jobs, tasks and models are refused when the job is submitted.
        for ref, message in [
            (ModelRef(job="job_nope"), "no job has id 'job_nope'"),
            (ModelRef(job=first.job_id), "name its training task (the job has: train, held-out)"),
            (ModelRef(job=first.job_id, task="stats"), "no training task 'stats'"),
            (ModelRef(job=first.job_id, task="train", model=9), "runs 3 rounds, not 9"),
            (ModelRef(job=second.job_id, task="train", model="best"), "has no evaluation"),
        ]:
            refused = training_job("refused", rounds=1)
            refused.tasks["train"].initial_model = ref  # type: ignore[union-attr]
            with pytest.raises(SpecError, match=re.escape(message)):
                check_model_refs(store, refused.spec)
        with pytest.raises(ModelRefError, match="runs 1 rounds, not 5"):
            load_model(store, ModelRef(job=second.job_id, task="train", model=5))


def test_a_prediction_of_a_model_that_cannot_exist_is_refused(tmp_path: Path) -> None:
    job = FedJob("orphan")
    job.to_nodes(TrainingTask(name="train", plan=job.plan(_plan()), rounds=1))
    job.to_nodes(PredictionTask(name="predict", model=ModelRef(task="train", model=3)))
    assert job.spec.order() == ["train", "predict"]  # this job's model: trained first
    with JobStore(tmp_path) as store, pytest.raises(SpecError, match="runs 1 rounds, not 3"):
        check_model_refs(store, job.spec)
    job.tasks["predict"].model = ModelRef(task="train", model="best")  # type: ignore[union-attr]
    with JobStore(tmp_path) as store, pytest.raises(SpecError, match="has no evaluation"):
        check_model_refs(store, job.spec)
    # A job that has not trained yet has no final model to predict with or start from.
    job.tasks["predict"].model = ModelRef(task="train")  # type: ignore[union-attr]
    with JobStore(tmp_path) as store:
        waiting = store.create_job(job.spec, researcher_id="alice")
        with pytest.raises(ModelRefError, match="has no final model: it is waiting"):
            load_model(store, ModelRef(job=waiting.job_id, task="train"))
        with pytest.raises(ModelRefError, match="has no model of round 1"):
            load_model(store, ModelRef(job=waiting.job_id, task="train", model=1))


def _plan() -> type:
    from simulation.demo_plan import BreastCancerPlan

    return BreastCancerPlan


def test_the_best_round_and_when_evaluations_are_due() -> None:
    history = [(1, {"loss": 0.5, "accuracy": 0.8}), (2, {"loss": 0.4}), (3, {"loss": 0.4})]
    assert best_round(history, "loss") == (2, 0.4)  # the earliest of equals
    assert best_round(history, "accuracy") == (1, 0.8)
    assert best_round(history, "loss", "max") == (1, 0.5)
    assert best_round(history, "auc") is None
    assert (metric_goal("val_loss"), metric_goal("mse"), metric_goal("r2")) == ("min", "min", "max")
    every_two = Evaluation(every=2)
    assert [n for n in range(1, 6) if every_two.due(n, 5)] == [2, 4, 5]
    assert [n for n in range(1, 6) if Evaluation(every=2, at_end=False).due(n, 5)] == [2, 4]
    assert [n for n in range(1, 6) if Evaluation().due(n, 5)] == [5]
    with pytest.raises(ValueError, match="'every' or 'at_end'"):
        Evaluation(at_end=False)
    with pytest.raises(ValueError, match="'every' or 'at_end'"):
        EvaluationSpec(at_end=False)
    with pytest.raises(ValueError, match="names its training 'task'"):
        ModelRef()
    assert ModelRef(task="train").upstream == ["train"]
    assert ModelRef(job="job_1", task="train").upstream == []
    assert (
        str(ModelRef(job="job_1", model=2)) == "the round-2 model of its training task of job job_1"
    )
