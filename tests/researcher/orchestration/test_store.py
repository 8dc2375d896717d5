"""The job store and its state machine."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest

from researcher.orchestration.fedjob import FedJob
from researcher.orchestration.lifecycle import TRANSITIONS, State, TransitionError, check_transition
from researcher.orchestration.scheduler import stop_job
from researcher.orchestration.store.job_store import JobStore
from researcher.orchestration.store.records import (
    JobNotFoundError,
    NodeResult,
    RoundRow,
    this_process,
)
from researcher.orchestration.task_specs import AnalyticsTask, TrainingTask


def _spec(name: str = "job", priority: int = 0):  # type: ignore[no-untyped-def]
    job = FedJob(name, priority=priority)
    stats = job.to_nodes(AnalyticsTask(name="stats"))
    job.to(TrainingTask(name="train", plan=job.plan(_plan()), depends_on=[stats.name]), "n1")
    return job.spec


def _plan():  # type: ignore[no-untyped-def]
    from simulation.demo_plan import BreastCancerPlan

    return BreastCancerPlan


@pytest.fixture
def store(tmp_path: Path):  # type: ignore[no-untyped-def]
    with JobStore(tmp_path) as opened:
        yield opened


def test_the_state_machine_allows_exactly_its_transitions() -> None:
    allowed = {(a, b) for a, targets in TRANSITIONS.items() for b in targets}
    assert (State.RUNNING, State.SUCCESS) in allowed
    assert (State.FAILED, State.WAITING) in allowed
    for current in State:
        for wanted in State:
            if (current, wanted) in allowed:
                check_transition("x", current, wanted)
            else:
                with pytest.raises(TransitionError, match=f"from {current.value} to"):
                    check_transition("x", current, wanted)
    assert not TRANSITIONS[State.SUCCESS]
    assert all(not state.finished for state in (State.WAITING, State.RUNNING))


def test_a_new_job_waits_with_its_tasks_and_says_why(store: JobStore) -> None:
    job = store.create_job(_spec(), researcher_id="alice")

    assert job.state is State.WAITING and "waiting for a scheduler" in job.reason
    assert [t.name for t in store.tasks(job.job_id)] == ["stats", "train"]
    assert all(t.state is State.WAITING and t.attempt == 0 for t in store.tasks(job.job_id))
    assert job.spec == _spec()
    assert [(e.task, e.to_state) for e in store.history(job.job_id)] == [
        (None, State.WAITING), ("stats", State.WAITING), ("train", State.WAITING)
    ]  # fmt: skip


def test_transitions_are_enforced_and_recorded(store: JobStore) -> None:
    job = store.create_job(_spec(), researcher_id="alice")
    with pytest.raises(TransitionError):
        store.set_job_state(job.job_id, State.TIMEOUT, "never ran")
    with pytest.raises(TransitionError):
        store.set_task_state(job.job_id, "stats", State.TIMEOUT, "not running")

    store.set_job_state(job.job_id, State.RUNNING, "started")
    first = store.set_task_state(job.job_id, "stats", State.RUNNING, "go")
    store.set_task_state(job.job_id, "stats", State.FAILED, "broke")
    store.set_task_state(job.job_id, "stats", State.WAITING, "retry")
    second = store.set_task_state(job.job_id, "stats", State.RUNNING, "go again")
    done = store.set_task_state(job.job_id, "stats", State.SUCCESS, "ok", outputs={"mean": 1})

    assert (first.attempt, second.attempt) == (1, 2)
    assert done.outputs == {"mean": 1} and done.ended_at is not None
    with pytest.raises(TransitionError, match="cannot go from success to waiting"):
        store.set_task_state(job.job_id, "stats", State.WAITING, "rerun a success")
    reasons = [e.reason for e in store.history(job.job_id) if e.task == "stats"]
    assert reasons == ["submitted", "go", "broke", "retry", "go again", "ok"]


def test_unknown_jobs_and_tasks_are_reported(store: JobStore) -> None:
    with pytest.raises(JobNotFoundError, match="no job has id 'nope'"):
        store.job("nope")
    job = store.create_job(_spec(), researcher_id="alice")
    with pytest.raises(JobNotFoundError, match="has no task 'nope'"):
        store.task(job.job_id, "nope")


def test_waiting_jobs_come_by_priority_then_age(store: JobStore) -> None:
    low = store.create_job(_spec("low", 0), researcher_id="alice")
    high = store.create_job(_spec("high", 3), researcher_id="alice")
    low_later = store.create_job(_spec("low-later", 0), researcher_id="alice")
    assert [j.job_id for j in store.waiting_jobs()] == [high.job_id, low.job_id, low_later.job_id]


def test_recent_jobs_list_the_newest_without_their_specs(store: JobStore) -> None:
    jobs = [store.create_job(_spec(f"job-{n}"), researcher_id="alice") for n in range(3)]
    store.set_job_state(jobs[2].job_id, State.RUNNING, "running on n1")
    store.set_job_nodes(jobs[2].job_id, ["n1"], {"n1": "data"})
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)  # fmt: skip
    store.claim(jobs[2].job_id, f"{this_process().rpartition(':')[0]}:{dead.stdout.strip()}")

    listed = store.recent_jobs(2)

    assert [j.job_id for j in listed] == [jobs[2].job_id, jobs[1].job_id]
    newest = listed[0]
    assert (newest.name, newest.state, newest.reason, newest.nodes) == (
        "job-2", State.RUNNING, "running on n1", ["n1"]
    )  # fmt: skip
    assert newest.orphaned and not listed[1].orphaned
    assert not hasattr(newest, "spec")


def test_recent_jobs_list_every_job_or_those_in_some_states_as_jobs_do(store: JobStore) -> None:
    jobs = [store.create_job(_spec(f"job-{n}"), researcher_id="alice") for n in range(3)]
    store.set_job_state(jobs[1].job_id, State.RUNNING, "running on n1")
    store.set_job_nodes(jobs[1].job_id, ["n1"], {"n1": "data"})

    assert [j.as_dict() for j in store.recent_jobs()] == [j.as_dict() for j in store.jobs()]
    running = store.recent_jobs(states=[State.RUNNING])
    assert [j.as_dict() for j in running] == [store.job(jobs[1].job_id).as_dict()]
    assert running[0].datasets == {"n1": "data"}
    both = store.recent_jobs(1, states=[State.WAITING, State.RUNNING])
    assert [j.job_id for j in both] == [jobs[2].job_id]
    assert store.recent_jobs(states=[State.SUCCESS]) == []


def test_in_flight_requests_are_recorded_for_a_resume(store: JobStore) -> None:
    job = store.create_job(_spec(), researcher_id="alice")
    sent = datetime(2030, 1, 1, tzinfo=UTC)
    store.record_request(job.job_id, "train", 1, "round-2", "request_x", ["n1", "n2"])
    store.record_sent("request_x", {"n1": sent, "n2": sent})
    store.record_answer("request_x", "n1")

    flight = store.in_flight(job.job_id, "train", 1, "round-2")

    assert flight is not None and flight.request_id == "request_x"
    assert flight.sent_at == {"n1": sent, "n2": sent} and flight.answered == {"n1"}
    assert store.in_flight(job.job_id, "train", 1, "round-3") is None


def test_a_round_is_committed_once(store: JobStore) -> None:
    job = store.create_job(_spec(), researcher_id="alice")
    store.set_task_state(job.job_id, "train", State.RUNNING, "go")
    model = store.model_dir(job.job_id, "train", 1) / "round-1.npz"
    model.write_bytes(b"")
    row = RoundRow("train", 1, 1, "request_x", {"accuracy": 0.9}, {}, 1.5, "now")
    results = [NodeResult("n1", "request_x", "SUCCESS", metrics={"accuracy": 0.9})]
    store.commit_round(job.job_id, "train", 1, row, results, model, 3)

    with pytest.raises(sqlite3.IntegrityError):
        store.commit_round(job.job_id, "train", 1, row, results, model, 3)
    assert [r.round for r in store.rounds(job.job_id, "train", 1)] == [1]
    assert store.models(job.job_id, "train") == {1: model}
    assert store.task(job.job_id, "train").progress == {"round": 1, "rounds": 3}
    assert len(store.node_results(job.job_id, all_attempts=True)) == 1


def test_a_job_owned_by_a_dead_process_is_orphaned_and_stops_at_once(store: JobStore) -> None:
    job = store.create_job(_spec(), researcher_id="alice")
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)  # fmt: skip
    owner = f"{this_process().rpartition(':')[0]}:{dead.stdout.strip()}"
    assert store.claim(job.job_id, owner)
    store.set_job_state(job.job_id, State.RUNNING, "started")
    store.set_task_state(job.job_id, "stats", State.RUNNING, "go")
    store.set_task_state(job.job_id, "stats", State.SUCCESS, "ok")
    store.set_task_state(job.job_id, "train", State.RUNNING, "go")

    assert store.job(job.job_id).orphaned

    message = stop_job(store, job.job_id)

    assert message.endswith("canceled")
    assert store.job(job.job_id).state is State.CANCELED
    assert {t.name: t.state for t in store.tasks(job.job_id)} == {
        "stats": State.SUCCESS, "train": State.CANCELED
    }  # fmt: skip
    with pytest.raises(ValueError, match="already canceled"):
        stop_job(store, job.job_id)
    assert store.claim(job.job_id), "a dead owner does not hold the job"


def test_a_live_owner_keeps_its_job_and_gets_the_stop_request(store: JobStore) -> None:
    job = store.create_job(_spec(), researcher_id="alice")
    assert store.claim(job.job_id, f"{this_process().rpartition(':')[0]}:{os.getppid()}")
    assert not store.claim(job.job_id)

    assert stop_job(store, job.job_id).startswith("stop requested")
    assert store.job(job.job_id).state is State.WAITING
    assert store.beat(job.job_id) is True
