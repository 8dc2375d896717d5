"""The TrainingPlan base, the ready logistic regression plan, and plan sources."""

from __future__ import annotations

import importlib
import sys
import types
from collections.abc import Mapping
from typing import Any

import numpy as np
import pytest
from sklearn.datasets import load_breast_cancer

from training_plans.logistic import LogisticRegressionPlan
from training_plans.plan import TrainingPlan, plan_source


class DampedPlan(LogisticRegressionPlan):
    """A plan of the researcher's own, built on the ready one."""

    def train(self, x: Any, y: Any, training_args: Mapping[str, Any]) -> dict[str, float]:
        args = dict(training_args)
        args["learning_rate"] = float(np.float64(args.get("learning_rate", 0.1))) / 2
        return super().train(x, y, args)


class DoublyDampedPlan(DampedPlan):
    def train(self, x: Any, y: Any, training_args: Mapping[str, Any]) -> dict[str, float]:
        return super().train(x, y, {**training_args, "learning_rate": 0.05})


def breast_cancer_shards(n_nodes: int = 3):
    x, y = load_breast_cancer(return_X_y=True)
    order = np.random.default_rng(0).permutation(len(y))
    x, y = x[order], y[order].astype(np.float64)
    test = slice(0, 114)
    x_train, y_train = x[114:], y[114:]
    # The global mean and std, as federated analytics would compute them.
    mean, std = x_train.mean(axis=0), x_train.std(axis=0)

    def scale(a: np.ndarray) -> np.ndarray:
        return np.asarray((a - mean) / std)

    shards = [
        (scale(xs), ys)
        for xs, ys in zip(
            np.array_split(x_train, n_nodes), np.array_split(y_train, n_nodes), strict=True
        )
    ]
    return shards, (scale(x[test]), y[test])


def fedavg(updates: list[tuple[dict[str, np.ndarray], int]]) -> dict[str, np.ndarray]:
    total = sum(n for _, n in updates)
    first = updates[0][0]
    return {
        name: sum((p[name] * n for p, n in updates), np.zeros_like(first[name])) / total
        for name in first
    }


def test_fedavg_rounds_on_breast_cancer_shards_reach_good_accuracy():
    shards, (x_test, y_test) = breast_cancer_shards()
    model_args = {"n_features": x_test.shape[1]}
    training_args = {"epochs": 2, "batch_size": 16, "learning_rate": 0.1, "seed": 3}
    researcher = LogisticRegressionPlan()
    researcher.init_model(model_args)
    start = researcher.evaluate(x_test, y_test)

    for _ in range(5):
        updates = []
        for x, y in shards:
            node = LogisticRegressionPlan()
            node.init_model(model_args)
            node.set_params(researcher.get_params())
            node.train(x, y, training_args)
            updates.append((node.get_params(), len(y)))
        researcher.set_params(fedavg(updates))

    end = researcher.evaluate(x_test, y_test)
    assert end["accuracy"] >= 0.95
    assert end["loss"] < start["loss"] / 3


def test_training_is_deterministic_given_a_seed():
    shards, _ = breast_cancer_shards()
    x, y = shards[0]

    def trained(seed: int) -> dict[str, np.ndarray]:
        plan = LogisticRegressionPlan()
        plan.init_model({"n_features": x.shape[1]})
        plan.train(x, y, {"epochs": 1, "batch_size": 8, "seed": seed})
        return plan.get_params()

    first, again, other = trained(1), trained(1), trained(2)
    np.testing.assert_array_equal(first["coef"], again["coef"])
    assert not np.array_equal(first["coef"], other["coef"])


def test_params_are_copied_and_checked():
    plan = LogisticRegressionPlan()
    plan.init_model({"n_features": 3})
    params = {"coef": np.ones(3), "intercept": np.array([0.5])}
    params["coef"].flags.writeable = False
    plan.set_params(params)
    plan.get_params()["coef"][0] = 9.0
    np.testing.assert_array_equal(plan.get_params()["coef"], np.ones(3))
    with pytest.raises(ValueError, match="shape"):
        plan.set_params({"coef": np.ones(4), "intercept": np.zeros(1)})
    assert plan.evaluate(np.zeros((0, 3)), np.zeros(0)) == {}


def run_source(source: str, class_name: str) -> type[TrainingPlan]:
    module = types.ModuleType("sent_plan")
    exec(compile(source, "<plan>", "exec"), module.__dict__)
    cls: type[TrainingPlan] = module.__dict__[class_name]
    assert issubclass(cls, TrainingPlan)
    return cls


def test_plan_source_of_a_ready_plan_is_an_import():
    source = plan_source(LogisticRegressionPlan)
    assert source == "from training_plans import LogisticRegressionPlan\n"
    assert run_source(source, "LogisticRegressionPlan") is LogisticRegressionPlan


def test_plan_source_of_a_researcher_plan_is_self_contained():
    source = plan_source(DoublyDampedPlan)

    assert "import numpy as np" in source
    assert "from sklearn.datasets import load_breast_cancer" in source
    assert "from training_plans.logistic import LogisticRegressionPlan" in source
    assert "import pytest" not in source
    assert "class DampedPlan(LogisticRegressionPlan)" in source
    assert source.index("class DampedPlan") < source.index("class DoublyDampedPlan")
    assert "def fedavg" not in source

    cls = run_source(source, "DoublyDampedPlan")
    plan = cls()
    plan.init_model({"n_features": 2})
    metrics = plan.train(np.array([[1.0, 0.0], [0.0, 1.0]]), np.array([1.0, 0.0]), {})
    assert set(metrics) == {"loss"}


def test_plan_source_refuses_other_classes():
    with pytest.raises(TypeError):
        plan_source(int)  # type: ignore[arg-type]


def test_plan_source_imports_the_package_when_the_module_does_not(tmp_path, monkeypatch):
    (tmp_path / "guarded_plan.py").write_text(
        "import numpy as np\n"
        "\n"
        "if True:  # an import plan_source cannot copy\n"
        "    from training_plans.logistic import LogisticRegressionPlan\n"
        "\n"
        "\n"
        "class GuardedPlan(LogisticRegressionPlan):\n"
        "    pass\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    module = importlib.import_module("guarded_plan")
    try:
        source = plan_source(module.GuardedPlan)
    finally:
        sys.modules.pop("guarded_plan", None)

    assert source.startswith("import numpy as np\nfrom training_plans import *\n")
    assert issubclass(run_source(source, "GuardedPlan"), LogisticRegressionPlan)
