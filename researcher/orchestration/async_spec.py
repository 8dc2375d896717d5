"""The settings of an asynchronous training task (FedBuff) in a job spec, e.g.::

    fedbuff: {buffer_size: 2, server_learning_rate: 1.0, max_staleness: 4,
              max_versions: 30, time_budget: 600, target_metric: accuracy, target_value: 0.95}

See :mod:`researcher.jobs.fedbuff` for the server's step and
:class:`researcher.jobs.buffered_records.StopWhen` for the stop conditions.
"""

from __future__ import annotations

from typing import Literal, Self

from pydantic import BaseModel, ConfigDict, Field, model_validator

from researcher.jobs.buffered_records import StopWhen
from researcher.jobs.fedbuff import FedBuffSettings


class FedBuffSpec(BaseModel):
    """The buffer, the server step, the staleness weighting and when training ends."""

    model_config = ConfigDict(extra="forbid")

    buffer_size: int = Field(default=2, ge=1, description="K: updates per new version.")
    server_learning_rate: float = Field(default=1.0, gt=0, allow_inf_nan=False, description="η")
    max_staleness: int = Field(default=10, ge=0, description="Staler updates are dropped.")
    staleness: Literal["polynomial", "constant", "hinge"] = Field(
        default="polynomial", description="w(s): (1+s)^-a, 1, or hinge."
    )
    staleness_exponent: float = Field(default=0.5, ge=0, description="a (0.5: 1/sqrt(1+s)).")
    weight_by_sample_size: bool = True
    max_versions: int | None = Field(default=10, ge=1, description="End after this version.")
    time_budget: float | None = Field(default=None, gt=0, description="Seconds of training.")
    target_metric: str | None = Field(default=None, description="End once a version's ...")
    target_value: float | None = Field(default=None, allow_inf_nan=False, description="...reaches")
    target_mode: Literal["max", "min"] = "max"
    node_wait: float = Field(default=60.0, gt=0, description="Seconds the pool may be empty.")
    disconnect_grace: float = Field(default=5.0, ge=0, description="Seconds a node may be gone.")

    @model_validator(mode="after")
    def _stops(self) -> Self:
        self.stop()
        return self

    def settings(self) -> FedBuffSettings:
        """The server's settings."""
        return FedBuffSettings(
            buffer_size=self.buffer_size, server_learning_rate=self.server_learning_rate,
            max_staleness=self.max_staleness, staleness=self.staleness,
            staleness_exponent=self.staleness_exponent,
            weight_by_sample_size=self.weight_by_sample_size,
        )  # fmt: skip

    def stop(self) -> StopWhen:
        """When training ends.

        Raises:
            ValueError: neither ``max_versions`` nor ``time_budget``, or half a target.
        """
        return StopWhen(
            max_versions=self.max_versions, time_budget=self.time_budget,
            target_metric=self.target_metric, target_value=self.target_value,
            target_mode=self.target_mode, node_wait=self.node_wait,
        )  # fmt: skip
