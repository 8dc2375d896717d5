"""Strategies: how an experiment picks each round's nodes and turns their replies into the next
global parameters.

A :class:`Strategy` is asked three things each round, by
:class:`~researcher.jobs.experiment.Experiment`:

1. :meth:`~Strategy.select`: the round's nodes among the available ones (default: all of
   them, or the choice of the experiment's :class:`~researcher.jobs.sampling.Sampling`);
2. :meth:`~Strategy.configure`: each node's ``training_args`` overrides (default: none);
3. :meth:`~Strategy.aggregate`: the next global parameters from each node's parameters, sample
   size and metrics. The base class averages the parameters weighted by sample size and hands
   that mean to :meth:`~Strategy.step`; under secure aggregation only the mean is known, and
   the experiment calls :meth:`~Strategy.step` with it directly.

:class:`FedAvg` takes the mean as the next parameters. :class:`FedAdagrad`, :class:`FedAdam`
and :class:`FedYogi` are the server-side adaptive optimizers of Reddi et al. 2021, "Adaptive
Federated Optimization" (Algorithm 2): with the pseudo-gradient ``Δ = mean - x``,

- ``m = β1·m + (1 - β1)·Δ``
- ``v = v + Δ²`` (Adagrad), ``β2·v + (1 - β2)·Δ²`` (Adam),
  ``v - (1 - β2)·Δ²·sign(v - Δ²)`` (Yogi)
- ``x = x + η·m / (√v + τ)``

from ``m = 0`` and ``v = τ²`` (the paper's ``v₋₁ ≥ τ²``). Since Δ needs only the mean, they
work under secure aggregation too. :meth:`~Strategy.state` is the server optimizer's state, to
save with a round and :meth:`~Strategy.load_state` to resume from.

:class:`FedProx` (Li et al. 2020) asks every node for the proximal term ``μ/2·‖w - x‖²``
(``training_args["fedprox_mu"]``) and averages as FedAvg. :class:`Scaffold` (Karimireddy et
al. 2020, option II) sends the server control variate ``c`` as an optimizer auxiliary variable
(:meth:`Strategy.optim_aux_var`), gets each node's ``Δc_i`` back and updates
``x = x + η_g·mean(y_i - x)`` and ``c = c + (|S|/N)·mean(Δc_i)`` (see
:mod:`training_plans.corrections` for the node's side).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import numpy.typing as npt

from researcher.jobs.aggregation import fedavg
from training_plans.corrections import FEDPROX_MU, SCAFFOLD_C, SCAFFOLD_DELTA_C

if TYPE_CHECKING:
    from researcher.jobs.sampling import Sampling

Params = dict[str, npt.NDArray[np.float64]]


@dataclass(frozen=True)
class NodeUpdate:
    """What one node sent back from a round: its parameters, sample size, metrics and
    optimizer auxiliary variables (decrypted)."""

    params: Mapping[str, npt.NDArray[Any]]
    sample_size: int
    metrics: Mapping[str, float] = field(default_factory=dict)
    aux_var: Mapping[str, Any] = field(default_factory=dict)


class Strategy:
    """The base of every strategy; on its own, federated averaging."""

    name: ClassVar[str] = "fedavg"
    secure_aggregation: ClassVar[bool] = True
    """Whether the strategy works from the weighted mean alone (:meth:`step`)."""

    def prepare(self, nodes: Sequence[str]) -> None:
        """Learn the experiment's nodes, once before its rounds (all of them, sampled or not)."""

    def select(self, round: int, available: Sequence[str], sampling: Sampling | None) -> list[str]:
        """The nodes of round ``round`` among ``available`` (the experiment's nodes that are
        online and not excluded, or all of them without a sampling)."""
        if sampling is None:
            return list(available)
        return sampling.choose(round, available)

    def configure(self, round: int, nodes: Sequence[str]) -> dict[str, dict[str, Any]]:
        """Each node's ``training_args`` overrides for round ``round`` (merged over the
        experiment's); none by default."""
        return {}

    def optim_aux_var(
        self, round: int, nodes: Sequence[str], params: Mapping[str, npt.NDArray[Any]]
    ) -> dict[str, dict[str, Any]]:
        """Each node's optimizer auxiliary variables for round ``round``; none by default."""
        return {}

    def aggregate(
        self, round: int, params: Mapping[str, npt.NDArray[Any]], updates: Mapping[str, NodeUpdate]
    ) -> Params:
        """The next global parameters from the round's updates: the weighted mean by sample
        size, through :meth:`step`."""
        average = fedavg(
            [update.params for update in updates.values()],
            [update.sample_size for update in updates.values()],
        )
        return self.step(round, params, average)

    def step(self, round: int, params: Mapping[str, npt.NDArray[Any]], average: Params) -> Params:
        """The next global parameters from the current ones and the weighted mean of the
        nodes' parameters (FedAvg: the mean itself)."""
        return average

    def state(self) -> dict[str, npt.NDArray[np.float64]]:
        """The server optimizer's state as named arrays (FedAvg has none)."""
        return {}

    def load_state(self, state: Mapping[str, npt.NDArray[Any]]) -> None:
        """Continue from a :meth:`state` saved earlier."""

    def describe(self) -> dict[str, Any]:
        """The strategy's name and settings, for records."""
        return {"name": self.name}


class FedAvg(Strategy):
    """Federated averaging (McMahan et al. 2017): the next parameters are the nodes' parameters
    averaged, weighted by sample size."""


class ServerOptimizer(Strategy):
    """A server-side adaptive optimizer of Reddi et al. 2021 (Algorithm 2) on the
    pseudo-gradient ``Δ = mean - x``; subclasses give the second-moment update.

    Args:
        server_learning_rate: η.
        beta_1: momentum β1.
        beta_2: second-moment decay β2 (unused by Adagrad).
        tau: adaptivity τ: larger is closer to plain server SGD with momentum.
    """

    def __init__(
        self,
        *,
        server_learning_rate: float = 0.1,
        beta_1: float = 0.9,
        beta_2: float = 0.99,
        tau: float = 1e-3,
    ) -> None:
        if server_learning_rate <= 0:
            raise ValueError("server_learning_rate must be positive")
        if not 0 <= beta_1 < 1 or not 0 <= beta_2 < 1:
            raise ValueError("beta_1 and beta_2 must be in [0, 1)")
        if tau <= 0:
            raise ValueError("tau must be positive")
        self.server_learning_rate = server_learning_rate
        self.beta_1 = beta_1
        self.beta_2 = beta_2
        self.tau = tau
        self.m: Params = {}
        self.v: Params = {}

    def second_moment(
        self, v: npt.NDArray[np.float64], delta: npt.NDArray[np.float64]
    ) -> npt.NDArray[np.float64]:
        """The new ``v`` from the old one and Δ."""
        raise NotImplementedError

    def step(self, round: int, params: Mapping[str, npt.NDArray[Any]], average: Params) -> Params:
        if set(params) != set(average):
            raise ValueError("the nodes' parameters do not match the global parameters")
        result: Params = {}
        for name in sorted(average):
            x = np.asarray(params[name], dtype=np.float64)
            delta = average[name] - x
            m = self.m.get(name, np.zeros_like(x))
            v = self.v.get(name, np.full_like(x, self.tau**2))
            m = self.beta_1 * m + (1 - self.beta_1) * delta
            v = self.second_moment(v, delta)
            self.m[name], self.v[name] = m, v
            result[name] = x + self.server_learning_rate * m / (np.sqrt(v) + self.tau)
        return result

    def state(self) -> dict[str, npt.NDArray[np.float64]]:
        return {
            **{f"m.{name}": value for name, value in self.m.items()},
            **{f"v.{name}": value for name, value in self.v.items()},
        }

    def load_state(self, state: Mapping[str, npt.NDArray[Any]]) -> None:
        self.m, self.v = {}, {}
        for key, value in state.items():
            moment, _, name = key.partition(".")
            if moment not in ("m", "v") or not name:
                raise ValueError(f"not a state of {self.name}: {key!r}")
            (self.m if moment == "m" else self.v)[name] = np.asarray(value, dtype=np.float64)

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name, "server_learning_rate": self.server_learning_rate,
            "beta_1": self.beta_1, "beta_2": self.beta_2, "tau": self.tau,
        }  # fmt: skip


class FedAdagrad(ServerOptimizer):
    """Adagrad on the server: ``v = v + Δ²``."""

    name: ClassVar[str] = "fedadagrad"

    def second_moment(
        self, v: npt.NDArray[np.float64], delta: npt.NDArray[np.float64]
    ) -> npt.NDArray[np.float64]:
        return v + delta * delta


class FedAdam(ServerOptimizer):
    """Adam on the server: ``v = β2·v + (1 - β2)·Δ²``."""

    name: ClassVar[str] = "fedadam"

    def second_moment(
        self, v: npt.NDArray[np.float64], delta: npt.NDArray[np.float64]
    ) -> npt.NDArray[np.float64]:
        return self.beta_2 * v + (1 - self.beta_2) * delta * delta


class FedYogi(ServerOptimizer):
    """Yogi on the server: ``v = v - (1 - β2)·Δ²·sign(v - Δ²)``."""

    name: ClassVar[str] = "fedyogi"

    def second_moment(
        self, v: npt.NDArray[np.float64], delta: npt.NDArray[np.float64]
    ) -> npt.NDArray[np.float64]:
        squared = delta * delta
        return v - (1 - self.beta_2) * squared * np.sign(v - squared)


class FedProx(Strategy):
    """FedProx (Li et al. 2020): every node adds ``μ/2·‖w - x‖²`` to its local objective
    (``training_args["fedprox_mu"]``); aggregation as FedAvg.

    Args:
        mu: μ, the weight of the proximal term (0 is FedAvg).
    """

    name: ClassVar[str] = "fedprox"

    def __init__(self, *, mu: float = 0.01) -> None:
        if not mu >= 0:
            raise ValueError("mu must be non-negative")
        self.mu = float(mu)

    def configure(self, round: int, nodes: Sequence[str]) -> dict[str, dict[str, Any]]:
        return {node: {FEDPROX_MU: self.mu} for node in nodes}

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "mu": self.mu}


class Scaffold(Strategy):
    """SCAFFOLD (Karimireddy et al. 2020, option II control variates).

    Each node gets the server control variate ``c`` (``optim_aux_var["scaffold_c"]``, zeros
    at first), corrects its local gradients by ``c - c_i`` with its own ``c_i`` (kept on the
    node) and returns ``Δc_i`` (``scaffold_delta_c``). With ``S`` the round's nodes and ``N``
    the experiment's: ``x = x + η_g·mean_S(y_i - x)`` and ``c = c + (|S|/N)·mean_S(Δc_i)``,
    unweighted means as in the paper. It needs each node's update, so not secure aggregation.

    Args:
        server_learning_rate: the global learning rate η_g (1 is the mean of the nodes).
        n_nodes: N; by default the experiment's number of nodes.
    """

    name: ClassVar[str] = "scaffold"
    secure_aggregation: ClassVar[bool] = False

    def __init__(self, *, server_learning_rate: float = 1.0, n_nodes: int | None = None) -> None:
        if not server_learning_rate > 0:
            raise ValueError("server_learning_rate must be positive")
        if n_nodes is not None and n_nodes < 1:
            raise ValueError("n_nodes must be at least 1")
        self.server_learning_rate = float(server_learning_rate)
        self.n_nodes = n_nodes
        self.c: Params = {}

    def prepare(self, nodes: Sequence[str]) -> None:
        if self.n_nodes is None:
            self.n_nodes = len(nodes)

    def optim_aux_var(
        self, round: int, nodes: Sequence[str], params: Mapping[str, npt.NDArray[Any]]
    ) -> dict[str, dict[str, Any]]:
        c = {
            k: self.c.get(k, np.zeros_like(np.asarray(v, dtype=np.float64)))
            for k, v in params.items()
        }
        return {node: {SCAFFOLD_C: c} for node in nodes}

    def aggregate(
        self, round: int, params: Mapping[str, npt.NDArray[Any]], updates: Mapping[str, NodeUpdate]
    ) -> Params:
        if not updates:
            raise ValueError("SCAFFOLD needs at least one node's update")
        n_nodes = self.n_nodes or len(updates)
        if len(updates) > n_nodes:
            raise ValueError(f"{len(updates)} updates from an experiment of {n_nodes} nodes")
        result: Params = {}
        for name in sorted(params):
            x = np.asarray(params[name], dtype=np.float64)
            ys, deltas = [], []
            for node, update in sorted(updates.items()):
                delta_c = update.aux_var.get(SCAFFOLD_DELTA_C)
                if not isinstance(delta_c, Mapping) or name not in delta_c:
                    raise ValueError(f"node {node} sent no SCAFFOLD '{SCAFFOLD_DELTA_C}'")
                ys.append(np.asarray(update.params[name], dtype=np.float64).reshape(x.shape))
                deltas.append(np.asarray(delta_c[name], dtype=np.float64).reshape(x.shape))
            dx = np.mean([y - x for y in ys], axis=0)
            c = self.c.get(name, np.zeros_like(x))
            self.c[name] = c + len(updates) / n_nodes * np.mean(deltas, axis=0)
            result[name] = x + self.server_learning_rate * dx
        return result

    def step(self, round: int, params: Mapping[str, npt.NDArray[Any]], average: Params) -> Params:
        raise ValueError(
            "SCAFFOLD needs each node's update and control variate: not under secure aggregation"
        )

    def state(self) -> dict[str, npt.NDArray[np.float64]]:
        return {f"c.{name}": value for name, value in self.c.items()}

    def load_state(self, state: Mapping[str, npt.NDArray[Any]]) -> None:
        self.c = {}
        for key, value in state.items():
            kind, _, name = key.partition(".")
            if kind != "c" or not name:
                raise ValueError(f"not a state of {self.name}: {key!r}")
            self.c[name] = np.asarray(value, dtype=np.float64)

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name, "server_learning_rate": self.server_learning_rate,
            "n_nodes": self.n_nodes,
        }  # fmt: skip


STRATEGIES: dict[str, type[Strategy]] = {
    cls.name: cls for cls in (FedAvg, FedAdagrad, FedAdam, FedYogi, FedProx, Scaffold)
}
"""The ready strategies by name."""


def make_strategy(name: str, **settings: Any) -> Strategy:
    """The ready strategy called ``name`` (fedavg, fedadagrad, fedadam, fedyogi, fedprox,
    scaffold) with its
    settings.

    Raises:
        ValueError: an unknown name, or settings the strategy does not take or accept.
    """
    cls = STRATEGIES.get(name.lower())
    if cls is None:
        raise ValueError(f"unknown strategy {name!r} (known: {', '.join(sorted(STRATEGIES))})")
    try:
        return cls(**settings)
    except TypeError as exc:
        raise ValueError(f"strategy {name!r}: {exc}") from exc
