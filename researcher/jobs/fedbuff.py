"""FedBuff's server (Nguyen et al. 2022, "Federated Learning with Buffered Asynchronous
Aggregation"): a buffer of updates, their staleness weights and the step every K of them.

The server publishes model versions ``0, 1, 2, ...``. A node trains on version ``b`` and sends
back its parameters ``y``; its update is ``Δ = y - x_b``, the change it made to the version it
trained on. When the update arrives while version ``v`` is the newest, its staleness is
``s = v - b``. An update staler than ``max_staleness`` is dropped (and counted); the others go
into the buffer. When the buffer holds ``K`` updates the server takes their staleness-weighted
average and steps::

    x_{v+1} = x_v + η · Σ_i w(s_i)·n_i·Δ_i / Σ_i n_i     (weighting by sample size)
    x_{v+1} = x_v + η · Σ_i w(s_i)·Δ_i / K               (without: the paper's Algorithm 1)

with ``w`` one of :data:`STALENESS_WEIGHTS` (``polynomial``: ``1 / (1 + s)^a``, ``a = 0.5``
by default, i.e. ``1/sqrt(1+s)``; ``constant``: 1; ``hinge``: 1 up to ``b`` then
``1 / (1 + a·(s - b))``). The discount is not normalised away, so stale updates move the model
less. :class:`FedBuffServer` is pure computation: no network, no clock; the same arrivals in the
same order always give the same versions (tests compare it with a plain numpy reference).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

Params = dict[str, npt.NDArray[np.float64]]
StalenessWeighting = Literal["polynomial", "constant", "hinge"]


def staleness_weight(
    kind: StalenessWeighting, *, exponent: float = 0.5, hinge_a: float = 10.0, hinge_b: int = 4
) -> Callable[[int], float]:
    """The weight of an update of staleness ``s``: ``polynomial`` ``(1 + s)^-exponent``,
    ``constant`` 1, ``hinge`` 1 while ``s <= hinge_b`` then ``1 / (1 + hinge_a·(s - hinge_b))``.

    Raises:
        ValueError: an unknown kind or a negative setting.
    """
    if exponent < 0 or hinge_a < 0 or hinge_b < 0:
        raise ValueError("staleness weighting settings must be non-negative")
    if kind == "polynomial":
        return lambda s: float((1.0 + s) ** -exponent)
    if kind == "constant":
        return lambda s: 1.0
    if kind == "hinge":
        return lambda s: 1.0 if s <= hinge_b else 1.0 / (1.0 + hinge_a * (s - hinge_b))
    raise ValueError(f"unknown staleness weighting {kind!r} (polynomial, constant, hinge)")


STALENESS_WEIGHTS: tuple[StalenessWeighting, ...] = ("polynomial", "constant", "hinge")
"""The staleness weightings :func:`staleness_weight` knows."""


@dataclass(frozen=True)
class FedBuffSettings:
    """How the server buffers and steps.

    Args:
        buffer_size: K, updates per new version.
        server_learning_rate: η.
        max_staleness: updates staler than this are dropped.
        staleness: the weighting ``w(s)`` (see :func:`staleness_weight`).
        staleness_exponent: ``a`` of the polynomial weighting.
        weight_by_sample_size: weight each update by its sample size too.
    """

    buffer_size: int = 2
    server_learning_rate: float = 1.0
    max_staleness: int = 10
    staleness: StalenessWeighting = "polynomial"
    staleness_exponent: float = 0.5
    weight_by_sample_size: bool = True

    def __post_init__(self) -> None:
        if self.buffer_size < 1:
            raise ValueError("buffer_size must be at least 1")
        if not self.server_learning_rate > 0 or not math.isfinite(self.server_learning_rate):
            raise ValueError("server_learning_rate must be positive")
        if self.max_staleness < 0:
            raise ValueError("max_staleness must be non-negative")
        staleness_weight(self.staleness, exponent=self.staleness_exponent)


@dataclass(frozen=True)
class BufferedUpdate:
    """An update in the buffer: who sent it, from which version, how stale, its weight."""

    key: str
    node_id: str
    base_version: int
    staleness: int
    weight: float
    sample_size: int
    delta: Params
    metrics: Mapping[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class Arrival:
    """What became of one update handed to :meth:`FedBuffServer.receive`.

    Attributes:
        staleness: versions published since the one it trained on.
        dropped: it was staler than ``max_staleness`` (or from an unknown version).
        published: the version this arrival completed, if it filled the buffer.
    """

    staleness: int
    dropped: bool
    published: int | None = None


@dataclass(frozen=True)
class PublishedVersion:
    """A model version the server published: its number and the updates it applied."""

    version: int
    params: Params
    applied: tuple[BufferedUpdate, ...]


class FedBuffServer:
    """The global model's versions, the buffer and the server step.

    Args:
        params: version ``initial_version``'s parameters.
        history: earlier versions' parameters, by number (a resumed job's, so updates that
            trained on them can still be applied); versions older than ``max_staleness``
            are forgotten.
    """

    def __init__(
        self,
        settings: FedBuffSettings,
        params: Mapping[str, npt.NDArray[Any]],
        *,
        initial_version: int = 0,
        history: Mapping[int, Mapping[str, npt.NDArray[Any]]] | None = None,
    ) -> None:
        self.settings = settings
        self.version = initial_version
        self._weight = staleness_weight(settings.staleness, exponent=settings.staleness_exponent)
        self.versions: dict[int, Params] = {
            number: _as_float(values)
            for number, values in (history or {}).items()
            if initial_version - settings.max_staleness <= number < initial_version
        }
        self.versions[initial_version] = _as_float(params)
        self.buffer: list[BufferedUpdate] = []

    @property
    def params(self) -> Params:
        """The newest version's parameters."""
        return self.versions[self.version]

    def receive(
        self,
        key: str,
        node_id: str,
        base_version: int,
        params: Mapping[str, npt.NDArray[Any]],
        sample_size: int,
        metrics: Mapping[str, float] | None = None,
    ) -> tuple[Arrival, PublishedVersion | None]:
        """Take one node's parameters trained from ``base_version``; publish a new version
        when the buffer is full.

        Raises:
            ValueError: parameters that do not match the model's names or shapes, or a
                version from the future.
        """
        staleness = self.version - base_version
        if staleness < 0:
            raise ValueError(f"an update from version {base_version}, newer than {self.version}")
        base = self.versions.get(base_version)
        if staleness > self.settings.max_staleness or base is None:
            return Arrival(staleness, dropped=True), None
        if set(params) != set(base):
            raise ValueError("the update's parameter names do not match the model's")
        delta: Params = {}
        for name, value in base.items():
            new = np.asarray(params[name], dtype=np.float64)
            if new.shape != value.shape:
                raise ValueError(f"parameter {name!r} has shape {new.shape}, not {value.shape}")
            delta[name] = new - value
        update = BufferedUpdate(
            key, node_id, base_version, staleness, self._weight(staleness), int(sample_size),
            delta, dict(metrics or {}),
        )  # fmt: skip
        self.buffer.append(update)
        if len(self.buffer) < self.settings.buffer_size:
            return Arrival(staleness, dropped=False), None
        published = self._step()
        return Arrival(staleness, dropped=False, published=published.version), published

    def _step(self) -> PublishedVersion:
        buffer, self.buffer = self.buffer, []
        settings = self.settings
        if settings.weight_by_sample_size:
            total = float(sum(update.sample_size for update in buffer))
            if total <= 0:
                raise ValueError("the buffered updates have no samples")
            factors = [update.weight * update.sample_size / total for update in buffer]
        else:
            factors = [update.weight / len(buffer) for update in buffer]
        current = self.params
        new: Params = {}
        for name, value in current.items():
            step = np.zeros_like(value)
            for update, factor in zip(buffer, factors, strict=True):
                step += factor * update.delta[name]
            new[name] = value + settings.server_learning_rate * step
        self.version += 1
        self.versions[self.version] = new
        for old in [n for n in self.versions if n < self.version - settings.max_staleness]:
            del self.versions[old]
        return PublishedVersion(self.version, new, tuple(buffer))


def buffer_metrics(updates: tuple[BufferedUpdate, ...] | list[BufferedUpdate]) -> dict[str, float]:
    """Each metric the updates report, averaged weighted by sample size."""
    sums: dict[str, float] = {}
    totals: dict[str, float] = {}
    for update in updates:
        for name, value in update.metrics.items():
            sums[name] = sums.get(name, 0.0) + update.sample_size * float(value)
            totals[name] = totals.get(name, 0.0) + update.sample_size
    return {name: sums[name] / totals[name] for name in sorted(sums) if totals[name] > 0}


def _as_float(params: Mapping[str, npt.NDArray[Any]]) -> Params:
    return {name: np.array(value, dtype=np.float64) for name, value in params.items()}
