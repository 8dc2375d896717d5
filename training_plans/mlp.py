"""The ready neural-network plan: a multilayer perceptron with one hidden layer, in numpy."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import numpy as np
import numpy.typing as npt

from training_plans.batches import shuffled_batches
from training_plans.corrections import LocalCorrection
from training_plans.plan import Params, TrainingPlan

__all__ = ["MLPPlan"]

_NAMES = ("w1", "b1", "w2", "b2")


class MLPPlan(TrainingPlan):
    """A classifier with one hidden layer trained by mini-batch SGD on the cross-entropy.

    ``model_args``: ``n_features`` (required), ``hidden`` (16, the layer's width),
    ``n_classes`` (2; targets are 0 ... n_classes - 1), ``activation`` (``"tanh"`` or
    ``"relu"``), ``init_seed`` (0: the researcher's initial parameters and the nodes' agree).
    ``training_args``: ``epochs`` (1), ``batch_size`` (32), ``learning_rate`` (0.05), ``l2``
    (0.0), ``seed`` (0); FedProx's ``fedprox_mu`` and SCAFFOLD's control variates correct every
    step (see :mod:`training_plans.corrections`).
    Parameters: ``w1`` (features by hidden), ``b1``, ``w2`` (hidden by classes), ``b2``;
    Glorot-uniform weights and zero biases at first.
    """

    supports: ClassVar[frozenset[str]] = frozenset({"fedprox", "scaffold"})

    def __init__(self) -> None:
        self.params: Params = {}
        self.relu = False
        self.aux_var_in: dict[str, Any] = {}
        self.aux_var_out: dict[str, Any] = {}

    def init_model(self, model_args: Mapping[str, Any]) -> None:
        """Draw the initial weights from ``init_seed``.

        Raises:
            ValueError: a width or class count below 1 or 2, or an unknown activation.
        """
        n_features = int(model_args["n_features"])
        hidden = int(model_args.get("hidden", 16))
        n_classes = int(model_args.get("n_classes", 2))
        activation = str(model_args.get("activation", "tanh"))
        if hidden < 1 or n_classes < 2 or activation not in ("tanh", "relu"):
            raise ValueError("'hidden' must be ≥ 1, 'n_classes' ≥ 2, 'activation' tanh or relu")
        self.relu = activation == "relu"
        rng = np.random.default_rng(int(model_args.get("init_seed", 0)))

        def glorot(rows: int, cols: int) -> npt.NDArray[np.float64]:
            bound = np.sqrt(6.0 / (rows + cols))
            return rng.uniform(-bound, bound, size=(rows, cols))

        self.params = {
            "w1": glorot(n_features, hidden), "b1": np.zeros(hidden),
            "w2": glorot(hidden, n_classes), "b2": np.zeros(n_classes),
        }  # fmt: skip
        self.aux_var_in, self.aux_var_out = {}, {}

    def get_params(self) -> Params:
        """Copies of ``w1``, ``b1``, ``w2``, ``b2``."""
        return {name: self.params[name].copy() for name in _NAMES}

    def set_params(self, params: Mapping[str, npt.NDArray[Any]]) -> None:
        """Set every layer.

        Raises:
            ValueError: a parameter is missing or has the wrong shape.
        """
        new = {name: np.array(params[name], dtype=np.float64) for name in _NAMES}
        for name, value in new.items():
            if value.shape != self.params[name].shape:
                shape = self.params[name].shape
                raise ValueError(f"{name!r} must have shape {shape}, not {value.shape}")
        self.params = new

    def set_aux_var(self, aux_var: Mapping[str, Any]) -> None:
        """Keep the round's auxiliary variables (SCAFFOLD's control variates) for ``train``."""
        self.aux_var_in = dict(aux_var)

    def get_aux_var(self) -> dict[str, Any]:
        """SCAFFOLD's ``Δc_i`` after a SCAFFOLD round, else nothing."""
        return self.aux_var_out

    def _forward(
        self, x: npt.NDArray[np.float64]
    ) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64], npt.NDArray[np.float64]]:
        """Pre-activations, hidden activations and class probabilities of ``x``."""
        p = self.params
        z = x @ p["w1"] + p["b1"]
        h = np.maximum(z, 0.0) if self.relu else np.tanh(z)
        logits = h @ p["w2"] + p["b2"]
        logits = logits - logits.max(axis=1, keepdims=True)
        e = np.exp(logits)
        return z, h, e / e.sum(axis=1, keepdims=True)

    def _gradients(
        self, x: npt.NDArray[np.float64], y: npt.NDArray[np.float64], l2: float
    ) -> Params:
        p = self.params
        z, h, probabilities = self._forward(x)
        d = probabilities.copy()
        d[np.arange(len(y)), y.astype(int)] -= 1.0
        d /= len(y)
        dh = d @ p["w2"].T * ((z > 0) if self.relu else (1.0 - h * h))
        return {
            "w1": x.T @ dh + l2 * p["w1"], "b1": dh.sum(axis=0),
            "w2": h.T @ d + l2 * p["w2"], "b2": d.sum(axis=0),
        }  # fmt: skip

    def train(
        self,
        x: npt.NDArray[np.float64],
        y: npt.NDArray[np.float64],
        training_args: Mapping[str, Any],
    ) -> dict[str, float]:
        """Run ``epochs`` passes of mini-batch SGD; ``{"loss": ...}`` after training.

        Reports its progress: the step (``iteration``) and the ``loss`` of its batch, and at
        the end the loss on ``x``."""
        rate = float(training_args.get("learning_rate", 0.05))
        l2 = float(training_args.get("l2", 0.0))
        self._check_targets(y)
        correction = LocalCorrection(self.params, training_args, self.aux_var_in)
        step = 0
        for step, batch in shuffled_batches(len(y), training_args):
            if self.progress_due():
                self.report_progress(iteration=step, loss=self._loss(x[batch], y[batch]))
            grads = self._gradients(x[batch], y[batch], l2)
            for name in _NAMES:
                value = self.params[name]
                self.params[name] = value - rate * correction.gradient(name, value, grads[name])
            correction.count_step()
        self.aux_var_out = correction.aux_var(self.params, rate)
        loss = self._loss(x, y)
        self.report_progress(iteration=step, loss=loss)
        return {"loss": loss}

    def evaluate(self, x: npt.NDArray[np.float64], y: npt.NDArray[np.float64]) -> dict[str, float]:
        """The mean cross-entropy and the accuracy."""
        if len(y) == 0:
            return {}
        self._check_targets(y)
        _, _, probabilities = self._forward(x)
        accuracy = float(np.mean(np.argmax(probabilities, axis=1) == y.astype(int)))
        return {"loss": self._loss(x, y), "accuracy": accuracy}

    def predict(self, x: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
        """The most probable class of each row of ``x``."""
        _, _, probabilities = self._forward(x)
        return np.asarray(np.argmax(probabilities, axis=1), dtype=np.float64)

    def _loss(self, x: npt.NDArray[np.float64], y: npt.NDArray[np.float64]) -> float:
        _, _, probabilities = self._forward(x)
        picked = probabilities[np.arange(len(y)), y.astype(int)]
        return float(-np.mean(np.log(np.clip(picked, 1e-12, 1.0))))

    def _check_targets(self, y: npt.NDArray[np.float64]) -> None:
        n_classes = self.params["b2"].shape[0]
        if np.any((y != np.round(y)) | (y < 0) | (y >= n_classes)):
            raise ValueError(f"targets must be class numbers 0 ... {n_classes - 1}")
