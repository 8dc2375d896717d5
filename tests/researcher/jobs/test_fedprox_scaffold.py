"""FedProx and SCAFFOLD on the researcher: what they send and their server update against plain
references (Li et al. 2020; Karimireddy et al. 2020, Algorithm 1, option II)."""

from __future__ import annotations

import numpy as np
import pytest

from researcher.jobs.experiment import Experiment
from researcher.jobs.strategies import FedProx, NodeUpdate, Scaffold, make_strategy
from training_plans.logistic import LogisticRegressionPlan

ETA_G = 0.7
N = 5  # the experiment's nodes; three take part in each round


def _rounds() -> tuple[list[float], list[list[tuple[list[float], list[float], int]]]]:
    """A start and three rounds of three nodes' (parameters, Δc_i, sample size)."""
    rng = np.random.default_rng(2020)
    start = rng.normal(size=4).tolist()
    rounds = [
        [(rng.normal(size=4).tolist(), rng.normal(size=4).tolist(), int(n)) for n in (10, 50, 5)]
        for _ in range(3)
    ]
    return start, rounds


def _reference() -> list[tuple[list[float], list[float]]]:
    """x += η_g/|S|·Σ(y_i - x); c += 1/N·Σ Δc_i, one float at a time."""
    start, rounds = _rounds()
    x, c, history = list(start), [0.0] * 4, []
    for nodes in rounds:
        for i in range(4):
            step = sum(y[i] - x[i] for y, _, _ in nodes) / len(nodes)
            c[i] = c[i] + sum(dc[i] for _, dc, _ in nodes) / N
            x[i] = x[i] + ETA_G * step
        history.append((list(x), list(c)))
    return history


def _split(v: list[float]) -> dict[str, np.ndarray]:
    return {"w": np.array(v[:3]), "b": np.array(v[3:])}


def test_scaffold_server_update_equals_the_reference() -> None:
    start, rounds = _rounds()
    strategy = Scaffold(server_learning_rate=ETA_G)
    strategy.prepare([f"n{i}" for i in range(N)])
    params = _split(start)
    for number, (nodes, (x, c)) in enumerate(zip(rounds, _reference(), strict=True), start=1):
        sent = strategy.optim_aux_var(number, ["n0", "n2", "n4"], params)
        assert set(sent) == {"n0", "n2", "n4"}
        updates = {
            f"n{2 * i}": NodeUpdate(_split(y), size, {}, {"scaffold_delta_c": _split(dc)})
            for i, (y, dc, size) in enumerate(nodes)
        }
        params = strategy.aggregate(number, params, updates)
        np.testing.assert_allclose(np.append(params["w"], params["b"]), x, rtol=0, atol=1e-12)
        kept = strategy.state()
        np.testing.assert_allclose(np.append(kept["c.w"], kept["c.b"]), c, rtol=0, atol=1e-12)
        after = strategy.optim_aux_var(number + 1, ["n1"], params)["n1"]["scaffold_c"]
        np.testing.assert_array_equal(after["w"], kept["c.w"])


def test_scaffold_sends_zeros_first_resumes_and_refuses_secure_aggregation() -> None:
    strategy = make_strategy("scaffold", server_learning_rate=1.0)
    assert isinstance(strategy, Scaffold)
    first = strategy.optim_aux_var(1, ["a"], {"w": np.ones(3)})
    np.testing.assert_array_equal(first["a"]["scaffold_c"]["w"], np.zeros(3))
    resumed = Scaffold()
    resumed.load_state({"c.w": np.array([1.0, 2.0, 3.0])})
    np.testing.assert_array_equal(
        resumed.optim_aux_var(2, ["a"], {"w": np.ones(3)})["a"]["scaffold_c"]["w"], [1, 2, 3]
    )
    with pytest.raises(ValueError, match="secure aggregation"):
        resumed.step(1, {"w": np.ones(3)}, {"w": np.ones(3)})
    with pytest.raises(ValueError, match="scaffold_delta_c"):
        resumed.aggregate(1, {"w": np.ones(3)}, {"a": NodeUpdate({"w": np.ones(3)}, 3)})


def test_fedprox_asks_every_node_for_mu_and_averages() -> None:
    strategy = make_strategy("fedprox", mu=0.25)
    assert strategy.configure(1, ["a", "b"]) == {
        "a": {"fedprox_mu": 0.25}, "b": {"fedprox_mu": 0.25},
    }  # fmt: skip
    updates = {
        "a": NodeUpdate({"w": np.array([1.0])}, 1),
        "b": NodeUpdate({"w": np.array([4.0])}, 2),
    }
    assert strategy.aggregate(1, {"w": np.zeros(1)}, updates)["w"].tolist() == [3.0]
    assert strategy.describe() == {"name": "fedprox", "mu": 0.25}
    with pytest.raises(ValueError, match="mu"):
        FedProx(mu=-1)


def test_an_experiment_refuses_scaffold_under_secure_aggregation() -> None:
    with pytest.raises(ValueError, match="scaffold strategy cannot run under secure aggregation"):
        Experiment(
            None,  # type: ignore[arg-type]  # refused before any request
            plan=LogisticRegressionPlan, datasets={"a": "d"}, model_args={"n_features": 2},
            secagg=True, strategy=Scaffold(),
        )  # fmt: skip
    strategy = Scaffold()
    Experiment(
        None,  # type: ignore[arg-type]
        plan=LogisticRegressionPlan, datasets={"a": "d", "b": "e"},
        model_args={"n_features": 2}, strategy=strategy,
    )  # fmt: skip
    assert strategy.n_nodes == 2  # N: every node of the experiment
