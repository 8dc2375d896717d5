"""Secure aggregation with client sampling, and one YAML spec selecting strategy, sampling,
evaluation, warm start, secure aggregation and a prediction, in simulated jobs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from node_agent.datasets import DatasetRegistry
from researcher.orchestration import outputs
from researcher.orchestration.fedjob import FedJob, JobResult
from researcher.orchestration.lifecycle import State
from researcher.orchestration.model_specs import ModelRef
from researcher.orchestration.spec import JobSpec
from researcher.orchestration.store.job_store import JobStore
from researcher.orchestration.task_specs import TrainingTask
from researcher.orchestration.trained_models import load_model
from simulation.federation import simulate_async
from tests.researcher.orchestration.combined_specs import (
    combined_yaml,
    earlier_job,
    sampled_job,
)

pytestmark = pytest.mark.anyio

NODES = ["site-1", "site-2", "site-3"]


def round_nodes(store: JobStore, job_id: str) -> list[list[str]]:
    rounds = outputs.metrics(store, job_id, "train")["tasks"]["train"]["rounds"]
    return [sorted(r["nodes"]) for r in rounds]


async def test_secure_aggregation_with_client_sampling_equals_the_plain_run(
    tmp_path: Path,
) -> None:
    secure = await simulate_async(sampled_job("secure", secagg=True), 3, workspace=tmp_path / "s")
    plain = await simulate_async(sampled_job("plain", secagg=False), 3, workspace=tmp_path / "p")
    assert secure.state is State.SUCCESS, secure.reason
    assert plain.state is State.SUCCESS, plain.reason

    with JobStore(tmp_path / "s" / "researcher") as store:
        secure_nodes = round_nodes(store, secure.job_id)
    with JobStore(tmp_path / "p" / "researcher") as store:
        plain_nodes = round_nodes(store, plain.job_id)
    assert secure_nodes == plain_nodes
    assert all(len(nodes) == 2 for nodes in secure_nodes)
    assert len({tuple(nodes) for nodes in secure_nodes}) == 3  # each node sits one out
    for name, value in plain.models["train"].items():
        np.testing.assert_allclose(secure.models["train"][name], value, rtol=0, atol=1e-4)
    for mine, theirs in zip(secure.rounds["train"], plain.rounds["train"], strict=True):
        assert mine.metrics == pytest.approx(theirs.metrics, abs=1e-3)


async def check_combined(result: JobResult, earlier: JobResult, store: JobStore, nodes_dir: Path,
                         nodes: list[str]) -> None:  # fmt: skip
    """What the combined spec must have done, read from the store and the nodes' registries."""
    assert result.state is State.SUCCESS, result.reason
    train = result.outputs["train"]
    best_earlier = earlier.outputs["train"]["best"]
    assert train["initial_model"]["round"] == best_earlier["round"]
    start = load_model(store, ModelRef(job=result.job_id, task="train", model=0))
    with np.load(store.data_dir / best_earlier["model"]) as data:
        for name in data.files:
            np.testing.assert_array_equal(start.params[name], data[name])
    assert [e["round"] for e in train["evaluations"]] == [1, 2, 3]
    assert train["best"]["metric"] == "accuracy"
    assert all(len(r) == 2 for r in round_nodes(store, result.job_id))  # sampled
    spec = store.job(result.job_id).spec.task("train")
    assert isinstance(spec, TrainingTask) and spec.strategy.name == "fedadam"
    assert spec.secagg and spec.secagg.precision_bits == 24  # type: ignore[union-attr]
    predict = result.outputs["predict"]
    assert predict["model"]["job"] == result.job_id
    assert predict["model"]["round"] == train["best"]["round"]
    for node in nodes:
        with DatasetRegistry(nodes_dir / node) as registry:
            kept = registry.get(predict["datasets"][node])
        assert kept.provenance and kept.provenance["job_id"] == result.job_id
        assert kept.provenance["source_dataset"] == predict["summaries"][node]["source_dataset"]
        assert kept.shape[0] == predict["summaries"][node]["n_rows"]


async def test_a_yaml_spec_selects_strategy_sampling_evaluation_warm_start_and_secagg(
    tmp_path: Path,
) -> None:
    earlier = await simulate_async(earlier_job(), 3, workspace=tmp_path)
    assert earlier.state is State.SUCCESS, earlier.reason
    text = combined_yaml(earlier.job_id)
    for field in ("strategy:", "sampling:", "evaluation:", "initial_model:", "secagg:"):
        assert field in text
    job = FedJob.from_spec(JobSpec.from_yaml(text))

    result = await simulate_async(job, 3, workspace=tmp_path)

    with JobStore(tmp_path / "researcher") as store:
        await check_combined(result, earlier, store, tmp_path / "nodes", NODES)
