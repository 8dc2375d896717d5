"""A YAML job spec that selects a strategy and a client sampling, run in simulation."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from researcher.jobs.sampling import Sampling
from researcher.orchestration.fedjob import FedJob
from researcher.orchestration.lifecycle import State
from researcher.orchestration.spec import JobSpec
from researcher.orchestration.store.job_store import JobStore
from researcher.orchestration.task_specs import SpecError
from simulation.demo_plan import BreastCancerPlan
from simulation.federation import simulate
from training_plans.plan import plan_source

TRAINING = """
- kind: training
  name: train
  nodes: all
  plan: BreastCancerPlan
  rounds: 3
  depends_on: [check]
  training_args: {{epochs: 1, learning_rate: 0.05}}
  inputs:
    state_ids: {{task: scale, key: state_ids}}
    model_args.n_features: {{task: stats, key: n_features}}
{extra}
"""


def spec_text(extra: str) -> str:
    source = textwrap.indent(plan_source(BreastCancerPlan), "      ")
    return f"""\
version: 1
name: strategies
conf: {{min_nodes: 3}}
datasets: {{tags: [breast-cancer]}}
plans:
  BreastCancerPlan:
    class_name: BreastCancerPlan
    source: |
{source}
tasks:
- kind: plan_approval
  name: approve
  nodes: all
  plan: BreastCancerPlan
- kind: plan_check
  name: check
  nodes: all
  plan: BreastCancerPlan
  depends_on: [approve]
  wait: 30
  poll_interval: 0.2
- kind: analytics
  name: stats
  nodes: all
  stats: [count, mean, std]
  exclude_columns: [target]
- kind: preprocessing
  name: scale
  nodes: all
  preproc_type: standardize
  inputs:
    preproc_args.mean: {{task: stats, key: mean}}
    preproc_args.std: {{task: stats, key: std}}
""" + TRAINING.format(extra=textwrap.indent(extra, "  "))


STRATEGY = """\
strategy: {name: fedadam, server_learning_rate: 0.05, tau: 0.001}
sampling: {fraction: 0.5, seed: 1, min_nodes: 2, mandatory: [site-1]}
"""


def test_a_spec_selects_a_strategy_and_a_sampling_and_runs(tmp_path: Path) -> None:
    path = tmp_path / "job.yaml"
    path.write_text(spec_text(STRATEGY))
    spec = JobSpec.load(path)
    train = spec.task("train")
    assert train.strategy.name == "fedadam"  # type: ignore[union-attr]
    assert train.sampling is not None and train.sampling.fraction == 0.5  # type: ignore[union-attr]
    assert JobSpec.from_yaml(spec.to_yaml()) == spec

    result = simulate(FedJob.from_spec(spec), 3, workspace=tmp_path / "run")

    assert result.state is State.SUCCESS, result.reason
    assert len(result.rounds["train"]) == 3
    assert result.outputs["train"]["metrics"]["accuracy"] > 0.8
    nodes = ["site-1", "site-2", "site-3"]
    sampling = Sampling(fraction=0.5, seed=1, min_nodes=2, mandatory=("site-1",))
    with JobStore(tmp_path / "run" / "researcher") as store:
        answered = store.node_results(result.job_id, "train")
        models = store.models(result.job_id, "train")
    for number in (1, 2, 3):
        asked = sorted(r["node_id"] for r in answered if r["round"] == number)
        assert asked == sampling.choose(number, nodes) and "site-1" in asked
    assert models[3].with_name("round-3.strategy.npz").exists()


@pytest.mark.parametrize(
    "strategy",
    [
        "{name: fedprox, mu: 0.5}",
        "{name: scaffold, server_learning_rate: 1.0, encrypt_aux_var: true}",
    ],
)
def test_a_spec_selects_fedprox_or_scaffold(strategy: str, tmp_path: Path) -> None:
    spec = JobSpec.from_yaml(spec_text(f"strategy: {strategy}"))
    result = simulate(FedJob.from_spec(spec), 3, workspace=tmp_path / "run")
    assert result.state is State.SUCCESS, result.reason
    assert len(result.rounds["train"]) == 3
    assert result.outputs["train"]["metrics"]["accuracy"] > 0.8


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ("strategy: {name: fedsgd}", "strategy.name"),
        ("strategy: {name: fedavg, tau: 0.1}", "fedavg takes no tau"),
        ("strategy: {name: fedadagrad, beta_2: 0.9}", "fedadagrad takes no beta_2"),
        ("strategy: {name: fedprox, tau: 0.1}", "fedprox takes no tau"),
        ("strategy: {name: scaffold, mu: 1}", "scaffold takes no mu"),
        ("strategy: {name: fedprox, mu: -1}", "mu"),
        ("strategy: {name: fedadam, momentum: 0.9}", "momentum"),
        ("strategy: {name: fedyogi, beta_1: 1.5}", "beta_1"),
        ("sampling: {fraction: 0.5, count: 2}", "a fraction or a count"),
        ("sampling: {fraction: 0}", "fraction"),
        ("sampling: {min_nodes: 0}", "min_nodes"),
        ("sampling: {mandatory: [a], exclude: [a]}", "both mandatory and excluded"),
    ],
)
def test_bad_strategy_or_sampling_settings_are_clear_errors(extra: str, message: str) -> None:
    with pytest.raises(SpecError, match=message):
        JobSpec.from_yaml(spec_text(extra))
