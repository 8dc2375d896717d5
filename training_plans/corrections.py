"""What FedProx and SCAFFOLD add to a plan's local gradient steps.

FedProx (Li et al. 2020) adds the gradient of the proximal term ``μ/2·‖w - w_global‖²``,
``μ·(w - w_global)``, where ``w_global`` are the parameters the round started from (the
researcher's global ones) and ``μ`` is ``training_args["fedprox_mu"]``.

SCAFFOLD (Karimireddy et al. 2020, option II) corrects every local gradient ``g`` to
``g - c_i + c``, with the server control variate ``c`` (the researcher sends it in the
request's auxiliary variables, :data:`SCAFFOLD_C`) and the node's own ``c_i`` (the node adds
it, :data:`SCAFFOLD_CI`; zeros in its first round). After ``K`` local steps of learning rate
``η`` from ``x`` to ``y`` the plan returns ``Δc_i = (x - y)/(K·η) - c``
(:data:`SCAFFOLD_DELTA_C`): the node keeps ``c_i + Δc_i`` and the researcher updates ``c``.

A plan applies both through :class:`LocalCorrection` and says so in
:attr:`~training_plans.plan.TrainingPlan.supports`; a round that asks a plan for a
correction it does not support fails (:func:`check_supported`) rather than silently training
without it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import numpy.typing as npt

__all__ = [
    "FEDPROX_MU",
    "SCAFFOLD_C",
    "SCAFFOLD_CI",
    "SCAFFOLD_DELTA_C",
    "LocalCorrection",
    "check_supported",
    "fedprox_mu",
]

FEDPROX_MU = "fedprox_mu"
"""The ``training_args`` key of FedProx's μ."""
SCAFFOLD_C = "scaffold_c"
"""The auxiliary variable of the server control variate ``c``, by parameter name."""
SCAFFOLD_CI = "scaffold_ci"
"""The auxiliary variable of the node's control variate ``c_i``, added by the node itself."""
SCAFFOLD_DELTA_C = "scaffold_delta_c"
"""The auxiliary variable a plan returns: ``Δc_i``, by parameter name."""

Arrays = dict[str, npt.NDArray[np.float64]]


def fedprox_mu(training_args: Mapping[str, Any]) -> float:
    """FedProx's μ from ``training_args`` (0 when absent).

    Raises:
        ValueError: μ is not a non-negative number.
    """
    mu = training_args.get(FEDPROX_MU, 0.0)
    if isinstance(mu, bool) or not isinstance(mu, int | float) or not mu >= 0:
        raise ValueError(f"'{FEDPROX_MU}' must be a non-negative number, not {mu!r}")
    return float(mu)


def check_supported(
    supports: frozenset[str], training_args: Mapping[str, Any], aux_var: Mapping[str, Any]
) -> None:
    """Refuse a round that asks for FedProx or SCAFFOLD from a plan that does not apply it.

    Raises:
        ValueError: the plan would train without a correction the round asks for.
    """
    if fedprox_mu(training_args) > 0 and "fedprox" not in supports:
        raise ValueError("this training plan does not apply the FedProx proximal term")
    if SCAFFOLD_C in aux_var and "scaffold" not in supports:
        raise ValueError("this training plan does not apply SCAFFOLD's correction")


def _arrays(name: str, values: Any, like: Mapping[str, npt.NDArray[np.float64]]) -> Arrays:
    if not isinstance(values, Mapping) or set(values) != set(like):
        raise ValueError(f"'{name}' must hold one array per parameter: {sorted(like)}")
    return {key: np.asarray(values[key], dtype=np.float64).reshape(like[key].shape) for key in like}


class LocalCorrection:
    """FedProx's and SCAFFOLD's terms for one round of local gradient steps.

    Args:
        start: the parameters the round starts from (copied): FedProx's ``w_global`` and
            SCAFFOLD's ``x``.
        training_args: the round's, for ``fedprox_mu``.
        aux_var: the round's auxiliary variables, for ``scaffold_c`` and ``scaffold_ci``.
    """

    def __init__(
        self,
        start: Mapping[str, npt.NDArray[Any]],
        training_args: Mapping[str, Any],
        aux_var: Mapping[str, Any],
    ) -> None:
        self.start: Arrays = {k: np.array(v, dtype=np.float64) for k, v in start.items()}
        self.mu = fedprox_mu(training_args)
        self.scaffold = SCAFFOLD_C in aux_var
        self.shift: Arrays = {}
        self.c: Arrays = {}
        if self.scaffold:
            self.c = _arrays(SCAFFOLD_C, aux_var[SCAFFOLD_C], self.start)
            zeros = {k: np.zeros_like(v) for k, v in self.start.items()}
            c_i = _arrays(SCAFFOLD_CI, aux_var.get(SCAFFOLD_CI) or zeros, self.start)
            self.shift = {k: self.c[k] - c_i[k] for k in self.start}
        self.steps = 0

    def gradient(
        self, name: str, value: npt.NDArray[np.float64], grad: npt.NDArray[np.float64]
    ) -> npt.NDArray[np.float64]:
        """``grad`` of parameter ``name`` at ``value``, plus ``μ·(value - start)`` and
        ``c - c_i``; ``grad`` itself when the round asks for neither."""
        if self.mu:
            grad = grad + self.mu * (value - self.start[name])
        if self.scaffold:
            grad = grad + self.shift[name]
        return grad

    def count_step(self) -> None:
        """Count one local step (SCAFFOLD's ``K``)."""
        self.steps += 1

    def aux_var(self, end: Mapping[str, npt.NDArray[Any]], learning_rate: float) -> dict[str, Any]:
        """The auxiliary variables to return after training: ``{"scaffold_delta_c": Δc_i}``
        under SCAFFOLD, none otherwise."""
        if not self.scaffold or not self.steps:
            return {}
        scale = 1.0 / (self.steps * learning_rate)
        delta = {
            k: (self.start[k] - np.asarray(end[k], dtype=np.float64)) * scale - self.c[k]
            for k in self.start
        }
        return {SCAFFOLD_DELTA_C: delta}
