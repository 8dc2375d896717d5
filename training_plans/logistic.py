"""The ready training plan: binary logistic regression in numpy.

A researcher sends it as is (its source is a one-line import, see
:func:`training_plans.plan.plan_source`) or subclasses it to change its defaults.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import numpy as np
import numpy.typing as npt

from training_plans.batches import shuffled_batches
from training_plans.corrections import LocalCorrection
from training_plans.plan import Params, TrainingPlan

__all__ = ["LogisticRegressionPlan"]


class LogisticRegressionPlan(TrainingPlan):
    """Binary logistic regression trained by mini-batch gradient descent, in numpy.

    Deterministic: batches are shuffled with ``numpy.random.default_rng(seed)``.

    ``model_args``: ``n_features`` (required). ``training_args``: ``epochs`` (1), ``batch_size``
    (32), ``learning_rate`` (0.1), ``l2`` (0.0, weight decay), ``seed`` (0). Targets are 0 or 1.
    Parameters: ``coef`` (n_features,) and ``intercept`` (1,).

    FedProx (``training_args["fedprox_mu"]``) and SCAFFOLD (the ``scaffold_c`` auxiliary
    variable) correct every step's gradient, see :mod:`training_plans.corrections`.
    """

    supports: ClassVar[frozenset[str]] = frozenset({"fedprox", "scaffold"})

    def __init__(self) -> None:
        self.coef = np.zeros(0, dtype=np.float64)
        self.intercept = np.zeros(1, dtype=np.float64)
        self.aux_var_in: dict[str, Any] = {}
        self.aux_var_out: dict[str, Any] = {}

    def init_model(self, model_args: Mapping[str, Any]) -> None:
        """Start from zero weights for ``model_args["n_features"]`` features."""
        self.coef = np.zeros(int(model_args["n_features"]), dtype=np.float64)
        self.intercept = np.zeros(1, dtype=np.float64)
        self.aux_var_in, self.aux_var_out = {}, {}

    def set_aux_var(self, aux_var: Mapping[str, Any]) -> None:
        """Keep the round's auxiliary variables (SCAFFOLD's control variates) for ``train``."""
        self.aux_var_in = dict(aux_var)

    def get_aux_var(self) -> dict[str, Any]:
        """SCAFFOLD's ``Δc_i`` after a SCAFFOLD round, else nothing."""
        return self.aux_var_out

    def get_params(self) -> Params:
        """Return copies of ``coef`` and ``intercept``."""
        return {"coef": self.coef.copy(), "intercept": self.intercept.copy()}

    def set_params(self, params: Mapping[str, npt.NDArray[Any]]) -> None:
        """Set ``coef`` and ``intercept``.

        Raises:
            ValueError: a parameter is missing or has the wrong shape.
        """
        coef = np.array(params["coef"], dtype=np.float64)
        intercept = np.array(params["intercept"], dtype=np.float64).reshape(1)
        if coef.shape != self.coef.shape:
            raise ValueError(f"'coef' must have shape {self.coef.shape}, not {coef.shape}")
        self.coef, self.intercept = coef, intercept

    def _params(self) -> Params:
        return {"coef": self.coef, "intercept": self.intercept}

    def _probabilities(self, x: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
        logits = np.clip(x @ self.coef + self.intercept[0], -500.0, 500.0)
        return np.asarray(1.0 / (1.0 + np.exp(-logits)), dtype=np.float64)

    def train(
        self,
        x: npt.NDArray[np.float64],
        y: npt.NDArray[np.float64],
        training_args: Mapping[str, Any],
    ) -> dict[str, float]:
        """Run ``epochs`` passes of mini-batch gradient descent on the log loss.

        Reports its progress: the step (``iteration``) and the ``loss`` of its batch, and at
        the end the loss on ``x``.

        Returns:
            ``{"loss": ...}``, the mean log loss on ``x`` after training.
        """
        rate = float(training_args.get("learning_rate", 0.1))
        l2 = float(training_args.get("l2", 0.0))
        correction = LocalCorrection(self._params(), training_args, self.aux_var_in)
        step = 0
        for step, batch in shuffled_batches(len(y), training_args):
            if self.progress_due():
                self.report_progress(iteration=step, loss=self._log_loss(x[batch], y[batch]))
            error = self._probabilities(x[batch]) - y[batch]
            coef = x[batch].T @ error / len(batch) + l2 * self.coef
            intercept = np.array([np.mean(error)])
            self.coef -= rate * correction.gradient("coef", self.coef, coef)
            self.intercept -= rate * correction.gradient("intercept", self.intercept, intercept)
            correction.count_step()
        self.aux_var_out = correction.aux_var(self._params(), rate)
        loss = self._log_loss(x, y)
        self.report_progress(iteration=step, loss=loss)
        return {"loss": loss}

    def evaluate(self, x: npt.NDArray[np.float64], y: npt.NDArray[np.float64]) -> dict[str, float]:
        """Return the mean log loss and the accuracy on ``x`` and ``y``."""
        if len(y) == 0:
            return {}
        predicted = self._probabilities(x) >= 0.5
        return {"loss": self._log_loss(x, y), "accuracy": float(np.mean(predicted == (y >= 0.5)))}

    def predict(self, x: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
        """The class of each row of ``x``: 1 where its probability is at least 0.5, else 0."""
        return (self._probabilities(x) >= 0.5).astype(np.float64)

    def _log_loss(self, x: npt.NDArray[np.float64], y: npt.NDArray[np.float64]) -> float:
        p = np.clip(self._probabilities(x), 1e-12, 1.0 - 1e-12)
        return float(-np.mean(y * np.log(p) + (1.0 - y) * np.log(1.0 - p)))
