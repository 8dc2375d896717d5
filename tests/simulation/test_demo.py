"""The demo story end to end: approval, analytics, standardisation and FedAvg; its run as a
job of the job store, and the dashboard beside it."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from researcher.dashboard.snapshot import read_job
from researcher.errors import JobError
from researcher.orchestration.lifecycle import State
from researcher.orchestration.store.job_store import JobStore
from simulation.demo import NODES, run
from simulation.demo_dashboard import demo_dashboard
from simulation.demo_record import DemoRecord

pytestmark = pytest.mark.anyio


@pytest.mark.rabbitmq
async def test_the_demo_over_rabbitmq_matches_central_training(
    amqp_url: str, namespace: str
) -> None:
    result = await run(
        simulate=False, amqp_url=amqp_url, namespace=namespace, rounds=10, non_iid=False
    )
    assert len(result.experiment.rounds) == 10
    assert all(len(record.nodes) == 3 for record in result.experiment.rounds)
    assert abs(result.federated_accuracy - result.centralised_accuracy) <= 0.02
    assert result.federated_accuracy > 0.9


async def test_the_simulation_tells_the_same_story(namespace: str) -> None:
    result = await run(simulate=True, amqp_url="", namespace=namespace, rounds=4, non_iid=True)
    assert len(result.experiment.rounds) == 4
    final = result.experiment.rounds[-1]
    assert set(final.sample_sizes) == {"hospital-a", "hospital-b", "hospital-c"}
    assert final.aggregated_metrics["accuracy"] > 0.85


async def test_the_simulation_with_secure_aggregation(namespace: str) -> None:
    result = await run(
        simulate=True, amqp_url="", namespace=namespace, rounds=3, non_iid=False, secagg=True
    )
    assert all(record.secure_aggregation for record in result.experiment.rounds)
    assert all(len(record.nodes) == 3 for record in result.experiment.rounds)
    assert result.federated_accuracy > 0.85


async def test_the_demo_records_its_run_as_a_job_the_dashboard_shows(
    namespace: str, tmp_path: Path
) -> None:
    result = await run(
        simulate=True, amqp_url="", namespace=namespace, rounds=2, non_iid=False,
        researcher_dir=tmp_path,
    )  # fmt: skip
    with JobStore(tmp_path) as store:
        (job,) = store.jobs()
        tasks = {task.name: task.state for task in store.tasks(job.job_id)}
        progress = store.progress(job.job_id)
        detail = read_job(store, job.job_id)

    assert (job.name, job.state, job.owner) == ("demo-breast-cancer", State.SUCCESS, None)
    assert job.nodes == list(NODES)
    assert tasks == dict.fromkeys(("approve", "check", "stats", "scale", "train"), State.SUCCESS)
    (training,) = detail.training
    assert (training.done, training.total) == (2, 2)
    accuracies = [r.metrics["accuracy"] for r in training.rounds]
    assert accuracies == [r.aggregated_metrics["accuracy"] for r in result.experiment.rounds]
    for view in training.rounds:
        assert {n.node_id: n.status for n in view.nodes} == dict.fromkeys(NODES, "SUCCESS")
    assert {p.node_id for p in progress} == set(NODES)
    assert all("loss" in p.values and p.task == "train" for p in progress)


async def test_the_demo_dashboard_serves_the_demo_folder(tmp_path: Path) -> None:
    async with demo_dashboard(
        tmp_path, amqp_url="amqp://guest:guest@127.0.0.1:1/", namespace="nowhere",
        researcher_id="demo-researcher",
    ) as url:  # fmt: skip
        assert url.startswith("http://127.0.0.1:") and "token=" in url
        async with httpx.AsyncClient() as http:
            page = await http.get(url, timeout=30)
    assert page.status_code == 200
    assert "broker-net dashboard" in page.text and "no job store yet" in page.text


def test_a_failed_demo_leaves_a_failed_job_and_no_task_running(tmp_path: Path) -> None:
    with pytest.raises(JobError, match="no dataset"):
        with DemoRecord(
            tmp_path, "demo-researcher", rounds=3, training_args={}, secagg=False
        ) as record:
            with record.task("approve"):
                pass
            with record.task("stats"):
                raise JobError("no dataset")
    with JobStore(tmp_path) as store:
        (job,) = store.jobs()
        tasks = {task.name: (task.state, task.reason) for task in store.tasks(job.job_id)}

    assert job.state is State.FAILED and job.owner is None
    assert job.reason == "the demo failed: JobError: no dataset"
    assert tasks["approve"] == (State.SUCCESS, "done")
    assert tasks["stats"] == (State.FAILED, "no dataset")
    assert {tasks[name][0] for name in ("check", "scale", "train")} == {State.CANCELED}
