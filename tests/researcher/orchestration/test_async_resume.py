"""A researcher process killed with SIGKILL during asynchronous training, and resumed by
another process: the task continues from its last committed version, the requests it had in
flight are resumed from the durable reply queue, and every update ends settled."""

from __future__ import annotations

import signal
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest

from researcher.jobs.buffered_records import UpdateStatus
from researcher.orchestration.lifecycle import State
from researcher.orchestration.store.job_store import JobStore
from tests.researcher.orchestration.test_async_training import async_job
from tests.researcher.orchestration.test_fedjob_broker import (
    NODES,
    Federation,
    running_federation,
)
from tests.researcher.orchestration.test_resume import (
    approve_in_advance,
    queued_replies,
    submit_in_background,
)

pytestmark = [pytest.mark.rabbitmq, pytest.mark.anyio]

VERSIONS = 8
KILL_AFTER = 2


@pytest.fixture
def federation(amqp_url: str, namespace: str, tmp_path: Path) -> Iterator[Federation]:
    with running_federation(amqp_url, namespace, tmp_path) as started:
        yield started


async def wait_for_requests_in_flight(store: JobStore) -> tuple[str, set[str]]:
    """Wait until version ``KILL_AFTER`` is committed and a request reached its node and is
    unanswered; return the job and the requests in that state."""
    with anyio.fail_after(60):
        while True:
            jobs = store.jobs()
            if jobs and store.task(jobs[0].job_id, "train").state is State.RUNNING:
                job_id = jobs[0].job_id
                versions = store.versions(job_id, "train", 1)
                flying = store.async_updates(job_id, "train", 1, UpdateStatus.IN_FLIGHT)
                reached = {
                    row["request_id"]
                    for row in flying
                    if (flight := store.in_flight(job_id, "train", 1, row["request_id"]))
                    and flight.sent_at
                    and not flight.answered
                }
                if len(versions) >= KILL_AFTER and reached:
                    return job_id, reached
            await anyio.sleep(0.005)


@pytest.mark.timeout(240)
async def test_asynchronous_training_killed_mid_job_resumes_from_the_reply_queue(
    federation: Federation, rabbitmq_vhost: str, tmp_path: Path
) -> None:
    job = async_job("async-resumed", versions=VERSIONS, min_nodes=len(NODES))
    approve_in_advance(federation, job.spec.plans["BreastCancerPlan"].source)
    spec = job.export(tmp_path / "job.yaml")

    researcher = submit_in_background(federation, spec)
    try:
        with JobStore(federation.researcher_dir) as store:
            job_id, in_flight = await wait_for_requests_in_flight(store)
            researcher.send_signal(signal.SIGKILL)
            await anyio.to_thread.run_sync(researcher.wait, 10)
            committed = [v["version"] for v in store.versions(job_id, "train", 1)]
            assert store.job(job_id).orphaned
    finally:
        if researcher.poll() is None:
            researcher.kill()

    # The nodes answer the dead researcher: their replies wait in its durable queue.
    with anyio.fail_after(30):
        while await queued_replies(federation, rabbitmq_vhost) < len(in_flight):
            await anyio.sleep(0.1)

    resumed = await federation.cli("job", "resume", job_id)

    assert resumed["state"] == "success", resumed["reason"]
    with anyio.fail_after(15):  # the management API refreshes its figures every few seconds
        while await queued_replies(federation, rabbitmq_vhost) != 0:
            await anyio.sleep(0.2)
    with JobStore(federation.researcher_dir) as store:
        train = store.task(job_id, "train")
        assert train.state is State.SUCCESS and train.attempt == 1, train.reason
        versions = store.versions(job_id, "train", 1)
        updates = {row["request_id"]: row for row in store.async_updates(job_id, "train", 1)}
        rounds = store.rounds(job_id, "train")
        history = [(e.task, e.to_state) for e in store.history(job_id)]
    assert [v["version"] for v in versions] == list(range(1, VERSIONS + 1))
    assert [r.round for r in rounds] == list(range(1, VERSIONS + 1))
    assert committed == list(range(1, len(committed) + 1)) and len(committed) >= KILL_AFTER
    assert history.count(("train", State.RUNNING)) == 1
    statuses = {row["status"] for row in updates.values()}
    assert UpdateStatus.IN_FLIGHT.value not in statuses
    assert UpdateStatus.LOST.value not in statuses, [r for r in updates.values() if r["reason"]]
    # The requests in flight at the crash were taken up again, not lost: their replies came
    # from the durable queue, and the first of them filled the resumed buffer.
    resumed_fates = {updates[request_id]["status"] for request_id in in_flight}
    assert UpdateStatus.APPLIED.value in resumed_fates
    for version in versions:
        assert len(version["updates"]) == 2
        assert all(updates[r]["status"] == "applied" for r in version["updates"])
        assert all(updates[r]["applied_in"] == version["version"] for r in version["updates"])
    applied = [r for r in updates.values() if r["status"] == "applied"]
    assert len(applied) == 2 * VERSIONS
    assert train.outputs is not None and train.outputs["versions"] == VERSIONS
