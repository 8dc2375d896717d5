"""A plan's progress reports: nothing off a node, never an error, only numbers kept."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest

from training_plans.linear import SklearnLinearPlan
from training_plans.logistic import LogisticRegressionPlan
from training_plans.mlp import MLPPlan
from training_plans.plan import TrainingPlan
from training_plans.progress import (
    MAX_NAME,
    MAX_VALUES,
    progress_values,
    set_progress_sink,
)


class Sink:
    """Takes every report; ``due`` as told; may be broken."""

    def __init__(self, *, due: bool = True, broken: bool = False) -> None:
        self.reports: list[dict[str, float]] = []
        self.is_due = due
        self.broken = broken

    def due(self) -> bool:
        if self.broken:
            raise RuntimeError("broken sink")
        return self.is_due

    def report(self, values: dict[str, float]) -> None:
        if self.broken:
            raise BrokenPipeError("the node is gone")
        self.reports.append(values)


@pytest.fixture
def sink() -> Iterator[Sink]:
    installed = Sink()
    previous = set_progress_sink(installed)
    try:
        yield installed
    finally:
        set_progress_sink(previous)


def _data() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(100, 3))
    return x, (x[:, 0] > 0).astype(float)


def test_off_a_node_reporting_does_nothing_and_nothing_is_due() -> None:
    plan = LogisticRegressionPlan()
    assert set_progress_sink(None) is None
    plan.report_progress(iteration=1, loss=0.5)
    assert plan.progress_due() is False


def test_only_named_numbers_are_kept(sink: Sink) -> None:
    plan = LogisticRegressionPlan()
    plan.report_progress(
        iteration=3, loss=np.float32(0.25), accuracy=np.array(0.5), note="text", flag=True,
        nothing=None, vector=np.ones(3), **{"x" * (MAX_NAME + 1): 1.0},
    )  # fmt: skip
    assert sink.reports == [{"iteration": 3.0, "loss": 0.25, "accuracy": 0.5}]
    assert len(progress_values({f"v{i}": i for i in range(2 * MAX_VALUES)})) == MAX_VALUES


def test_a_broken_sink_never_fails_the_plan() -> None:
    previous = set_progress_sink(Sink(broken=True))
    try:
        plan = LogisticRegressionPlan()
        plan.report_progress(iteration=1, loss=0.1)
        assert plan.progress_due() is False
        plan.init_model({"n_features": 3})
        x, y = _data()
        assert "loss" in plan.train(x, y, {"epochs": 1})
    finally:
        set_progress_sink(previous)


@pytest.mark.parametrize(
    ("plan", "model_args"),
    [
        (LogisticRegressionPlan(), {"n_features": 3}),
        (MLPPlan(), {"n_features": 3, "n_classes": 2, "hidden": 4}),
        (SklearnLinearPlan(), {"n_features": 3, "estimator": "SGDRegressor"}),
    ],
)
def test_the_ready_plans_report_iteration_and_loss_and_end_with_their_last_step(
    sink: Sink, plan: TrainingPlan, model_args: dict[str, object]
) -> None:
    plan.init_model(model_args)
    x, y = _data()
    plan.train(x, y, {"epochs": 2, "batch_size": 10})
    steps = 2 * 10
    assert [r["iteration"] for r in sink.reports] == [*range(1, steps + 1), steps]
    assert all("loss" in r for r in sink.reports)


def test_the_ready_plans_skip_the_batch_loss_when_no_report_is_due(sink: Sink) -> None:
    sink.is_due = False
    plan = LogisticRegressionPlan()
    plan.init_model({"n_features": 3})
    x, y = _data()
    result = plan.train(x, y, {"epochs": 2, "batch_size": 10})
    assert sink.reports == [{"iteration": 20.0, "loss": result["loss"]}]
