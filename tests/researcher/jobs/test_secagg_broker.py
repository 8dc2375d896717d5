"""Secure aggregation and encrypted payloads over RabbitMQ, against node agent processes that
authenticate every message."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import numpy as np
import pytest
from sklearn.datasets import load_breast_cancer

from broker_net.amqp import AmqpTransport
from broker_net.crypto.authentication import Security
from broker_net.crypto.introductions import introduce
from broker_net.crypto.masking import decode_fixed_point
from broker_net.messages import TrainRequest
from broker_net.topology import Topology
from node_agent.datasets import DatasetRegistry
from researcher.jobs.aggregation import fedavg
from researcher.jobs.analytics import FARequestJob
from researcher.jobs.experiment import Experiment
from researcher.jobs.masked import masked_update
from researcher.jobs.payloads import seal_request
from researcher.jobs.secagg import SecureAggregation
from researcher.jobs.strategies import FedAdam
from researcher.jobs.training import TrainingJob
from researcher.requests.policies import DiscardOnTimeout
from researcher.requests.router import Requests
from tests.researcher.jobs.test_strategies import numpy_step
from tests.simulation.test_secagg_precision import COLUMNS as RANDOM_COLUMNS
from tests.simulation.test_secagg_precision import RANGE, draw
from tests.support.processes import AgentProcesses
from training_plans.logistic import LogisticRegressionPlan
from training_plans.plan import plan_source

pytestmark = [pytest.mark.rabbitmq, pytest.mark.anyio]
NODES = ["n1", "n2", "n3"]
COLUMNS = ["a", "b", "c", "d"]
TRAINING_ARGS = {"epochs": 2, "learning_rate": 0.01, "batch_size": 16}

AUX_PLAN = """
import numpy as np
from training_plans.logistic import LogisticRegressionPlan


class AuxPlan(LogisticRegressionPlan):
    def set_aux_var(self, aux_var):
        self.correction = np.asarray(aux_var["correction"])

    def get_aux_var(self):
        return {"state": getattr(self, "correction", np.zeros(1)) * 2.0}
"""


@pytest.fixture
def datasets(tmp_path: Path) -> dict[str, str]:
    """A shard of the breast-cancer data (four features) registered on each node."""
    x, y = load_breast_cancer(return_X_y=True)
    registered = {}
    for index, node in enumerate(NODES):
        rows = slice(160 * index, 160 * index + 100 + 20 * index)
        path = tmp_path / node / "shard.npz"
        path.parent.mkdir(parents=True, exist_ok=True)
        np.savez(path, X=x[rows, :4] / 100.0, y=y[rows], columns=np.array(COLUMNS))
        with DatasetRegistry(tmp_path / node) as registry:
            registered[node] = registry.add(path, name="shard").dataset_id
    return registered


@pytest.fixture
def alice(tmp_path: Path) -> Security:
    introduce("alice", tmp_path / "alice", {node: tmp_path / node for node in NODES})
    folder = tmp_path / "alice"
    return Security.load(folder / "identity", "alice", "researcher", folder / "trusted-nodes")


@pytest.fixture
def agents(
    alice: Security, datasets: dict[str, str], amqp_url: str, namespace: str, tmp_path: Path
) -> Iterator[AgentProcesses]:
    processes = AgentProcesses(amqp_url, namespace, tmp_path)
    env = {"BROKER_NET_NODE_REQUIRE_APPROVAL": "false"}
    try:
        processes.start_all(NODES, "--security", env=env)
        yield processes
    finally:
        processes.stop_all()


@pytest.fixture
async def requests(
    agents: AgentProcesses, amqp_url: str, topology: Topology, alice: Security
) -> AsyncIterator[Requests]:
    async with (
        AmqpTransport(amqp_url, connection_name="researcher:secagg") as transport,
        Requests(transport, "alice", topology=topology, security=alice) as researcher,
    ):
        yield researcher


def _initial_params() -> dict[str, np.ndarray]:
    return {"coef": np.linspace(-0.1, 0.1, 4), "intercept": np.array([0.05])}


LOGISTIC = (plan_source(LogisticRegressionPlan), "LogisticRegressionPlan")


def _training_job(
    requests: Requests,
    datasets: dict[str, str],
    params: dict[str, np.ndarray],
    *,
    plan: tuple[str, str] = LOGISTIC,
    round_number: int = 1,
    **options: object,
) -> TrainingJob:
    return TrainingJob(
        requests,
        experiment_id="exp",
        round_number=round_number,
        training_plan=plan[0],
        training_plan_class=plan[1],
        params=params,
        datasets=datasets,
        training_args=TRAINING_ARGS,
        model_args={"n_features": 4},
        policies=[DiscardOnTimeout(30)],
        **options,  # type: ignore[arg-type]
    )


async def _plain_fedavg(
    requests: Requests, datasets: dict[str, str], params: dict[str, np.ndarray]
) -> tuple[dict[str, np.ndarray], dict[str, dict[str, np.ndarray]]]:
    outcome = await _training_job(requests, datasets, params).execute()
    assert set(outcome.replies) == set(datasets), outcome.failed
    updates = {node: reply.params or {} for node, reply in outcome.replies.items()}
    sizes = [reply.sample_size or 0 for reply in outcome.replies.values()]
    return fedavg(list(updates.values()), sizes), updates


def _assert_close(actual: dict[str, np.ndarray], expected: dict[str, np.ndarray]) -> None:
    """Equal shapes, and the whole parameter vectors within relative 1e-6."""
    assert {k: v.shape for k, v in actual.items()} == {k: v.shape for k, v in expected.items()}
    flat = np.concatenate([actual[name].ravel() for name in sorted(expected)])
    reference = np.concatenate([expected[name].ravel() for name in sorted(expected)])
    assert np.linalg.norm(flat - reference) <= 1e-6 * np.linalg.norm(reference)


async def test_secure_fedavg_equals_fedavg_and_only_masked_vectors_arrive(
    requests: Requests, datasets: dict[str, str]
) -> None:
    secagg = SecureAggregation(requests, experiment_id="exp", nodes=NODES)
    await secagg.setup()
    arguments = dict.fromkeys(NODES, secagg.arguments(0))

    outcome = await _training_job(
        requests, datasets, _initial_params(), secagg_arguments=arguments
    ).execute()
    averaged, survivors = await secagg.fedavg(0, outcome.replies)

    expected, plain_updates = await _plain_fedavg(requests, datasets, _initial_params())
    assert survivors == tuple(NODES)
    _assert_close(averaged, expected)
    for node, reply in outcome.replies.items():
        assert reply.encrypted and set(reply.params or {}) == {"masked", "shapes"}
        found = masked_update(reply)
        assert found is not None and found[0].dtype == np.uint64
        as_if_plain, _ = decode_fixed_point(found[0], scale=secagg.context.scale)
        update = np.concatenate([plain_updates[node][k].ravel() for k in sorted(found[1])])
        assert np.abs(as_if_plain[: update.size] - update * (reply.sample_size or 0)).min() > 1e3


async def test_an_experiment_recovers_from_a_node_killed_after_setup(
    requests: Requests, datasets: dict[str, str], agents: AgentProcesses
) -> None:
    experiment = Experiment(
        requests,
        plan=LogisticRegressionPlan,
        datasets=datasets,
        rounds=2,
        training_args=TRAINING_ARGS,
        model_args={"n_features": 4},
        policies=[DiscardOnTimeout(8)],
        min_replies=2,
        initial_params=_initial_params(),
        secagg=True,
    )
    first = await experiment.run_round(1)
    assert first.secure_aggregation and first.nodes == NODES
    before = dict(experiment.params)

    await agents.akill("n3")
    second = await experiment.run_round(2)

    assert second.secure_aggregation and second.nodes == ["n1", "n2"]
    assert "n3" in second.failed
    survivors = {node: datasets[node] for node in ("n1", "n2")}
    expected, _ = await _plain_fedavg(requests, survivors, before)
    _assert_close(experiment.params, expected)
    assert experiment.secure_aggregation is not None
    assert experiment.secure_aggregation.revealed_rounds == [0, 1]


async def test_secure_analytics_equal_plain_analytics(
    requests: Requests, datasets: dict[str, str]
) -> None:
    stats = ["count", "sum", "mean", "variance", "std"]

    secure = await FARequestJob(
        requests, experiment_id="exp", fa_id="fa", datasets=datasets, stats=stats,
        dataset_schema=["a", "d"], policies=[DiscardOnTimeout(30)], secagg=True,
    ).execute()  # fmt: skip
    plain = await FARequestJob(
        requests, experiment_id="exp", fa_id="fa", datasets=datasets, stats=stats,
        dataset_schema=["a", "d"], policies=[DiscardOnTimeout(30)],
    ).execute()  # fmt: skip

    assert all(reply.encrypted and reply.output is None for reply in secure.replies.values())
    assert secure.statistics["n_rows"] == plain.statistics["n_rows"]
    for column in ("a", "d"):
        expected = plain.statistics["columns"][column]
        actual = secure.statistics["columns"][column]
        assert actual["count"] == expected["count"] and actual["missing"] == expected["missing"]
        for name in ("sum", "mean", "variance", "std"):
            assert actual[name] == pytest.approx(expected[name], rel=1e-6), (column, name)


async def test_encrypted_aux_var_round_trip_and_replay_into_another_round(
    requests: Requests, datasets: dict[str, str], alice: Security
) -> None:
    correction = np.array([0.25, -0.5])
    one_node = {"n1": datasets["n1"]}
    job = _training_job(
        requests, one_node, _initial_params(), plan=(AUX_PLAN, "AuxPlan"),
        optim_aux_var={"n1": {"correction": correction}}, encrypt_aux_var=True,
        encrypt_params=True,
    )  # fmt: skip

    outcome = await job.execute()

    assert job.request is not None
    on_the_wire = job.request.replies()["n1"]
    assert set(on_the_wire.optim_aux_var) == {"encrypted", "alg"}
    assert set(on_the_wire.params) == {"encrypted", "alg"}
    reply = outcome.replies["n1"]
    np.testing.assert_array_equal((reply.optim_aux_var or {})["state"], 2 * correction)
    assert set(reply.params or {}) == {"coef", "intercept"}

    # A ciphertext sealed for round 1 of some request, replayed into round 2 of this one.
    sealed = seal_request(
        TrainRequest(
            researcher_id="alice", experiment_id="exp", round=1, training_plan=AUX_PLAN,
            training_plan_class="AuxPlan", dataset_id=datasets["n1"],
            optim_aux_var={"correction": correction},
        ),
        "n1", alice, request_id="request_earlier", encrypt_aux_var=True,
    )  # fmt: skip
    replay = _training_job(
        requests, one_node, _initial_params(), plan=(AUX_PLAN, "AuxPlan"), round_number=2,
        optim_aux_var={"n1": sealed.optim_aux_var or {}}, encrypt_aux_var=True,
    )  # fmt: skip
    refused = await replay.execute()

    assert refused.replies == {}
    assert refused.failed["n1"].startswith("DECRYPTION_FAILED")


async def test_a_server_optimizer_steps_from_the_securely_aggregated_mean(
    requests: Requests, datasets: dict[str, str]
) -> None:
    averages: list[dict[str, np.ndarray]] = []

    class RecordingAdam(FedAdam):
        def step(self, round, params, average):  # type: ignore[no-untyped-def]
            averages.append(dict(average))
            return super().step(round, params, average)

    experiment = Experiment(
        requests, plan=LogisticRegressionPlan, datasets=datasets, rounds=2,
        training_args=TRAINING_ARGS, model_args={"n_features": 4},
        policies=[DiscardOnTimeout(30)], initial_params=_initial_params(), secagg=True,
        strategy=RecordingAdam(server_learning_rate=0.05, tau=1e-2),
    )  # fmt: skip
    result = await experiment.run()

    assert all(record.secure_aggregation for record in result.rounds) and len(averages) == 2
    plain, _ = await _plain_fedavg(requests, datasets, _initial_params())
    _assert_close(averages[0], plain)
    settings = {"eta": 0.05, "beta_1": 0.9, "beta_2": 0.99, "tau": 1e-2}
    names = sorted(plain)
    x = np.concatenate([_initial_params()[n].ravel() for n in names])
    m, v = np.zeros_like(x), np.full_like(x, 1e-4)
    for average in averages:
        flat = np.concatenate([average[n].ravel() for n in names])
        x, m, v = numpy_step("fedadam", x, m, v, flat, **settings)
    actual = np.concatenate([result.params[n].ravel() for n in names])
    np.testing.assert_allclose(actual, x, rtol=0, atol=1e-12)


async def test_secure_analytics_agree_with_plain_to_1e_9_over_rabbitmq(
    requests: Requests, tmp_path: Path
) -> None:
    registered, parts = {}, []
    for index, node in enumerate(NODES):
        x = draw(77 + index, 60 + 30 * index)
        path = tmp_path / node / "random.npz"
        np.savez(path, X=x, y=np.zeros(len(x)), columns=np.array(RANDOM_COLUMNS))
        with DatasetRegistry(tmp_path / node) as registry:
            registered[node] = registry.add(path, name="random").dataset_id
        parts.append(x)
    pooled = np.vstack(parts)
    stats = ["count", "sum", "mean"]

    secure = await FARequestJob(
        requests, experiment_id="exp", fa_id="fa", datasets=registered, stats=stats,
        dataset_schema=RANDOM_COLUMNS, policies=[DiscardOnTimeout(30)], secagg=True,
        secagg_options={"value_range": RANGE},
    ).execute()  # fmt: skip
    plain = await FARequestJob(
        requests, experiment_id="exp", fa_id="fa", datasets=registered, stats=stats,
        dataset_schema=RANDOM_COLUMNS, policies=[DiscardOnTimeout(30)],
    ).execute()  # fmt: skip

    for index, column in enumerate(RANDOM_COLUMNS):
        magnitude = float(np.sum(np.abs(pooled[:, index])))
        got, want = secure.statistics["columns"][column], plain.statistics["columns"][column]
        assert got["count"] == want["count"] == len(pooled)
        assert abs(got["sum"] - want["sum"]) <= 1e-9 * magnitude, column
        assert abs(got["mean"] - want["mean"]) * len(pooled) <= 1e-9 * magnitude, column
