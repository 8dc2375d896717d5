"""Training plans: the model code a researcher sends for nodes to run on their data.

A researcher subclasses :class:`TrainingPlan` (or the ready
:class:`~training_plans.logistic.LogisticRegressionPlan`) and sends its source, from
:func:`plan_source`, with each training request. A node runs it only if its operator approved
that exact source, in a child process, with numpy, scikit-learn and the :mod:`training_plans`
package available. Parameters travel as ``dict[str, numpy.ndarray]``; the researcher averages
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
from typing import Any, ClassVar

import numpy as np
import numpy.typing as npt

from training_plans.progress import progress_due, report_progress

Params = dict[str, npt.NDArray[np.float64]]
"""A model's parameters by name."""

__all__ = [
    "ALLOWED_IMPORT_ROOTS",
    "Params",
    "TrainingPlan",
    "plan_source",
]

_PACKAGE = __name__.rpartition(".")[0]
"""``training_plans``, the package a plan's source imports the base and the ready plans from."""

ALLOWED_IMPORT_ROOTS = frozenset(
    {"__future__", "numpy", "sklearn", "scipy", "math", "typing", "collections", "dataclasses"}
)
"""Packages whose imports :func:`plan_source` copies into a plan's source, besides
:mod:`training_plans`."""


class TrainingPlan(ABC):
    """A model a node trains on its local data.

    Subclasses implement the five methods below and are built without arguments. A node calls,
    in order:
    ``init_model(model_args)``, ``set_params(params)`` with the researcher's global parameters,
    ``set_aux_var(aux_var)`` when the request carries optimizer auxiliary variables, then
    ``train(x, y, training_args)`` (skipped in validation-only rounds),
    ``evaluate(x_val, y_val)``, ``get_params()`` and ``get_aux_var()``. A prediction calls
    ``init_model(model_args)``, ``set_params(params)`` and ``predict(x)``.

    A plan that applies FedProx's proximal term or SCAFFOLD's correction during ``train``
    (see :mod:`training_plans.corrections`) names them in :attr:`supports`; a round asking a
    plan for one it does not name fails instead of training without it.
    """

    supports: ClassVar[frozenset[str]] = frozenset()
    """The local corrections ``train`` applies: ``"fedprox"``, ``"scaffold"``."""

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

    def predict(self, x: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
        """Return one prediction per row of ``x``: a class for a classifier, a value for a
        regressor (see :meth:`is_classifier`). The ready plans implement it; a plan without it
        cannot be used for prediction.

        Raises:
            NotImplementedError: the plan does not predict.
        """
        raise NotImplementedError(f"{type(self).__name__} does not implement predict(x)")

    def is_classifier(self) -> bool:
        """Whether :meth:`predict` gives classes (summarised by counts) rather than values
        (summarised by mean and standard deviation); classes by default."""
        return True

    def set_aux_var(self, aux_var: Mapping[str, Any]) -> None:  # noqa: B027 (optional hook)
        """Receive the researcher's optimizer auxiliary variables (such as a global Scaffold
        correction) before ``train``; called only when the request carries some. Plans
        without an optimizer state ignore them."""

    def get_aux_var(self) -> dict[str, Any]:
        """Return auxiliary variables for the researcher's optimizer, read after training
        (arrays by name, nested mappings allowed); none by default."""
        return {}

    def report_progress(
        self, iteration: float | None = None, loss: float | None = None, **scalars: Any
    ) -> None:
        """Report how training goes, e.g. ``self.report_progress(iteration=i, loss=l)``.

        Call it from ``train`` as often as convenient: on a node the latest values reach the
        researcher's monitor a few times a second at most; elsewhere it does nothing. It never
        raises and never waits. Values that are not numbers are left out.
        """
        report_progress({"iteration": iteration, "loss": loss, **scalars})

    def progress_due(self) -> bool:
        """Whether a :meth:`report_progress` now would reach the researcher (rather than be
        replaced by a later one): compute costly values only when it is. False off a node."""
        return progress_due()


def plan_source(cls: type[TrainingPlan]) -> str:
    """Return self-contained source of a training plan class, to send to nodes.

    A class of the :mod:`training_plans` package becomes a one-line import from the package.
    Otherwise the source holds the imports of the class's module from
    :data:`ALLOWED_IMPORT_ROOTS` or :mod:`training_plans`, then each class of its ancestry
    defined in that same module, base first. Anything else the class uses at module level
    (helpers, constants, other imports) is not included: keep plans self-contained.

    Raises:
        TypeError: ``cls`` is not a TrainingPlan subclass.
        ValueError: its source is not available (e.g. defined in an interactive session).
    """
    if not (isinstance(cls, type) and issubclass(cls, TrainingPlan)):
        raise TypeError(f"{cls!r} is not a TrainingPlan subclass")
    if _is_ours(cls.__module__):
        return f"from {_PACKAGE} import {cls.__name__}\n"
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
    if not any(_PACKAGE in line for line in imports):
        imports.append(f"from {_PACKAGE} import *")
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


def _is_ours(module: str) -> bool:
    return module == _PACKAGE or module.startswith(_PACKAGE + ".")


def _is_allowed(module: str) -> bool:
    return _is_ours(module) or module.split(".")[0] in ALLOWED_IMPORT_ROOTS
