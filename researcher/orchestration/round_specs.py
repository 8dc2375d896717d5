"""How a task's requests are shaped: secure aggregation settings, a training task's strategy
and its client sampling, as the YAML spec writes them."""

from __future__ import annotations

from typing import Any, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, model_validator

from broker_net.crypto.secagg import MAX_PRECISION_BITS
from broker_net.topology import check_id


class SecaggSpec(BaseModel):
    """Secure aggregation of a task, ``secagg: true`` or its settings, e.g.
    ``{value_range: 1000, precision_bits: 60}``; unset settings take the defaults.

    ``value_range``: every value (an analytics column's, or a trained parameter) lies within
    ±value_range, else the node refuses (analytics default 2**40, training 1000).
    ``precision_bits``: values are kept to multiples of 2**-precision_bits (analytics default:
    90 bits below the range's leading bit, training 20). ``max_rows`` (analytics, default
    2**32) bounds a node's rows and ``max_weight`` (training, default 2**20) its sample size.
    The ring the masked sums live in grows to hold them (up to 512 bits).
    """

    model_config = ConfigDict(extra="forbid")

    value_range: float | None = Field(default=None, gt=0, allow_inf_nan=False)
    precision_bits: int | None = Field(default=None, ge=0, le=MAX_PRECISION_BITS)
    max_rows: int | None = Field(default=None, ge=1, description="Analytics only.")
    max_weight: int | None = Field(default=None, ge=1, description="Training only.")

    def analytics_options(self) -> dict[str, Any]:
        """What :class:`~researcher.jobs.analytics.FARequestJob` takes as ``secagg_options``."""
        return self.model_dump(exclude={"max_weight"}, exclude_none=True)

    def training_options(self) -> dict[str, Any]:
        """What :class:`~researcher.jobs.experiment.Experiment` takes as ``secagg_options``."""
        options = self.model_dump(exclude={"max_rows", "value_range"}, exclude_none=True)
        if self.value_range is not None:
            options["clipping_range"] = self.value_range
        return options


def secagg_settings(value: bool | SecaggSpec) -> SecaggSpec | None:
    """The settings of a task's ``secagg`` field, ``None`` when it is off."""
    if isinstance(value, SecaggSpec):
        return value
    return SecaggSpec() if value else None


class StrategySpec(BaseModel):
    """The strategy of a training task (:mod:`researcher.jobs.strategies`), e.g.
    ``{name: fedadam, server_learning_rate: 0.1}`` or ``{name: fedprox, mu: 0.01}``; unset
    settings take the strategy's defaults (η 0.1, β1 0.9, β2 0.99, τ 1e-3; FedProx μ 0.01;
    SCAFFOLD η 1 over all the task's nodes). ``encrypt_aux_var`` encrypts the auxiliary
    variables (SCAFFOLD's control variates) for one party each way."""

    model_config = ConfigDict(extra="forbid")

    name: Literal["fedavg", "fedadagrad", "fedadam", "fedyogi", "fedprox", "scaffold"] = "fedavg"
    server_learning_rate: float | None = Field(default=None, gt=0, description="η")
    beta_1: float | None = Field(default=None, ge=0, lt=1, description="β1, momentum")
    beta_2: float | None = Field(default=None, ge=0, lt=1, description="β2 (Adam, Yogi)")
    tau: float | None = Field(default=None, gt=0, description="τ, adaptivity")
    mu: float | None = Field(default=None, ge=0, description="FedProx's proximal weight μ")
    n_nodes: int | None = Field(default=None, ge=1, description="SCAFFOLD's N")
    encrypt_aux_var: bool = Field(default=False, description="Encrypt auxiliary variables.")

    @model_validator(mode="after")
    def _settings_fit(self) -> Self:
        allowed = _STRATEGY_SETTINGS[self.name]
        extra = sorted(set(self.settings()) - allowed)
        if extra:
            raise ValueError(f"{self.name} takes no {', '.join(extra)}")
        return self

    def settings(self) -> dict[str, float]:
        """The strategy's settings given, by name."""
        return self.model_dump(exclude={"name", "encrypt_aux_var"}, exclude_none=True)


_ADAPTIVE = {"server_learning_rate", "beta_1", "beta_2", "tau"}
_STRATEGY_SETTINGS: dict[str, set[str]] = {
    "fedavg": set(),
    "fedadagrad": _ADAPTIVE - {"beta_2"},
    "fedadam": _ADAPTIVE,
    "fedyogi": _ADAPTIVE,
    "fedprox": {"mu"},
    "scaffold": {"server_learning_rate", "n_nodes"},
}


class SamplingSpec(BaseModel):
    """Client sampling of a training task (:class:`researcher.jobs.sampling.Sampling`), e.g.
    ``{fraction: 0.5, seed: 1, min_nodes: 2, mandatory: [site-1]}``."""

    model_config = ConfigDict(extra="forbid")

    fraction: float | None = Field(default=None, gt=0, le=1, description="Share of nodes.")
    count: int | None = Field(default=None, ge=1, description="Or a number of nodes.")
    seed: int | None = Field(default=None, description="Same seed, same choices.")
    min_nodes: int = Field(default=1, ge=1, description="Available nodes a round needs.")
    mandatory: list[str] = Field(default_factory=list, description="Taken when available.")
    exclude: list[str] = Field(default_factory=list, description="Never taken.")

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        if self.fraction is not None and self.count is not None:
            raise ValueError("give a fraction or a count of nodes, not both")
        for node in (*self.mandatory, *self.exclude):
            check_id("node id", node)
        both = sorted(set(self.mandatory) & set(self.exclude))
        if both:
            raise ValueError(f"nodes both mandatory and excluded: {both}")
        return self
