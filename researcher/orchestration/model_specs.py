"""What a job spec says about trained models: a training task's evaluation, and references to
the models of training tasks (to start training from, or to predict with).

::

    evaluation: {every: 2, metric: accuracy}                     # on each node's validation split
    evaluation: {test_datasets: {site-1: dataset_...}, metric: loss}
    initial_model: {job: job_..., task: train, model: best}      # warm start
    model: {task: train, model: final}                           # this job's own training task
"""

from __future__ import annotations

from typing import Literal, Self

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from broker_net.topology import check_id

ModelName = Literal["final", "best"] | int
"""Which model of a training task: ``final`` (after its last round), ``best`` (its best
evaluated round) or a round number (0 is the initial model)."""


class EvaluationSpec(BaseModel):
    """Evaluation-only rounds of a training task's global model
    (:class:`researcher.jobs.evaluation.Evaluation`).

    ``every``: after every k-th round; ``at_end``: after the last round (default). On each
    node's validation split of its training dataset, or on ``test_datasets`` (node -> the id of
    a dataset that node registered, evaluated whole; only those nodes are evaluated). The
    aggregated ``metric`` (``goal`` ``min`` or ``max``; default ``min`` for losses and errors)
    picks the task's ``best`` model.
    """

    model_config = ConfigDict(extra="forbid")

    every: int | None = Field(default=None, ge=1, description="Evaluate every k rounds.")
    at_end: bool = Field(default=True, description="Evaluate after the last round.")
    test_datasets: dict[str, str] = Field(
        default_factory=dict, description="Node id -> test dataset id; default: validation splits."
    )
    metric: str = Field(default="loss", min_length=1, description="Picks the best round.")
    goal: Literal["min", "max"] | None = Field(
        default=None, description="Best is lowest or highest; default from the metric's name."
    )

    @field_validator("test_datasets")
    @classmethod
    def _valid_nodes(cls, value: dict[str, str]) -> dict[str, str]:
        for node in value:
            check_id("node id", node)
        return value

    @model_validator(mode="after")
    def _some_round(self) -> Self:
        if self.every is None and not self.at_end:
            raise ValueError("an evaluation needs 'every' or 'at_end'")
        return self


class ModelRef(BaseModel):
    """A trained model in the job store: ``model`` (``final``, ``best`` or a round number) of
    training task ``task`` of job ``job``.

    Without ``job`` it is a training task of the same job, which then runs first (``task`` is
    required). Without ``task`` it is the job's only training task.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    job: str | None = Field(default=None, description="A job id; default: this job.")
    task: str | None = Field(default=None, description="A training task; default: the only one.")
    model: ModelName = "final"

    @field_validator("model")
    @classmethod
    def _valid_round(cls, value: ModelName) -> ModelName:
        if isinstance(value, int) and value < 0:
            raise ValueError("a model's round is 0 or more")
        return value

    @model_validator(mode="after")
    def _task_of_this_job(self) -> Self:
        if self.job is None and self.task is None:
            raise ValueError("a model of this job names its training 'task'")
        return self

    def __str__(self) -> str:
        where = f"job {self.job}" if self.job else "this job"
        task = f"task {self.task}" if self.task else "its training task"
        name = self.model if isinstance(self.model, str) else f"round-{self.model}"
        return f"the {name} model of {task} of {where}"

    @property
    def upstream(self) -> list[str]:
        """The task of this job that must run first, if the model is one of this job's."""
        return [self.task] if self.job is None and self.task is not None else []
