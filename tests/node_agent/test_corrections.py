"""FedProx and SCAFFOLD on the node: a round run by the plan's child process equals plain numpy
references of proximal gradient descent and of SCAFFOLD's corrected steps (option II)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from broker_net.messages import TrainRequest
from node_agent._plan_worker import split_rows
from node_agent.control_variates import (
    keep_client_variate,
    load_client_variate,
    with_client_variate,
)
from node_agent.datasets import Table
from node_agent.runner import PlanFailedError, run_training
from node_agent.state import NodeStateStore
from training_plans.logistic import LogisticRegressionPlan
from training_plans.plan import plan_source

pytestmark = pytest.mark.anyio
N_ROWS, N_FEATURES = 23, 4
ARGS = {"epochs": 3, "batch_size": 5, "learning_rate": 0.2, "l2": 0.01, "seed": 7}


def _inputs() -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
    rng = np.random.default_rng(2020)
    x = rng.normal(size=(N_ROWS, N_FEATURES))
    y = (x @ np.array([1.0, -2.0, 0.5, 0.0]) + rng.normal(scale=0.5, size=N_ROWS) > 0) * 1.0
    start = {"coef": rng.normal(scale=0.3, size=N_FEATURES), "intercept": np.array([0.1])}
    return x, y, start


def _trained_rows(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The rows the node trains on, in its order: validation fraction 0, split seed 0."""
    train, _ = split_rows(len(y), 0.0, 0, training=True)
    return x[train], y[train]


def reference(
    x: np.ndarray,
    y: np.ndarray,
    start: Mapping[str, np.ndarray],
    args: Mapping[str, Any] = ARGS,
    *,
    mu: float = 0.0,
    c: np.ndarray | None = None,
    c_i: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray | None]:
    """Mini-batch gradient descent on the log loss with L2, on the flat vector [coef, b]:
    ``w -= η·(g(w) + μ·(w - w0) + c - c_i)``; returns the end point and SCAFFOLD's
    ``Δc_i = (w0 - w)/(K·η) - c`` (option II)."""
    w0 = np.concatenate([start["coef"], start["intercept"]])
    w = w0.copy()
    rate, l2, steps = args["learning_rate"], args["l2"], 0
    shift = np.zeros_like(w) if c is None else c - (np.zeros_like(w) if c_i is None else c_i)
    rng = np.random.default_rng(args.get("seed", 0))
    batch = args["batch_size"]
    for _ in range(args["epochs"]):
        order = rng.permutation(len(y))
        for first in range(0, len(y), batch):
            rows = order[first : first + batch]
            p = 1.0 / (1.0 + np.exp(-(x[rows] @ w[:-1] + w[-1])))
            error = p - y[rows]
            g = np.append(x[rows].T @ error / len(rows) + l2 * w[:-1], error.mean())
            w = w - rate * (g + mu * (w - w0) + shift)
            steps += 1
    delta_c = None if c is None else (w0 - w) / (steps * rate) - c
    return w, delta_c


async def _node_round(
    x: np.ndarray,
    y: np.ndarray,
    start: dict[str, np.ndarray],
    training_args: dict[str, object],
    aux_var: dict[str, object] | None = None,
    source: str | None = None,
) -> tuple[np.ndarray, dict[str, object]]:
    table = Table([f"f{j}" for j in range(N_FEATURES)] + ["y"], np.column_stack([x, y]))
    outcome = await run_training(
        source or plan_source(LogisticRegressionPlan), "LogisticRegressionPlan",
        table=table, target="y", params=start, training_args=training_args,
        model_args={}, timeout=60, validation_fraction=0.0, aux_var=aux_var,
    )  # fmt: skip
    flat = np.concatenate([outcome.params["coef"], outcome.params["intercept"]])
    return flat, outcome.aux_var


@pytest.mark.parametrize("mu", [0.0, 0.5, 3.0])
async def test_fedprox_round_equals_proximal_gradient_descent(mu: float) -> None:
    x, y, start = _inputs()
    actual, aux_var = await _node_round(x, y, start, {**ARGS, "fedprox_mu": mu})
    expected, _ = reference(*_trained_rows(x, y), start, mu=mu)
    np.testing.assert_allclose(actual, expected, rtol=0, atol=1e-12)
    assert aux_var == {}
    if mu:
        plain, _ = reference(*_trained_rows(x, y), start)
        w0 = np.concatenate([start["coef"], start["intercept"]])
        assert np.linalg.norm(actual - w0) < np.linalg.norm(plain - w0)  # pulled towards w0


async def test_scaffold_round_equals_corrected_steps_and_option_ii() -> None:
    x, y, start = _inputs()
    rng = np.random.default_rng(5)
    c, c_i = rng.normal(scale=0.2, size=N_FEATURES + 1), rng.normal(scale=0.2, size=N_FEATURES + 1)

    def split(v: np.ndarray) -> dict[str, np.ndarray]:
        return {"coef": v[:-1], "intercept": v[-1:]}

    aux_var = {"scaffold_c": split(c), "scaffold_ci": split(c_i)}
    actual, returned = await _node_round(x, y, start, {**ARGS, "fedprox_mu": 0.5}, aux_var)
    expected, delta_c = reference(*_trained_rows(x, y), start, mu=0.5, c=c, c_i=c_i)
    np.testing.assert_allclose(actual, expected, rtol=0, atol=1e-12)
    delta = returned["scaffold_delta_c"]
    assert isinstance(delta, dict)
    got = np.concatenate([delta["coef"], delta["intercept"]])
    np.testing.assert_allclose(got, delta_c, rtol=0, atol=1e-12)


async def test_a_plan_without_the_correction_refuses_the_round() -> None:
    x, y, start = _inputs()
    source = (
        "from training_plans.logistic import LogisticRegressionPlan\n\n\n"
        "class LogisticRegressionPlan(LogisticRegressionPlan):\n"
        "    supports = frozenset()\n"
    )
    with pytest.raises(PlanFailedError, match="FedProx"):
        await _node_round(x, y, start, {**ARGS, "fedprox_mu": 0.1}, source=source)
    aux = {"scaffold_c": {"coef": np.zeros(N_FEATURES), "intercept": np.zeros(1)}}
    with pytest.raises(PlanFailedError, match="SCAFFOLD"):
        await _node_round(x, y, start, ARGS, aux, source=source)


def test_the_client_variate_is_kept_per_experiment_and_survives_reopening(tmp_path: Path) -> None:
    request = TrainRequest(
        researcher_id="alice", experiment_id="exp", round=1, dataset_id="dataset_1",
        training_plan=plan_source(LogisticRegressionPlan),
        training_plan_class="LogisticRegressionPlan",
    )  # fmt: skip
    c = {"coef": np.ones(2), "intercept": np.ones(1)}
    delta = {"coef": np.array([0.5, -0.5]), "intercept": np.array([2.0])}
    with NodeStateStore(tmp_path) as states:
        sent = with_client_variate(states, request, {"scaffold_c": c, "scaffold_ci": c})
        assert "scaffold_ci" not in sent  # never the researcher's, none kept yet
        keep_client_variate(states, request, sent, {"scaffold_delta_c": delta})
    with NodeStateStore(tmp_path) as states:
        second = with_client_variate(states, request.model_copy(update={"round": 2}), sent)
        np.testing.assert_array_equal(second["scaffold_ci"]["coef"], delta["coef"])
        keep_client_variate(states, request, second, {"scaffold_delta_c": delta})
        kept = load_client_variate(states, request)
        assert kept is not None
        np.testing.assert_array_equal(kept["intercept"], [4.0])
        other = request.model_copy(update={"experiment_id": "other"})
        assert load_client_variate(states, other) is None
