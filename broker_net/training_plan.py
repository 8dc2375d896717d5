"""Training plans: the model code a researcher sends for nodes to run on their data.

A researcher subclasses :class:`TrainingPlan` (or the ready :class:`LogisticRegressionPlan`) and
sends its source, from :func:`plan_source`, with each training request. A node runs it only if
its operator approved that exact source, in a child process, with numpy, scikit-learn and this
module available. Parameters travel as ``dict[str, numpy.ndarray]``; the researcher averages
them across nodes (FedAvg) between rounds.

Usage::

    class MyPlan(LogisticRegressionPlan):
        pass

    source = plan_source(MyPlan)  # what TrainRequest.training_plan carries
"""

from __future__ import annotations

import ast
import inspect
import sys
import textwrap
from abc import ABC, abstractmethod
from collections.abc import Mapping
from typing import Any

import numpy as np
import numpy.typing as npt

Params = dict[str, npt.NDArray[np.float64]]
"""A model's parameters by name."""

__all__ = [
    "ALLOWED_IMPORT_ROOTS",
    "LogisticRegressionPlan",
    "Params",
    "TrainingPlan",
    "plan_source",
]

ALLOWED_IMPORT_ROOTS = frozenset(
    {"__future__", "numpy", "sklearn", "scipy", "math", "typing", "collections", "dataclasses"}
)
"""Packages whose imports :func:`plan_source` copies into a plan's source, besides this module."""


class TrainingPlan(ABC):
    """A model a node trains on its local data.

    Subclasses implement the five methods below and are built without arguments. A node calls,
    in order:
    ``init_model(model_args)``, ``set_params(params)`` with the researcher's global parameters,
    ``set_aux_var(aux_var)`` when the request carries optimizer auxiliary variables, then
    ``train(x, y, training_args)`` (skipped in validation-only rounds),
    ``evaluate(x_val, y_val)``, ``get_params()`` and ``get_aux_var()``.
    """

    @abstractmethod
    def init_model(self, model_args: Mapping[str, Any]) -> None:
        """Create the model, e.g. its shapes from ``model_args["n_features"]``."""

    @abstractmethod
    def get_params(self) -> Params:
        """Return the model's parameters (arrays the caller may keep)."""

    @abstractmethod
    def set_params(self, params: Mapping[str, npt.NDArray[Any]]) -> None:
        """Replace the model's parameters by ``params`` (the plan copies them)."""

    @abstractmethod
    def train(
        self,
        x: npt.NDArray[np.float64],
        y: npt.NDArray[np.float64],
        training_args: Mapping[str, Any],
    ) -> dict[str, float]:
        """Train on ``x`` (rows by features) and ``y`` (one target per row).

        Returns:
            Training metrics, e.g. ``{"loss": ...}``.
        """

    @abstractmethod
    def evaluate(self, x: npt.NDArray[np.float64], y: npt.NDArray[np.float64]) -> dict[str, float]:
        """Return metrics of the model on ``x`` and ``y``, e.g. ``loss`` and ``accuracy``."""

    def set_aux_var(self, aux_var: Mapping[str, Any]) -> None:  # noqa: B027 (optional hook)
        """Receive the researcher's optimizer auxiliary variables (such as a global Scaffold
        correction) before ``train``; called only when the request carries some. Plans
        without an optimizer state ignore them."""

    def get_aux_var(self) -> dict[str, Any]:
        """Return auxiliary variables for the researcher's optimizer, read after training
        (arrays by name, nested mappings allowed); none by default."""
        return {}


class LogisticRegressionPlan(TrainingPlan):
    """Binary logistic regression trained by mini-batch gradient descent, in numpy.

    Deterministic: batches are shuffled with ``numpy.random.default_rng(seed)``.

    ``model_args``: ``n_features`` (required). ``training_args``: ``epochs`` (1), ``batch_size``
    (32), ``learning_rate`` (0.1), ``l2`` (0.0, weight decay), ``seed`` (0). Targets are 0 or 1.
    Parameters: ``coef`` (n_features,) and ``intercept`` (1,).
    """

    def __init__(self) -> None:
        self.coef = np.zeros(0, dtype=np.float64)
        self.intercept = np.zeros(1, dtype=np.float64)

    def init_model(self, model_args: Mapping[str, Any]) -> None:
        """Start from zero weights for ``model_args["n_features"]`` features."""
        self.coef = np.zeros(int(model_args["n_features"]), dtype=np.float64)
        self.intercept = np.zeros(1, dtype=np.float64)

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

        Returns:
            ``{"loss": ...}``, the mean log loss on ``x`` after training.
        """
        epochs = int(training_args.get("epochs", 1))
        batch_size = max(1, int(training_args.get("batch_size", 32)))
        rate = float(training_args.get("learning_rate", 0.1))
        l2 = float(training_args.get("l2", 0.0))
        rng = np.random.default_rng(int(training_args.get("seed", 0)))
        for _ in range(epochs):
            order = rng.permutation(len(y))
            for start in range(0, len(y), batch_size):
                batch = order[start : start + batch_size]
                error = self._probabilities(x[batch]) - y[batch]
                self.coef -= rate * (x[batch].T @ error / len(batch) + l2 * self.coef)
                self.intercept -= rate * float(np.mean(error))
        return {"loss": self._log_loss(x, y)}

    def evaluate(self, x: npt.NDArray[np.float64], y: npt.NDArray[np.float64]) -> dict[str, float]:
        """Return the mean log loss and the accuracy on ``x`` and ``y``."""
        if len(y) == 0:
            return {}
        predicted = self._probabilities(x) >= 0.5
        return {"loss": self._log_loss(x, y), "accuracy": float(np.mean(predicted == (y >= 0.5)))}

    def _log_loss(self, x: npt.NDArray[np.float64], y: npt.NDArray[np.float64]) -> float:
        p = np.clip(self._probabilities(x), 1e-12, 1.0 - 1e-12)
        return float(-np.mean(y * np.log(p) + (1.0 - y) * np.log(1.0 - p)))


def plan_source(cls: type[TrainingPlan]) -> str:
    """Return self-contained source of a training plan class, to send to nodes.

    A class of this module becomes a one-line import. Otherwise the source holds the imports of
    the class's module from :data:`ALLOWED_IMPORT_ROOTS`, then each class of its ancestry
    defined in that same module, base first. Anything else the class uses at module level
    (helpers, constants, other imports) is not included: keep plans self-contained.

    Raises:
        TypeError: ``cls`` is not a TrainingPlan subclass.
        ValueError: its source is not available (e.g. defined in an interactive session).
    """
    if not (isinstance(cls, type) and issubclass(cls, TrainingPlan)):
        raise TypeError(f"{cls!r} is not a TrainingPlan subclass")
    if cls.__module__ == __name__:
        return f"from {__name__} import {cls.__name__}\n"
    module = sys.modules.get(cls.__module__)
    try:
        module_source = inspect.getsource(module) if module is not None else ""
        classes = [
            textwrap.dedent(inspect.getsource(klass))
            for klass in reversed(cls.__mro__)
            if klass.__module__ == cls.__module__
        ]
    except (OSError, TypeError) as exc:
        raise ValueError(f"the source of {cls.__qualname__} is not available: {exc}") from exc
    imports = _allowed_imports(module_source) if module_source else []
    if not any("broker_net.training_plan" in line for line in imports):
        imports.append(f"from {__name__} import *")
    return "\n".join(imports) + "\n\n\n" + "\n\n".join(classes)


def _allowed_imports(source: str) -> list[str]:
    """Top-level import statements of ``source`` whose modules are allowed, in order."""
    lines: list[str] = []
    for node in ast.parse(source).body:
        if isinstance(node, ast.Import):
            modules = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            modules = [node.module]
        else:
            continue
        if all(_is_allowed(module) for module in modules):
            lines.append(ast.unparse(node))
    return lines


def _is_allowed(module: str) -> bool:
    return module == __name__ or module.split(".")[0] in ALLOWED_IMPORT_ROOTS
