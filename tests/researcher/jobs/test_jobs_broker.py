"""The jobs against real node agent processes over RabbitMQ."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from broker_net.codes import ErrorCode, PreprocStep, PreprocType, TrainingPlanStatus
from node_agent.datasets import DatasetRegistry
from node_agent.plans import PlanRegistry
from researcher.errors import NodeErrorReply
from researcher.jobs.analytics import FARequestJob
from researcher.jobs.plans import TrainingPlanApproveJob, TrainingPlanCheckJob
from researcher.jobs.preprocessing import PreprocRequestJob
from researcher.jobs.training import TrainingJob
from researcher.requests.policies import DiscardOnTimeout
from researcher.requests.router import Requests
from simulation.demo_plan import BreastCancerPlan
from tests.support.processes import AgentProcesses
from training_plans.plan import plan_source

pytestmark = [pytest.mark.rabbitmq, pytest.mark.anyio]
NODES = ["n1", "n2", "n3"]
COLUMNS = ["a", "b", "label"]


def _shards(tmp_path: Path) -> tuple[dict[str, str], np.ndarray]:
    """Write a random shard with missing values into each node's folder and register it."""
    rng = np.random.default_rng(7)
    datasets, pooled = {}, []
    for index, node in enumerate(NODES):
        rows = 40 + 13 * index
        values = np.column_stack(
            [
                rng.normal(10 * (index + 1), 3, rows),
                rng.exponential(2, rows),
                (rng.uniform(size=rows) > 0.5).astype(float),
            ]
        )
        values[rng.uniform(size=rows) < 0.1, 0] = np.nan
        pooled.append(values)
        path = tmp_path / node / "shard.csv"
        path.parent.mkdir(parents=True, exist_ok=True)
        np.savetxt(path, values, delimiter=",", header=",".join(COLUMNS), comments="")
        with DatasetRegistry(tmp_path / node) as registry:
            datasets[node] = registry.add(path, name="shard", tags=["t"], target="label").dataset_id
    return datasets, np.vstack(pooled)


async def test_federated_statistics_equal_numpy_on_the_pooled_data(
    agents: AgentProcesses, requests: Requests, tmp_path: Path
) -> None:
    datasets, pooled = _shards(tmp_path)
    await agents.astart_all(NODES)
    edges = [0.0, 5.0, 10.0, 20.0, 30.0, 60.0]

    result = await FARequestJob(
        requests, experiment_id="e", fa_id="fa", datasets=datasets,
        stats_args={
            "a": {"count": True, "missing": True, "sum": True, "mean": True, "variance": True,
                  "std": True, "min": True, "max": True, "histogram": {"bins": edges}},
        },
        policies=[DiscardOnTimeout(20)],
    ).execute()  # fmt: skip

    column = pooled[:, 0]
    present = column[~np.isnan(column)]
    stats = result.statistics["columns"]["a"]
    assert stats["count"] == len(present)
    assert stats["missing"] == int(np.isnan(column).sum())
    for name, expected in {
        "sum": present.sum(), "mean": present.mean(), "variance": present.var(ddof=1),
        "std": present.std(ddof=1), "min": present.min(), "max": present.max(),
    }.items():  # fmt: skip
        assert stats[name] == pytest.approx(expected, rel=1e-9), name
    assert stats["histogram"]["counts"] == np.histogram(present, bins=edges)[0].tolist()
    assert set(result.replies) == set(NODES)


async def test_an_unknown_dataset_is_a_clear_error(
    agents: AgentProcesses, requests: Requests
) -> None:
    await agents.astart("n1")
    with pytest.raises(NodeErrorReply) as raised:
        await FARequestJob(
            requests, experiment_id="e", fa_id="fa", datasets={"n1": "dataset_missing"},
            stats=["mean"], policies=[DiscardOnTimeout(10)],
        ).execute()  # fmt: skip
    assert raised.value.error.code is ErrorCode.DATASET_NOT_FOUND
    assert raised.value.node_id == "n1"


MARKER_PLAN = """
from pathlib import Path
from training_plans import LogisticRegressionPlan

Path({marker!r}).write_text("executed")


class MarkerPlan(LogisticRegressionPlan):
    pass
"""


async def test_an_unapproved_plan_is_never_executed(
    agents: AgentProcesses, requests: Requests, tmp_path: Path
) -> None:
    datasets, _ = _shards(tmp_path)
    await agents.astart("n1")
    marker = tmp_path / "marker"
    source = MARKER_PLAN.format(marker=str(marker))

    submitted = await TrainingPlanApproveJob(
        requests, training_plan=source, description="d", nodes=["n1"]
    ).execute()
    assert submitted["n1"].status is TrainingPlanStatus.PENDING
    job = TrainingJob(
        requests, experiment_id="e", round_number=1, training_plan=source,
        training_plan_class="MarkerPlan", params={}, datasets={"n1": datasets["n1"]},
        model_args={"n_features": 2}, policies=[DiscardOnTimeout(20)],
    )  # fmt: skip
    outcome = await job.execute()

    assert outcome.replies == {}
    assert "PLAN_NOT_APPROVED" in outcome.failed["n1"]
    assert not marker.exists()
    checked = await TrainingPlanCheckJob(
        requests, experiment_id="e", training_plan=source, nodes=["n1"]
    ).execute()
    assert checked["n1"].status is TrainingPlanStatus.PENDING
    assert checked["n1"].approval_obligation


async def test_an_approved_plan_trains(
    agents: AgentProcesses, requests: Requests, tmp_path: Path
) -> None:
    datasets, _ = _shards(tmp_path)
    source = plan_source(BreastCancerPlan)
    await agents.astart("n2")
    submitted = await TrainingPlanApproveJob(
        requests, training_plan=source, description="d", nodes=["n2"]
    ).execute()
    with PlanRegistry(tmp_path / "n2") as plans:
        plans.approve(submitted["n2"].training_plan_id or "")
    model = BreastCancerPlan()
    model.init_model({"n_features": 2})
    job = TrainingJob(
        requests, experiment_id="e", round_number=1, training_plan=source,
        training_plan_class="BreastCancerPlan", params=model.get_params(),
        datasets={"n2": datasets["n2"]}, model_args={"n_features": 2},
        training_args={"epochs": 1}, state_ids={"n2": None}, policies=[DiscardOnTimeout(30)],
    )  # fmt: skip
    # The shard has missing values: training refuses them until they are imputed.
    refused = await job.execute()
    assert "DATA_LOADING_FAILED" in refused.failed["n2"]

    fitted = await PreprocRequestJob(
        requests, experiment_id="e", preproc_id="impute", datasets={"n2": datasets["n2"]},
        preproc_type=PreprocType.IMPUTE, preproc_step=PreprocStep.FIT,
        preproc_args={"fill_values": {"a": 0.0}, "strategy": "constant"},
    ).execute()  # fmt: skip
    job.state_ids = dict(fitted.state_ids)
    outcome = await job.execute()
    reply = outcome.replies["n2"]
    assert reply.success and reply.sample_size and reply.params
    assert set(reply.params) == {"coef", "intercept"}
    assert "accuracy" in reply.metrics and reply.timing


FAILING_PLAN = """
from training_plans import LogisticRegressionPlan


class FailingPlan(LogisticRegressionPlan):
    def train(self, x, y, training_args):
        {body}
"""


@pytest.mark.parametrize(
    ("body", "code"),
    [("raise RuntimeError('boom')", "PLAN_FAILED"),
     ("import time; time.sleep(600)", "PLAN_TIMEOUT")],
)  # fmt: skip
async def test_a_plan_that_raises_or_hangs_gives_an_error_and_the_node_keeps_answering(
    agents: AgentProcesses, requests: Requests, tmp_path: Path, body: str, code: str
) -> None:
    datasets, _ = _shards(tmp_path)
    env = {"BROKER_NET_NODE_REQUIRE_APPROVAL": "false", "BROKER_NET_NODE_PLAN_TIMEOUT": "3"}
    await agents.astart("n3", env=env)
    fitted = await PreprocRequestJob(
        requests, experiment_id="e", preproc_id="impute", datasets={"n3": datasets["n3"]},
        preproc_type=PreprocType.IMPUTE, preproc_step=PreprocStep.FIT,
        preproc_args={"fill_values": {"a": 0.0}},
    ).execute()  # fmt: skip
    outcome = await TrainingJob(
        requests, experiment_id="e", round_number=1,
        training_plan=FAILING_PLAN.format(body=body), training_plan_class="FailingPlan",
        params={}, datasets={"n3": datasets["n3"]}, model_args={"n_features": 2},
        state_ids=fitted.state_ids, policies=[DiscardOnTimeout(30)],
    ).execute()  # fmt: skip
    assert code in outcome.failed["n3"]
    ping = await requests.ping(["n3"], timeout=5)
    assert ping.replies()


async def test_preprocessing_state_survives_an_agent_restart(
    agents: AgentProcesses, requests: Requests, tmp_path: Path
) -> None:
    datasets, _ = _shards(tmp_path)
    await agents.astart("n1")
    fitted = await PreprocRequestJob(
        requests, experiment_id="e", preproc_id="std", datasets={"n1": datasets["n1"]},
        preproc_type=PreprocType.STANDARDIZE, preproc_step=PreprocStep.FIT,
        preproc_args={"mean": {"b": 2.0}, "std": {"b": 4.0}},
    ).execute()  # fmt: skip
    state_id = fitted.state_ids["n1"]
    assert state_id

    await agents.astop("n1")
    await agents.astart("n1")
    applied = await PreprocRequestJob(
        requests, experiment_id="e", preproc_id="std", datasets={"n1": datasets["n1"]},
        preproc_type=PreprocType.STANDARDIZE, preproc_step=PreprocStep.APPLY,
        state_ids={"n1": state_id},
    ).execute()  # fmt: skip

    assert applied.errors == {}
    assert applied.state_ids == {"n1": state_id}
    output = applied.replies["n1"].preproc_output
    assert output, "the APPLY step reports what it transformed"
