"""A researcher process killed with SIGKILL during a training round, and resumed by another
process: the job finishes and every round has every node's reply exactly once."""

from __future__ import annotations

import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import anyio
import httpx
import pytest

from broker_net.topology import Topology
from node_agent.plans import PlanRegistry
from researcher.orchestration.fedjob import JobResult
from researcher.orchestration.lifecycle import State
from researcher.orchestration.model_specs import EvaluationSpec
from researcher.orchestration.store.job_store import JobStore
from researcher.orchestration.trained_models import EVALUATION_SLOT
from simulation.federation import simulate_async
from tests.conftest import ADMIN, MANAGEMENT_URL
from tests.researcher.orchestration.test_fedjob_broker import (
    NODES,
    RESEARCHER,
    Federation,
    assert_same_results,
    running_federation,
)
from tests.researcher.orchestration.test_scheduler import training_job
from tests.support.processes import ROOT

pytestmark = [pytest.mark.rabbitmq, pytest.mark.anyio]

ROUNDS = 3
KILL_IN_ROUND = 2


@pytest.fixture
def federation(amqp_url: str, namespace: str, tmp_path: Path) -> Iterator[Federation]:
    with running_federation(amqp_url, namespace, tmp_path) as started:
        yield started


def approve_in_advance(federation: Federation, source: str) -> None:
    """The nodes' operators approve the plan before the job is submitted."""
    for node in NODES:
        with PlanRegistry(federation.nodes_dir / node) as plans:
            plans.approve(plans.register(source, description="reviewed").plan_id)


def submit_in_background(federation: Federation, spec: Path) -> subprocess.Popen[bytes]:
    """``researcher job submit`` of ``spec`` in a process of its own, for a test to kill."""
    return subprocess.Popen(
        [sys.executable, "-m", "researcher.cli.jobs", "job", "submit", str(spec)],
        env=federation.env(), cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip


async def wait_for_round_in_flight(
    store: JobStore, job_id: str | None = None, slot: str = f"round-{KILL_IN_ROUND}"
) -> str:
    """Wait until the request of ``slot`` went to every node and none has answered."""
    with anyio.fail_after(45):
        while True:
            jobs = store.jobs()
            if jobs:
                job_id = jobs[0].job_id
                task = store.task(job_id, "train")
                flight = store.in_flight(job_id, "train", task.attempt, slot)
                if flight and len(flight.sent_at) == len(NODES) and not flight.answered:
                    return job_id
            await anyio.sleep(0.01)


async def queued_replies(federation: Federation, vhost: str) -> int:
    queue = Topology(federation.namespace).researcher_queue(RESEARCHER).name
    async with httpx.AsyncClient(base_url=MANAGEMENT_URL + "/api", auth=ADMIN) as client:
        response = await client.get(f"/queues/{quote(vhost, safe='')}/{quote(queue, safe='')}")
        response.raise_for_status()
        return int(response.json().get("messages", 0))


async def test_a_researcher_killed_mid_round_resumes_and_loses_no_reply(
    federation: Federation, rabbitmq_vhost: str, tmp_path: Path
) -> None:
    job = training_job("resumed", rounds=ROUNDS, min_nodes=len(NODES))
    approve_in_advance(federation, job.spec.plans["BreastCancerPlan"].source)
    spec = job.export(tmp_path / "job.yaml")

    researcher = submit_in_background(federation, spec)
    try:
        with JobStore(federation.researcher_dir) as store:
            job_id = await wait_for_round_in_flight(store)
            researcher.send_signal(signal.SIGKILL)
            await anyio.to_thread.run_sync(researcher.wait, 10)
            before = store.in_flight(job_id, "train", 1, f"round-{KILL_IN_ROUND}")
            assert before is not None
            orphan = store.job(job_id)
            assert orphan.state is State.RUNNING and orphan.orphaned
            assert [r.round for r in store.rounds(job_id, "train")] == [KILL_IN_ROUND - 1]
    finally:
        if researcher.poll() is None:
            researcher.kill()

    # The nodes answer the dead researcher: their replies wait in its durable queue.
    unanswered = len(NODES) - len(before.answered)
    with anyio.fail_after(30):
        while await queued_replies(federation, rabbitmq_vhost) < unanswered:
            await anyio.sleep(0.1)

    resumed = await federation.cli("job", "resume", job_id)

    assert resumed["state"] == "success", resumed["reason"]
    with anyio.fail_after(15):  # the management API refreshes its figures every few seconds
        while await queued_replies(federation, rabbitmq_vhost) != 0:
            await anyio.sleep(0.2)
    with JobStore(federation.researcher_dir) as store:
        train = store.task(job_id, "train")
        assert train.state is State.SUCCESS and train.attempt == 1, train.reason
        rounds = store.rounds(job_id, "train")
        assert [r.round for r in rounds] == list(range(1, ROUNDS + 1))
        assert rounds[KILL_IN_ROUND - 1].request_id == before.request_id
        results = store.node_results(job_id, "train", all_attempts=True)
        for row in rounds:
            replies = [r for r in results if r["round"] == row.round]
            assert sorted(r["node_id"] for r in replies) == NODES, row.round
            assert {r["status"] for r in replies} == {"SUCCESS"}
            assert {r["request_id"] for r in replies} == {row.request_id}
            assert row.failed == {}
        history = [(e.task, e.to_state) for e in store.history(job_id)]
        assert history.count(("train", State.RUNNING)) == 1
        resumed_result = JobResult.from_store(store, job_id)
    assert_same_results(resumed_result, await simulate_async(job, len(NODES)))


async def test_a_researcher_killed_mid_evaluation_resumes_with_every_evaluation_once(
    federation: Federation, rabbitmq_vhost: str, tmp_path: Path
) -> None:
    # Training and evaluation rounds alternate; the kill comes while the evaluation of round
    # KILL_IN_ROUND is with the nodes. Resumed, the job evaluates every round once, from the
    # replies the dead researcher left in its queue, and picks the same best model.
    evaluation = EvaluationSpec(every=1, metric="accuracy")
    job = training_job("evaluated", rounds=ROUNDS, min_nodes=len(NODES), evaluation=evaluation)
    approve_in_advance(federation, job.spec.plans["BreastCancerPlan"].source)
    spec = job.export(tmp_path / "job.yaml")
    slot = f"{EVALUATION_SLOT}{KILL_IN_ROUND}"
    researcher = submit_in_background(federation, spec)
    try:
        with JobStore(federation.researcher_dir) as store:
            job_id = await wait_for_round_in_flight(store, slot=slot)
            researcher.send_signal(signal.SIGKILL)
            await anyio.to_thread.run_sync(researcher.wait, 10)
            before = store.in_flight(job_id, "train", 1, slot)
            assert before is not None
    finally:
        if researcher.poll() is None:
            researcher.kill()

    resumed = await federation.cli("job", "resume", job_id)

    assert resumed["state"] == "success", resumed["reason"]
    with JobStore(federation.researcher_dir) as store:
        train = store.task(job_id, "train")
        assert train.state is State.SUCCESS and train.attempt == 1, train.reason
        evaluations = [
            r for r in store.node_results(job_id, "train", all_attempts=True)
            if r["slot"].startswith(EVALUATION_SLOT)
        ]  # fmt: skip
        for number in range(1, ROUNDS + 1):
            answers = [r for r in evaluations if r["round"] == number]
            assert sorted(r["node_id"] for r in answers) == NODES, number
            assert {r["status"] for r in answers} == {"SUCCESS"}, number
        killed = [r for r in evaluations if r["round"] == KILL_IN_ROUND]
        assert {r["request_id"] for r in killed} == {before.request_id}
        resumed_result = JobResult.from_store(store, job_id)
    simulated = await simulate_async(job, len(NODES))
    assert_same_results(resumed_result, simulated)
    mine, theirs = resumed_result.outputs["train"], simulated.outputs["train"]
    assert [e["round"] for e in mine["evaluations"]] == list(range(1, ROUNDS + 1))
    for evaluated, reference in zip(mine["evaluations"], theirs["evaluations"], strict=True):
        assert evaluated["metrics"] == pytest.approx(reference["metrics"], rel=1e-9)
    assert mine["best"]["round"] == theirs["best"]["round"]
