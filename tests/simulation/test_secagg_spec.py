"""A job spec that switches secure aggregation on for an analytics and a training task, run in
simulation, and the spec errors its settings give."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from researcher.orchestration.fedjob import FedJob
from researcher.orchestration.lifecycle import State
from researcher.orchestration.round_specs import SecaggSpec
from researcher.orchestration.spec import JobSpec
from researcher.orchestration.task_specs import SpecError
from simulation.federation import simulate
from tests.simulation.test_strategy_spec import spec_text

SECURE_STATS = """\
- kind: analytics
  name: secure-stats
  nodes: all
  stats: [count, sum, mean, std]
  exclude_columns: [target]
  secagg: {value_range: 10000, max_rows: 100000}
"""


def secure_spec(training: str) -> str:
    text = spec_text(training)
    return text.replace("- kind: preprocessing", SECURE_STATS + "- kind: preprocessing", 1)


def test_a_spec_with_secure_aggregation_runs_in_simulation(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="researcher.jobs.secagg")
    spec = JobSpec.from_yaml(secure_spec("secagg: {value_range: 100, precision_bits: 32}"))
    assert spec.task("secure-stats").secagg == SecaggSpec(value_range=1e4, max_rows=100000)  # type: ignore[union-attr]
    assert JobSpec.from_yaml(spec.to_yaml()) == spec

    result = simulate(FedJob.from_spec(spec), 3, workspace=tmp_path / "run")

    assert result.state is State.SUCCESS, result.reason
    setups = [r for r in caplog.records if "set up with site-1, site-2, site-3" in r.getMessage()]
    assert len(setups) == 2  # the secure analytics task's, the training task's
    plain, secure = result.outputs["stats"], result.outputs["secure-stats"]
    assert secure["columns"] == plain["columns"] and secure["n_rows"] == plain["n_rows"]
    for column in plain["columns"]:
        assert secure["count"][column] == plain["count"][column]
        magnitude = abs(plain["mean"][column]) * plain["count"][column]  # values are >= 0
        assert (
            abs(secure["mean"][column] - plain["mean"][column]) * plain["count"][column]
            <= 1e-9 * magnitude
        )
        assert secure["std"][column] == pytest.approx(plain["std"][column], rel=1e-6)
    assert len(result.rounds["train"]) == 3
    assert result.outputs["train"]["metrics"]["accuracy"] > 0.8


def test_secagg_true_takes_the_defaults() -> None:
    spec = JobSpec.from_yaml(secure_spec("secagg: true"))
    assert spec.task("train").secagg is True  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("training", "message"),
    [
        ("secagg: {value_range: 0}", "value_range"),
        ("secagg: {value_range: .inf}", "value_range"),
        ("secagg: {precision_bits: -1}", "precision_bits"),
        ("secagg: {digits: 3}", "digits"),
        ("secagg: {max_rows: 10}", "max_rows is for analytics tasks"),
        ("secagg: maybe", "secagg"),
    ],
)
def test_bad_secagg_settings_are_clear_errors(training: str, message: str) -> None:
    with pytest.raises(SpecError, match=message):
        JobSpec.from_yaml(secure_spec(training))


def test_statistics_secure_aggregation_cannot_compute_are_refused_in_the_spec() -> None:
    text = secure_spec("").replace("stats: [count, sum, mean, std]", "stats: [mean, min, max]")
    with pytest.raises(SpecError, match="max, min cannot be computed under secure aggregation"):
        JobSpec.from_yaml(text)
