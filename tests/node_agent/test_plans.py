"""The training plan registry: content ids, statuses, persistence."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from broker_net.codes import TrainingPlanStatus
from node_agent.plans import (
    PlanInvalidError,
    PlanNotFoundError,
    PlanRegistry,
    compute_plan_id,
    normalise_source,
)

SOURCE = "class Plan:\n    def train(self):\n        return 1\n"
SAME_CODE = "# a comment\nclass Plan:\n\n    def train(self):   # why\n        return (1)\n"
OTHER_CODE = "class Plan:\n    def train(self):\n        return 2\n"


@pytest.fixture
def plans(tmp_path: Path):
    with PlanRegistry(tmp_path) as plans:
        yield plans


def test_plan_id_is_the_sha256_of_the_normalised_source():
    assert compute_plan_id(SOURCE) == hashlib.sha256(normalise_source(SOURCE).encode()).hexdigest()
    assert compute_plan_id(SAME_CODE) == compute_plan_id(SOURCE)
    assert compute_plan_id(OTHER_CODE) != compute_plan_id(SOURCE)


@pytest.mark.parametrize("source", ["def broken(:\n", "x = 1\x00\n"])
def test_invalid_python_is_refused(plans, source):
    with pytest.raises(PlanInvalidError, match="not valid Python"):
        compute_plan_id(source)
    with pytest.raises(PlanInvalidError):
        plans.register(source)
    with pytest.raises(PlanInvalidError):
        plans.status(source)


def test_register_makes_pending_and_is_idempotent(plans):
    assert plans.status(SOURCE) is TrainingPlanStatus.NOT_REGISTERED

    record = plans.register(SOURCE, description="logistic", researcher_id="alice")

    assert record.status is TrainingPlanStatus.PENDING
    assert record.plan_id == compute_plan_id(SOURCE)
    assert record.description == "logistic" and record.researcher_id == "alice"
    again = plans.register(SAME_CODE, description="other words", researcher_id="bob")
    assert again == record
    assert plans.status(SAME_CODE) is TrainingPlanStatus.PENDING
    assert len(plans.list()) == 1


def test_approve_reject_and_a_rejected_plan_stays_rejected(plans):
    plan_id = plans.register(SOURCE).plan_id

    approved = plans.approve(plan_id, note="reviewed")
    assert approved.status is TrainingPlanStatus.APPROVED and approved.note == "reviewed"
    assert plans.status(SOURCE) is TrainingPlanStatus.APPROVED

    plans.reject(plan_id[:10], note="uses too much memory")
    plans.register(SOURCE)
    assert plans.status(SOURCE) is TrainingPlanStatus.REJECTED
    assert plans.show(plan_id).note == "uses too much memory"


def test_list_show_and_unknown_ids(plans):
    first = plans.register(SOURCE).plan_id
    second = plans.register(OTHER_CODE).plan_id
    plans.approve(second)

    assert [r.plan_id for r in plans.list()] == [first, second]
    assert [r.plan_id for r in plans.list(TrainingPlanStatus.APPROVED)] == [second]
    assert plans.show(first).source == SOURCE
    with pytest.raises(PlanNotFoundError) as caught:
        plans.approve("f" * 64)
    assert isinstance(caught.value, KeyError)
    with pytest.raises(PlanNotFoundError, match="at least"):
        plans.show(first[:3])


def test_statuses_survive_reopening(tmp_path: Path):
    with PlanRegistry(tmp_path) as plans:
        plan_id = plans.register(SOURCE).plan_id
        plans.approve(plan_id)
    with PlanRegistry(tmp_path) as reopened:
        assert reopened.status(SOURCE) is TrainingPlanStatus.APPROVED
        assert reopened.show(plan_id).status is TrainingPlanStatus.APPROVED
    assert (tmp_path / "plans.sqlite").is_file()
