"""The ready scikit-learn plan: a linear estimator trained with ``partial_fit``.

Its parameters are the estimator's ``coef_`` and ``intercept_``, so every strategy that averages
parameters (FedAvg, the server optimizers) works with it. scikit-learn is imported when the
model is built, so importing :mod:`training_plans` needs numpy only.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import numpy as np
import numpy.typing as npt

from training_plans.batches import shuffled_batches
from training_plans.plan import Params, TrainingPlan

__all__ = ["SklearnLinearPlan"]

CLASSIFIERS = frozenset({"SGDClassifier", "Perceptron"})
"""The linear classifiers the plan builds."""
REGRESSORS = frozenset({"SGDRegressor"})
"""The linear regressors the plan builds."""


class SklearnLinearPlan(TrainingPlan):
    """A linear scikit-learn estimator (``SGDClassifier``, ``SGDRegressor``, ``Perceptron``)
    trained by ``partial_fit`` on mini-batches.

    ``model_args``: ``n_features`` (required); ``estimator`` (``"SGDClassifier"``);
    ``estimator_args``, keyword arguments of the estimator (``random_state`` 0 unless given);
    ``classes``, every class of a classifier, fixed up front (``[0, 1]``).
    ``training_args``: ``epochs`` (1), ``batch_size`` (32), ``seed`` (0, the batches' order).
    Parameters: ``coef`` (classes or 1 by features; features for a regressor) and
    ``intercept``, from zeros.

    ``partial_fit`` takes no gradient term from outside, so this plan applies neither FedProx's
    proximal term nor SCAFFOLD's correction: a round asking for one fails (an
    ``SGDClassifier``'s own ``alpha`` penalises ``‖w‖²``, not ``‖w - w_global‖²``).
    """

    supports: ClassVar[frozenset[str]] = frozenset()

    def __init__(self) -> None:
        self.estimator: Any = None
        self.classes: npt.NDArray[np.float64] | None = None

    def init_model(self, model_args: Mapping[str, Any]) -> None:
        """Build the estimator with zero ``coef_`` and ``intercept_``.

        Raises:
            ValueError: an estimator other than the linear ones above, or fewer than two
                classes.
        """
        from sklearn import linear_model

        name = str(model_args.get("estimator", "SGDClassifier"))
        if name not in CLASSIFIERS | REGRESSORS:
            known = ", ".join(sorted(CLASSIFIERS | REGRESSORS))
            raise ValueError(f"unknown estimator {name!r} (known: {known})")
        arguments = {"random_state": 0, **dict(model_args.get("estimator_args") or {})}
        self.estimator = getattr(linear_model, name)(**arguments)
        n_features = int(model_args["n_features"])
        if name in CLASSIFIERS:
            self.classes = np.asarray(model_args.get("classes", [0, 1]), dtype=np.float64)
            if len(np.unique(self.classes)) != len(self.classes) or len(self.classes) < 2:
                raise ValueError("'classes' must list two or more distinct classes")
            rows = 1 if len(self.classes) == 2 else len(self.classes)
            self.estimator.coef_ = np.zeros((rows, n_features))
            self.estimator.intercept_ = np.zeros(rows)
        else:
            self.classes = None
            self.estimator.coef_ = np.zeros(n_features)
            self.estimator.intercept_ = np.zeros(1)

    def get_params(self) -> Params:
        """Copies of ``coef_`` and ``intercept_``."""
        return {
            "coef": np.array(self.estimator.coef_, dtype=np.float64),
            "intercept": np.array(self.estimator.intercept_, dtype=np.float64),
        }

    def set_params(self, params: Mapping[str, npt.NDArray[Any]]) -> None:
        """Set ``coef_`` and ``intercept_``.

        Raises:
            ValueError: a parameter is missing or has the wrong shape.
        """
        for name, attribute in (("coef", "coef_"), ("intercept", "intercept_")):
            value = np.array(params[name], dtype=np.float64)
            shape = np.shape(getattr(self.estimator, attribute))
            if value.shape != shape:
                raise ValueError(f"{name!r} must have shape {shape}, not {value.shape}")
            setattr(self.estimator, attribute, value)

    def train(
        self,
        x: npt.NDArray[np.float64],
        y: npt.NDArray[np.float64],
        training_args: Mapping[str, Any],
    ) -> dict[str, float]:
        """Run ``epochs`` passes of ``partial_fit`` over shuffled mini-batches.

        Reports its progress: the step (``iteration``) and the ``loss`` of its batch before
        the step (mean squared error of a regressor, error rate of a classifier), and at the
        end the metrics on ``x``."""
        extra = {} if self.classes is None else {"classes": self.classes}
        step = 0
        for step, batch in shuffled_batches(len(y), training_args):
            if self.progress_due():
                self.report_progress(iteration=step, loss=self._batch_loss(x[batch], y[batch]))
            self.estimator.partial_fit(x[batch], y[batch], **extra)
        metrics = self.evaluate(x, y)
        self.report_progress(iteration=step, **metrics)
        return metrics

    def evaluate(self, x: npt.NDArray[np.float64], y: npt.NDArray[np.float64]) -> dict[str, float]:
        """``accuracy`` of a classifier; ``loss`` (mean squared error) and ``r2`` of a
        regressor."""
        if len(y) == 0:
            return {}
        predicted = self._predict(x)
        if self.classes is not None:
            return {"accuracy": float(np.mean(predicted == y))}
        loss = float(np.mean((predicted - y) ** 2))
        spread = float(np.mean((y - np.mean(y)) ** 2))
        return {"loss": loss, "r2": 1.0 - loss / spread if spread else 0.0}

    def predict(self, x: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
        """A classifier's class or a regressor's value for each row of ``x``."""
        return self._predict(x)

    def is_classifier(self) -> bool:
        """True for ``SGDClassifier`` and ``Perceptron``, false for ``SGDRegressor``."""
        return self.classes is not None

    def _batch_loss(self, x: npt.NDArray[np.float64], y: npt.NDArray[np.float64]) -> float:
        predicted = self._predict(x)
        if self.classes is not None:
            return float(np.mean(predicted != y))
        return float(np.mean((predicted - y) ** 2))

    def _predict(self, x: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
        """Predictions from the parameters alone (before any ``partial_fit`` too)."""
        scores = x @ np.atleast_2d(self.estimator.coef_).T + self.estimator.intercept_
        if self.classes is None:
            return np.asarray(scores[:, 0], dtype=np.float64)
        if scores.shape[1] == 1:
            return np.asarray(np.where(scores[:, 0] > 0, self.classes[1], self.classes[0]))
        return np.asarray(self.classes[np.argmax(scores, axis=1)], dtype=np.float64)
