"""The strategies against plain numpy references of Reddi et al. 2021, Algorithm 2."""

from __future__ import annotations

import numpy as np
import pytest

from researcher.jobs.aggregation import fedavg
from researcher.jobs.strategies import (
    FedAdagrad,
    FedAdam,
    FedAvg,
    FedYogi,
    NodeUpdate,
    ServerOptimizer,
    Strategy,
    make_strategy,
)
from researcher.jobs.training import TrainingJob

ETA, BETA_1, BETA_2, TAU = 0.05, 0.8, 0.95, 1e-2


def _rounds() -> tuple[list[float], list[list[list[float]]], list[list[int]]]:
    """A fixed start and three rounds of three nodes' flat parameters and sample sizes."""
    rng = np.random.default_rng(2021)
    start = rng.normal(size=5).tolist()
    updates = [[rng.normal(size=5).tolist() for _ in range(3)] for _ in range(3)]
    sizes = [[10, 30, 60], [5, 5, 90], [40, 40, 20]]
    return start, updates, sizes


def _reference(kind: str) -> list[list[float]]:
    """Algorithm 2 written out on plain Python lists (one float at a time)."""
    start, updates, sizes = _rounds()
    x = list(start)
    m = [0.0] * len(x)
    v = [TAU**2] * len(x)
    history = []
    for nodes, weights in zip(updates, sizes, strict=True):
        total = sum(weights)
        for i in range(len(x)):
            delta = sum(
                w / total * (node[i] - x[i]) for node, w in zip(nodes, weights, strict=True)
            )
            m[i] = BETA_1 * m[i] + (1 - BETA_1) * delta
            if kind == "fedadagrad":
                v[i] = v[i] + delta**2
            elif kind == "fedadam":
                v[i] = BETA_2 * v[i] + (1 - BETA_2) * delta**2
            else:
                v[i] = v[i] - (1 - BETA_2) * delta**2 * np.sign(v[i] - delta**2)
            x[i] = x[i] + ETA * m[i] / (v[i] ** 0.5 + TAU)
        history.append(list(x))
    return history


def _run(strategy: Strategy) -> list[np.ndarray]:
    start, updates, sizes = _rounds()
    params = {"w": np.array(start[:3]), "b": np.array(start[3:])}
    history = []
    for number, (nodes, weights) in enumerate(zip(updates, sizes, strict=True), start=1):
        replies = {
            f"n{i}": NodeUpdate({"w": np.array(p[:3]), "b": np.array(p[3:])}, w, {"acc": 0.5})
            for i, (p, w) in enumerate(zip(nodes, weights, strict=True))
        }
        params = strategy.aggregate(number, params, replies)
        history.append(np.concatenate([params["w"], params["b"]]))
    return history


@pytest.mark.parametrize("cls", [FedAdagrad, FedAdam, FedYogi])
def test_server_optimizers_equal_the_reference(cls: type[ServerOptimizer]) -> None:
    strategy = cls(server_learning_rate=ETA, beta_1=BETA_1, beta_2=BETA_2, tau=TAU)
    for actual, expected in zip(_run(strategy), _reference(cls.name), strict=True):
        np.testing.assert_allclose(actual, expected, rtol=0, atol=1e-12)


def test_fedavg_is_the_weighted_mean_bit_for_bit() -> None:
    _, updates, sizes = _rounds()
    history = _run(FedAvg())
    for actual, nodes, weights in zip(history, updates, sizes, strict=True):
        expected = fedavg([{"w": np.array(p[:3]), "b": np.array(p[3:])} for p in nodes], weights)
        assert np.array_equal(actual, np.concatenate([expected["w"], expected["b"]]))
    assert Strategy().configure(1, ["n1"]) == {}


def test_yogi_differs_from_adam_once_v_exceeds_delta_squared() -> None:
    adam, yogi = (
        np.array(_run(cls(server_learning_rate=ETA, beta_1=BETA_1, beta_2=BETA_2, tau=TAU)))
        for cls in (FedAdam, FedYogi)
    )
    assert not np.allclose(adam, yogi)


def test_state_round_trips_and_resumes_the_same_trajectory() -> None:
    settings = {"server_learning_rate": ETA, "beta_1": BETA_1, "beta_2": BETA_2, "tau": TAU}
    whole = FedAdam(**settings)
    start, updates, sizes = _rounds()
    params = {"w": np.array(start)}

    def step(strategy: Strategy, params: dict, number: int) -> dict:
        replies = {
            f"n{i}": NodeUpdate({"w": np.array(p)}, w)
            for i, (p, w) in enumerate(zip(updates[number], sizes[number], strict=True))
        }
        return strategy.aggregate(number, params, replies)

    first = step(whole, params, 0)
    resumed = FedAdam(**settings)
    resumed.load_state(whole.state())
    assert set(whole.state()) == {"m.w", "v.w"}
    np.testing.assert_array_equal(step(resumed, first, 1)["w"], step(whole, first, 1)["w"])


def test_make_strategy_and_its_errors() -> None:
    strategy = make_strategy("FedYogi", server_learning_rate=0.01, tau=1e-3)
    assert isinstance(strategy, FedYogi) and strategy.describe()["server_learning_rate"] == 0.01
    assert isinstance(make_strategy("fedavg"), FedAvg)
    with pytest.raises(ValueError, match="unknown strategy 'fedsgd'"):
        make_strategy("fedsgd")
    with pytest.raises(ValueError, match="strategy 'fedadam'"):
        make_strategy("fedadam", momentum=0.9)
    with pytest.raises(ValueError, match="tau"):
        FedAdam(tau=0)
    with pytest.raises(ValueError, match="beta"):
        FedAdagrad(beta_1=1.0)


def test_per_node_training_args_override_the_experiments() -> None:
    class Fake:
        researcher_id = "alice"

    job = TrainingJob(
        Fake(),  # type: ignore[arg-type]
        experiment_id="e", round_number=1, training_plan="class P: pass", training_plan_class="P",
        params={}, datasets={"n1": "d1", "n2": "d2"}, training_args={"epochs": 2, "lr": 0.1},
        node_training_args={"n2": {"epochs": 5}},
    )  # fmt: skip
    messages = job.messages()
    assert messages["n1"].training_args == {"epochs": 2, "lr": 0.1}  # type: ignore[union-attr]
    assert messages["n2"].training_args == {"epochs": 5, "lr": 0.1}  # type: ignore[union-attr]


def numpy_step(
    kind: str, x: np.ndarray, m: np.ndarray, v: np.ndarray, average: np.ndarray, **settings: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One server step of Algorithm 2 in numpy: the next ``x``, ``m`` and ``v``."""
    eta, beta_1, beta_2, tau = (settings[k] for k in ("eta", "beta_1", "beta_2", "tau"))
    delta = average - x
    m = beta_1 * m + (1 - beta_1) * delta
    if kind == "fedadagrad":
        v = v + delta**2
    elif kind == "fedadam":
        v = beta_2 * v + (1 - beta_2) * delta**2
    else:
        v = v - (1 - beta_2) * delta**2 * np.sign(v - delta**2)
    return x + eta * m / (np.sqrt(v) + tau), m, v
