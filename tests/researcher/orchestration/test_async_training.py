"""Asynchronous training as a task of a job, on the in-memory transport: the spec, the
scheduler, the store's versions and updates, the outputs."""

from __future__ import annotations

from pathlib import Path

import pytest

from researcher.jobs.buffered_records import UpdateStatus
from researcher.orchestration import outputs
from researcher.orchestration.fedjob import FedJob, JobResult
from researcher.orchestration.lifecycle import State
from researcher.orchestration.spec import JobSpec
from researcher.orchestration.store.job_store import JobStore
from researcher.orchestration.task_specs import (
    AnalyticsTask,
    AsyncTrainingTask,
    PlanApprovalTask,
    PreprocessingTask,
    SpecError,
)
from researcher.requests.progress import ProgressEvent
from simulation.demo_plan import BreastCancerPlan
from tests.researcher.cli.test_cli_jobs import Cli
from tests.researcher.orchestration.test_scheduler import TRAINING_ARGS, network, scheduler_for

pytestmark = pytest.mark.anyio


def async_job(
    name: str = "async", versions: int = 4, min_nodes: int = 2, **fedbuff: object
) -> FedJob:
    """Approval, statistics, standardisation, then asynchronous training."""
    job = FedJob(name, min_nodes=min_nodes)
    plan = job.plan(BreastCancerPlan)
    job.to_nodes(PlanApprovalTask(name="approve", plan=plan))
    stats = job.to_nodes(AnalyticsTask(name="stats", exclude_columns=["target"]))
    scale = job.to_nodes(
        PreprocessingTask(
            name="scale", preproc_type="standardize",
            inputs={"preproc_args.mean": stats.output("mean"),
                    "preproc_args.std": stats.output("std")},
        )
    )  # fmt: skip
    job.to_nodes(
        AsyncTrainingTask(
            name="train", plan=plan, depends_on=["approve"], training_args=TRAINING_ARGS,
            fedbuff={"buffer_size": 2, "max_versions": versions, "max_staleness": 3, **fedbuff},
            inputs={"state_ids": scale.output("state_ids"),
                    "model_args.n_features": stats.output("n_features")},
        )
    )  # fmt: skip
    return job


async def test_an_asynchronous_task_records_every_version_update_and_progress(
    tmp_path: Path,
) -> None:
    seen: list[ProgressEvent] = []
    job = async_job()
    spec = JobSpec.from_yaml(job.spec.to_yaml())
    assert spec.task("train").kind == "async_training"
    async with network(tmp_path) as requests:
        with JobStore(tmp_path / "researcher") as store:
            scheduler = scheduler_for(tmp_path, requests, store, monitor=seen.append)
            record = scheduler.submit(spec)
            finished = await scheduler.run_job(record.job_id)
            assert finished.state is State.SUCCESS, finished.reason
            progress = store.progress(record.job_id)
            train = store.task(record.job_id, "train")
            out = train.outputs or {}
            versions = store.versions(record.job_id, "train", train.attempt)
            updates = store.async_updates(record.job_id, "train", train.attempt)
            metrics = outputs.metrics(store, record.job_id, "train")
            data = outputs.data(store, record.job_id, "train")["tasks"]["train"]
            result = JobResult.from_store(store, record.job_id)

    assert out["versions"] == 4 and out["stopped_because"] == "version 4 of 4 published"
    assert [v["version"] for v in versions] == [1, 2, 3, 4]
    assert all(len(v["updates"]) == 2 for v in versions)
    statuses = {row["status"] for row in updates}
    assert UpdateStatus.IN_FLIGHT.value not in statuses
    applied = [row for row in updates if row["status"] == "applied"]
    assert len(applied) == 8 == out["updates"]["applied"]
    assert sorted(row["applied_in"] for row in applied) == [1, 1, 2, 2, 3, 3, 4, 4]
    assert all(row["sample_size"] and row["staleness"] is not None for row in applied)
    assert sum(out["updates"].values()) == len(updates) == len(data["updates"])
    rounds = metrics["tasks"]["train"]["rounds"]
    assert [r["round"] for r in rounds] == [1, 2, 3, 4]
    assert "accuracy" in rounds[-1]["metrics"] and rounds[-1]["nodes"]
    assert [row.round for row in result.rounds["train"]] == [1, 2, 3, 4]
    shown = Cli(tmp_path / "researcher")("output", "metrics", record.job_id).stdout
    assert "metrics by version" in shown and "accuracy" in shown
    assert set(result.models["train"]) == {"coef", "intercept"}
    # The nodes' progress while they trained: in the store under the task, each record under
    # the request and the version (its round) it trained on; every applied update reported.
    base = {row["request_id"]: row["base_version"] for row in updates}
    assert progress and {(p.job_id, p.task) for p in progress} == {(record.job_id, "train")}
    assert all(p.round == base[p.request_id] for p in progress)
    assert {row["request_id"] for row in applied} <= {p.request_id for p in progress}
    assert all({"iteration", "loss"} <= set(p.values) for p in progress)
    # The job's monitor saw what the store kept, in the same order.
    assert [(e.request_id, e.node_id, e.values) for e in seen] == [
        (p.request_id, p.node_id, p.values) for p in progress
    ]


def test_secure_aggregation_is_refused_in_an_asynchronous_task() -> None:
    job = FedJob("refused")
    plan = job.plan(BreastCancerPlan)
    with pytest.raises(ValueError, match="cannot run in asynchronous mode"):
        job.to_nodes(AsyncTrainingTask(name="train", plan=plan, secagg=True))
    yaml_text = (
        async_job()
        .spec.to_yaml()
        .replace("kind: async_training", "kind: async_training\n  secagg: true")
    )
    with pytest.raises(SpecError, match="pairwise masks"):
        JobSpec.from_yaml(yaml_text)


def test_an_asynchronous_task_must_end() -> None:
    with pytest.raises(ValueError, match="max_versions or a time_budget"):
        AsyncTrainingTask(name="train", plan="p", fedbuff={"max_versions": None})
