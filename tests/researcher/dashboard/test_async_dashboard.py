"""The dashboard on an asynchronous training task: versions rather than rounds, the staleness
of the applied updates, each update's fate and the requests in flight."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from researcher.dashboard.snapshot import read_job
from researcher.jobs.buffered_records import UpdateRecord, UpdateStatus
from researcher.orchestration.lifecycle import State
from researcher.orchestration.spec import JobSpec
from researcher.orchestration.store.job_store import JobStore
from tests.researcher.dashboard.test_dashboard import sections_of
from tests.researcher.orchestration.test_async_training import async_job
from tests.researcher.orchestration.test_scheduler import network, scheduler_for


def async_part(html: str) -> str:
    """The asynchronous training task's part of the job section."""
    found = re.search(r'<div class="training async".*', html, re.DOTALL)
    assert found is not None, html
    return found.group(0)


@pytest.mark.anyio
async def test_a_finished_asynchronous_job_shows_its_versions_staleness_and_fates(
    tmp_path: Path,
) -> None:
    async with network(tmp_path) as requests:
        with JobStore(tmp_path / "researcher") as store:
            scheduler = scheduler_for(tmp_path, requests, store)
            job = scheduler.submit(JobSpec.from_yaml(async_job(versions=3).spec.to_yaml()))
            finished = await scheduler.run_job(job.job_id)
            detail = read_job(store, job.job_id, progress=store.progress(job.job_id))
            updates = store.async_updates(job.job_id, "train", 1)

    assert finished.state is State.SUCCESS, finished.reason
    assert detail.training == []  # no rounds view for it
    (view,) = detail.asynchronous
    assert (view.task, view.state, view.version, view.max_versions) == ("train", "success", 3, 3)
    assert [v.number for v in view.versions] == [1, 2, 3]
    assert all(len(v.staleness) == 2 == len(v.nodes) for v in view.versions)
    assert all("accuracy" in v.metrics for v in view.versions)
    assert view.fates["applied"] == 6 and view.fates["in_flight"] == 0
    assert sum(view.fates.values()) == len(updates)
    assert view.in_flight == []
    # The nodes' progress, stored by the task: its last versions' reports, charted live.
    assert view.progress and {p.round for p in view.progress} <= {0, 1, 2}
    assert {p.node_id for p in view.progress} == {"n1", "n2"}

    html = async_part(sections_of(detail)["job"])
    assert (
        '<span class="version-counter" data-task="train" data-version="3" '
        'data-versions="3">version 3 of 3</span>'
    ) in html
    assert 'data-chart="accuracy" data-points="3"' in html
    assert 'data-chart="staleness of applied updates" data-points="6"' in html  # mean, max
    loss = sum("loss" in p.values for p in view.progress)
    assert f'data-chart="live loss" data-points="{loss}"' in html
    assert '<td data-fate="applied">6</td>' in html
    assert all(f'data-fate="{status.value}"' in html for status in UpdateStatus)
    assert [int(n) for n in re.findall(r'<tr data-version="(\d+)">', html)] == [3, 2, 1]
    assert "No request in flight." in html
    assert "round" not in html.lower()


def running_async_job(store: JobStore) -> str:
    """An asynchronous task of at most 4 versions that has published none yet: requests u1
    (n1) and u3 (n2) are in flight, u2 (n2) was lost; written as the task writes it."""
    job = store.create_job(async_job(versions=4).spec, researcher_id="alice")
    store.set_job_state(job.job_id, State.RUNNING, "running on n1, n2")
    store.set_task_state(job.job_id, "train", State.RUNNING, "started")
    store.record_update_sent(job.job_id, "train", 1, "u1", "n1", 0)
    store.record_update_sent(job.job_id, "train", 1, "u2", "n2", 0)
    store.record_update_sent(job.job_id, "train", 1, "u3", "n2", 0)
    store.settle_update(
        job.job_id, "train", 1,
        UpdateRecord("u2", "n2", 0, UpdateStatus.LOST, reason="n2 went away"),
    )  # fmt: skip
    return job.job_id


def test_a_running_asynchronous_task_shows_the_requests_in_flight(tmp_path: Path) -> None:
    with JobStore(tmp_path) as store:
        detail = read_job(store, running_async_job(store))

    (view,) = detail.asynchronous
    assert (view.version, view.max_versions, view.versions) == (0, 4, [])
    assert [(u.node_id, u.base_version) for u in view.in_flight] == [("n1", 0), ("n2", 0)]
    assert all(u.waited is not None and u.waited >= 0 for u in view.in_flight)
    assert view.fates["lost"] == 1 and view.fates["in_flight"] == 2
    html = async_part(sections_of(detail)["job"])
    assert ">version 0 of 4</span>" in html and "2 request(s) in flight" in html
    assert '<tr data-node="n1"><td>n1</td><td>0</td>' in html
    assert '<td data-fate="lost">1</td>' in html and "No version yet." in html
    assert 'data-chart="staleness of applied updates" data-points="0"' in html
