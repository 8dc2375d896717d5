"""The ready MLP and scikit-learn plans on their own: parameters round-trip through get and set,
the MLP's gradients match finite differences, what each supports of FedProx and SCAFFOLD, and
predictions that agree with evaluate."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from training_plans.corrections import check_supported
from training_plans.linear import SklearnLinearPlan
from training_plans.logistic import LogisticRegressionPlan
from training_plans.mlp import MLPPlan
from training_plans.plan import TrainingPlan


def _data(n_classes: int = 2) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(3)
    x = rng.normal(size=(60, 5))
    y = np.digitize(x @ np.array([1.0, -1.0, 0.5, 0.0, 0.2]), [-0.5, 0.5][: n_classes - 1])
    return x, y.astype(np.float64)


PLANS: list[tuple[type[TrainingPlan], dict[str, Any]]] = [
    (MLPPlan, {"hidden": 4}),
    (MLPPlan, {"hidden": 3, "n_classes": 3, "activation": "relu"}),
    (SklearnLinearPlan, {"estimator": "SGDClassifier"}),
    (SklearnLinearPlan, {"estimator": "Perceptron", "classes": [0, 1, 2]}),
    (SklearnLinearPlan, {"estimator": "SGDRegressor"}),
]


@pytest.mark.parametrize(("cls", "model_args"), PLANS)
def test_parameters_round_trip_through_get_and_set(
    cls: type[TrainingPlan], model_args: dict[str, Any]
) -> None:
    n_classes = len(model_args.get("classes", [])) or model_args.get("n_classes", 2)
    x, y = _data(n_classes)
    trained = cls()
    trained.init_model({"n_features": 5, **model_args})
    trained.train(x, y, {"epochs": 2, "batch_size": 8})
    params = trained.get_params()

    fresh = cls()
    fresh.init_model({"n_features": 5, **model_args})
    fresh.set_params(params)
    for name, value in fresh.get_params().items():
        np.testing.assert_array_equal(value, params[name])
        assert value.dtype == np.float64
    assert fresh.evaluate(x, y) == trained.evaluate(x, y)
    first = next(iter(params))
    params[first] += 1.0  # get_params gives copies
    assert not np.array_equal(trained.get_params()[first], params[first])
    bad = {name: np.zeros((*value.shape, 2)) for name, value in params.items()}
    with pytest.raises(ValueError, match="shape"):
        fresh.set_params(bad)


def test_the_mlp_gradients_match_finite_differences() -> None:
    x, y = _data(3)
    plan = MLPPlan()
    plan.init_model({"n_features": 5, "hidden": 4, "n_classes": 3, "init_seed": 1})
    grads = plan._gradients(x, y, l2=0.1)
    base = plan.get_params()

    def objective(params: dict[str, np.ndarray]) -> float:
        plan.set_params(params)
        penalty = 0.05 * (np.sum(params["w1"] ** 2) + np.sum(params["w2"] ** 2))
        return plan._loss(x, y) + penalty

    for name in ("w1", "b1", "w2", "b2"):
        for index in np.ndindex(base[name].shape):
            up, down = dict(base), dict(base)
            up[name], down[name] = base[name].copy(), base[name].copy()
            up[name][index] += 1e-6
            down[name][index] -= 1e-6
            numeric = (objective(up) - objective(down)) / 2e-6
            assert grads[name][index] == pytest.approx(numeric, abs=1e-7)


def test_the_mlp_learns_and_honours_fedprox() -> None:
    x, y = _data()
    plan = MLPPlan()
    plan.init_model({"n_features": 5, "hidden": 8})
    start = plan.get_params()
    before = plan.evaluate(x, y)
    plan.train(x, y, {"epochs": 20, "batch_size": 8, "learning_rate": 0.1})
    assert plan.evaluate(x, y)["accuracy"] > max(0.9, before["accuracy"])
    free = plan.get_params()

    plan.init_model({"n_features": 5, "hidden": 8})
    plan.train(x, y, {"epochs": 20, "batch_size": 8, "learning_rate": 0.1, "fedprox_mu": 5.0})
    held = plan.get_params()
    distance = {  # the proximal term keeps the model nearer to where the round started
        name: sum(float(np.sum((p[k] - start[k]) ** 2)) for k in start)
        for name, p in (("free", free), ("held", held))
    }
    assert distance["held"] < distance["free"] / 2


def test_what_each_plan_supports() -> None:
    scaffold = {"scaffold_c": {}}
    check_supported(MLPPlan.supports, {"fedprox_mu": 0.1}, scaffold)
    check_supported(SklearnLinearPlan.supports, {"fedprox_mu": 0.0}, {})
    with pytest.raises(ValueError, match="FedProx"):
        check_supported(SklearnLinearPlan.supports, {"fedprox_mu": 0.1}, {})
    with pytest.raises(ValueError, match="SCAFFOLD"):
        check_supported(SklearnLinearPlan.supports, {}, scaffold)
    with pytest.raises(ValueError, match="fedprox_mu"):
        check_supported(MLPPlan.supports, {"fedprox_mu": -1}, {})
    with pytest.raises(ValueError, match="unknown estimator"):
        SklearnLinearPlan().init_model({"n_features": 2, "estimator": "RandomForestClassifier"})


@pytest.mark.parametrize(("cls", "model_args"), PLANS)
def test_predictions_agree_with_evaluate(
    cls: type[TrainingPlan], model_args: dict[str, Any]
) -> None:
    n_classes = len(model_args.get("classes", [])) or int(model_args.get("n_classes", 2))
    x, y = _data(n_classes)
    plan = cls()
    plan.init_model({"n_features": x.shape[1], **model_args})
    plan.train(x, y, {"epochs": 5, "learning_rate": 0.1})
    predicted = plan.predict(x)
    assert predicted.shape == (len(x),) and predicted.dtype == np.float64
    metrics = plan.evaluate(x, y)
    if plan.is_classifier():
        assert set(np.unique(predicted)) <= set(range(n_classes))
        assert float(np.mean(predicted == y)) == pytest.approx(metrics["accuracy"])
    else:
        assert float(np.mean((predicted - y) ** 2)) == pytest.approx(metrics["loss"])


def test_the_logistic_plan_predicts_classes_and_the_base_plan_does_not_predict() -> None:
    x, y = _data()
    plan = LogisticRegressionPlan()
    plan.init_model({"n_features": x.shape[1]})
    plan.train(x, y, {"epochs": 5})
    assert plan.is_classifier()
    assert float(np.mean(plan.predict(x) == y)) == pytest.approx(plan.evaluate(x, y)["accuracy"])

    class Silent(LogisticRegressionPlan):
        predict = TrainingPlan.predict

    with pytest.raises(NotImplementedError, match="Silent does not implement predict"):
        Silent().predict(x)
