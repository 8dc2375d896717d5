"""The tasks of a job spec: what each kind of task does, takes and produces.

Every task has a name, where it runs (node ids, or :data:`ALL_NODES`), what it waits for
(``depends_on``) and which outputs of earlier tasks fill its parameters (``inputs``). The
kinds are told apart by their ``kind`` field (:data:`TaskSpec`); the job spec that holds them
is :class:`researcher.orchestration.spec.JobSpec`.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, ClassVar, Literal, Self, TypeAlias

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from broker_net.codes import PreprocStep, PreprocType
from broker_net.topology import check_id
from researcher.jobs.buffered_records import SECAGG_REFUSED
from researcher.orchestration.async_spec import FedBuffSpec
from researcher.orchestration.model_specs import EvaluationSpec, ModelRef
from researcher.orchestration.round_specs import (
    SamplingSpec,
    SecaggSpec,
    StrategySpec,
    secagg_settings,
)

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")

ALL_NODES: Literal["all"] = "all"
"""The placement of a task sent to every node of the job (``job.to_nodes(task)``)."""


class SpecError(ValueError):
    """Raised when a job spec cannot be read or breaks a rule of the format; ``document`` is
    what was read when it is not a valid spec (to name the places of its errors)."""

    def __init__(self, message: str, *, document: Any = None) -> None:
        super().__init__(message)
        self.document = document


def check_name(kind: str, value: str) -> str:
    """``value``, when it is a valid name of a ``kind`` (task, job).

    Raises:
        ValueError: it is not.
    """
    if not _NAME.fullmatch(value):
        raise ValueError(f"{kind} {value!r} must be 1-100 letters, digits, '_', '-' or '.'")
    return value


class OutputRef(BaseModel):
    """One output of another task, e.g. ``{task: stats, key: mean}``.

    ``key`` may go deeper with dots: ``statistics.columns.age.mean``.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    task: str
    key: str = Field(min_length=1)


class _Task(BaseModel):
    """What every task has: a name, where it runs, what it waits for and takes."""

    model_config = ConfigDict(extra="forbid")

    kind: str
    name: str
    nodes: list[str] | Literal["all"] = Field(
        default_factory=list, description="Node ids, or 'all' for every node of the job."
    )
    depends_on: list[str] = Field(default_factory=list)
    inputs: dict[str, OutputRef] = Field(
        default_factory=dict,
        description="Parameter path (e.g. 'preproc_args.mean') to the output that fills it.",
    )
    timeout: float | None = Field(
        default=None, gt=0, description="Seconds the task may run; default: the job's."
    )
    request_timeout: float = Field(
        default=120.0, gt=0, description="Seconds each node may take to answer each request."
    )

    input_roots: ClassVar[frozenset[str]] = frozenset()
    """Parameters an input may fill (the first part of its path)."""
    output_keys: ClassVar[frozenset[str]] = frozenset()
    """Outputs the task produces, which later tasks may take as inputs."""

    @field_validator("name")
    @classmethod
    def _valid_name(cls, value: str) -> str:
        return check_name("task name", value)

    @field_validator("nodes")
    @classmethod
    def _valid_nodes(cls, value: list[str] | str) -> list[str] | str:
        if isinstance(value, list):
            for node in value:
                check_id("node id", node)
            if len(set(value)) != len(value):
                raise ValueError("a node is named twice")
        return value

    @model_validator(mode="after")
    def _valid_inputs(self) -> Self:
        for target in self.inputs:
            root = target.split(".")[0]
            if root not in self.input_roots:
                allowed = ", ".join(sorted(self.input_roots)) or "none"
                raise ValueError(
                    f"task {self.name!r}: input {target!r} fills no parameter of a "
                    f"{self.kind} task (allowed: {allowed})"
                )
        return self

    @property
    def upstream(self) -> list[str]:
        """Tasks that must succeed first: ``depends_on`` and the producers of the inputs."""
        names = [*self.depends_on, *(ref.task for ref in self.inputs.values())]
        return list(dict.fromkeys(names))

    def output(self, key: str) -> OutputRef:
        """A reference to this task's output ``key``, to use as another task's input.

        Raises:
            SpecError: this kind of task has no such output.
        """
        if key.split(".")[0] not in self.output_keys:
            raise SpecError(
                f"a {self.kind} task has no output {key!r} "
                f"(it has {', '.join(sorted(self.output_keys))})"
            )
        return OutputRef(task=self.name, key=key)


SECURE_STATISTICS = frozenset({"count", "missing", "sum", "mean", "variance", "std"})
"""The statistics an analytics task computes under secure aggregation (sums of the nodes')."""


class AnalyticsTask(_Task):
    """Federated statistics over each node's dataset, pooled exactly by the researcher.

    Outputs: ``statistics`` (the pooled result of
    :func:`researcher.jobs.statistics.combine_statistics`), ``columns`` and ``n_features`` (the
    columns kept after ``exclude_columns``), ``n_rows``, and for each requested statistic a
    map column -> value (``mean``, ``std``, ``min``...).
    """

    kind: Literal["analytics"] = "analytics"
    stats: list[str] = Field(default_factory=lambda: ["count", "mean", "std"], min_length=1)
    columns: list[str] | None = Field(default=None, description="Columns; default all numeric.")
    exclude_columns: list[str] = Field(
        default_factory=list, description="Left out of the per-statistic maps (e.g. the target)."
    )
    secagg: bool | SecaggSpec = Field(
        default=False,
        description="Pool only masked sums (count, missing, sum, mean, variance, std).",
    )

    output_keys: ClassVar[frozenset[str]] = frozenset(
        {"statistics", "columns", "n_features", "n_rows", "count", "missing", "sum", "mean",
         "variance", "std", "min", "max"}
    )  # fmt: skip

    @model_validator(mode="after")
    def _secure_statistics(self) -> Self:
        settings = secagg_settings(self.secagg)
        refused = sorted(set(self.stats) - SECURE_STATISTICS)
        if settings is not None and refused:
            raise ValueError(
                f"task {self.name!r}: {', '.join(refused)} cannot be computed under secure "
                f"aggregation (available: {', '.join(sorted(SECURE_STATISTICS))})"
            )
        if settings is not None and settings.max_weight is not None:
            raise ValueError(f"task {self.name!r}: secagg max_weight is for training tasks")
        return self


class PreprocessingTask(_Task):
    """A preprocessing method (imputation, standardisation) fitted and applied on each node.

    Outputs: ``state_ids`` (node -> the state holding the transformed data, for training or a
    next preprocessing task) and ``outputs`` (node -> what each node reported).
    """

    kind: Literal["preprocessing"] = "preprocessing"
    preproc_type: PreprocType
    preproc_args: dict[str, Any] = Field(default_factory=dict)
    steps: list[PreprocStep] = Field(
        default_factory=lambda: [PreprocStep.FIT, PreprocStep.APPLY], min_length=1
    )
    state_ids: dict[str, str | None] = Field(
        default_factory=dict, description="Each node's state to continue from."
    )

    input_roots: ClassVar[frozenset[str]] = frozenset({"preproc_args", "state_ids"})
    output_keys: ClassVar[frozenset[str]] = frozenset({"state_ids", "outputs"})


class PlanApprovalTask(_Task):
    """Submit a training plan to each node's operator for review.

    Outputs: ``plan_ids`` and ``statuses`` (node -> plan id, node -> status after submission).
    """

    kind: Literal["plan_approval"] = "plan_approval"
    plan: str
    description: str = ""

    output_keys: ClassVar[frozenset[str]] = frozenset({"plan_ids", "statuses"})


class PlanCheckTask(_Task):
    """Check that each node approved a training plan, waiting up to ``wait`` seconds for the
    operators; the task fails, naming the nodes, when one has not.

    Outputs: ``statuses`` (node -> status) and ``approved`` (true when every node may run it).
    """

    kind: Literal["plan_check"] = "plan_check"
    plan: str
    wait: float = Field(default=0.0, ge=0, description="Seconds to wait for the approvals.")
    poll_interval: float = Field(default=1.0, gt=0)
    require_approved: bool = True

    output_keys: ClassVar[frozenset[str]] = frozenset({"statuses", "approved"})


class TrainingTask(_Task):
    """Rounds of a training plan over the nodes' datasets, under a strategy (default FedAvg)
    and optionally a client sampling, an evaluation and a warm start (``initial_model``).

    Outputs: ``rounds`` (rounds run), ``metrics`` (the last round's metrics, weighted by
    sample size), ``model`` (the final model file, relative to the job's folder),
    ``parameters`` (the model's parameter names and shapes), with an evaluation
    ``evaluations`` (each evaluated round's weighted and per-node metrics) and ``best`` (the
    best round by the evaluation's metric, its value and model file), and with a warm start
    ``initial_model`` (the job, task, round and file it started from).
    """

    kind: Literal["training"] = "training"
    plan: str
    rounds: int = Field(default=1, ge=1)
    training_args: dict[str, Any] = Field(default_factory=dict)
    model_args: dict[str, Any] = Field(default_factory=dict)
    state_ids: dict[str, str | None] = Field(default_factory=dict)
    min_replies: int | None = Field(
        default=None,
        ge=1,
        description="Nodes each round needs; default: all the task's nodes, or the sampling's "
        "min_nodes.",
    )
    strategy: StrategySpec = Field(default_factory=StrategySpec)
    sampling: SamplingSpec | None = None
    secagg: bool | SecaggSpec = Field(
        default=False, description="Aggregate masked updates; the researcher sees the mean only."
    )
    evaluation: EvaluationSpec | None = None
    initial_model: ModelRef | None = Field(
        default=None, description="Start from this trained model instead of a new one."
    )

    @property
    def upstream(self) -> list[str]:
        """As any task's, and this job's training task whose model it starts from."""
        refs = self.initial_model.upstream if self.initial_model else []
        return list(dict.fromkeys([*super().upstream, *refs]))

    @model_validator(mode="after")
    def _secagg_settings(self) -> Self:
        settings = secagg_settings(self.secagg)
        if settings is not None and settings.max_rows is not None:
            raise ValueError(f"task {self.name!r}: secagg max_rows is for analytics tasks")
        return self

    input_roots: ClassVar[frozenset[str]] = frozenset({"training_args", "model_args", "state_ids"})
    output_keys: ClassVar[frozenset[str]] = frozenset(
        {"rounds", "metrics", "model", "parameters", "evaluations", "best", "initial_model"}
    )


class PredictionTask(_Task):
    """A trained ``model`` run on each node's dataset (the job's, or ``datasets``: node ->
    dataset id). The predictions stay on the node as a new registered dataset with its
    provenance; only a summary comes back. The plan and ``model_args`` default to those of the
    model's training task.

    Outputs: ``datasets`` (node -> the new prediction dataset's id), ``summaries`` (node ->
    rows, and class counts or mean and std), ``n_rows`` (over the nodes) and ``model`` (the
    job, task and round of the model used).
    """

    kind: Literal["prediction"] = "prediction"
    model: ModelRef
    plan: str | None = Field(default=None, description="Default: the training task's plan.")
    model_args: dict[str, Any] = Field(default_factory=dict)
    datasets: dict[str, str] = Field(
        default_factory=dict, description="Node id -> dataset id; default: the job's datasets."
    )
    state_ids: dict[str, str | None] = Field(default_factory=dict)
    encrypt_params: bool = Field(default=False, description="Encrypt the model for each node.")

    input_roots: ClassVar[frozenset[str]] = frozenset({"model_args", "state_ids", "datasets"})
    output_keys: ClassVar[frozenset[str]] = frozenset({"datasets", "summaries", "n_rows", "model"})

    @property
    def upstream(self) -> list[str]:
        """As any task's, and this job's training task whose model it runs."""
        return list(dict.fromkeys([*super().upstream, *self.model.upstream]))


class AsyncTrainingTask(_Task):
    """Asynchronous training (FedBuff, :mod:`researcher.jobs.buffered`): one request in flight
    per online node, a new model version every ``fedbuff.buffer_size`` updates; secure
    aggregation is refused.

    Outputs: ``versions`` (the last version), ``metrics`` (its metrics), ``model``,
    ``parameters`` (as a training task's), ``updates`` (how many updates were applied, stale,
    lost, cancelled or unapplied) and ``stopped_because``.
    """

    kind: Literal["async_training"] = "async_training"
    plan: str
    training_args: dict[str, Any] = Field(default_factory=dict)
    model_args: dict[str, Any] = Field(default_factory=dict)
    state_ids: dict[str, str | None] = Field(default_factory=dict)
    fedbuff: FedBuffSpec = Field(default_factory=FedBuffSpec)
    secagg: bool | SecaggSpec = Field(default=False, description="Refused: " + SECAGG_REFUSED)

    @model_validator(mode="after")
    def _no_secagg(self) -> Self:
        if secagg_settings(self.secagg) is not None:
            raise ValueError(f"task {self.name!r}: {SECAGG_REFUSED}")
        return self

    input_roots: ClassVar[frozenset[str]] = frozenset({"training_args", "model_args", "state_ids"})
    output_keys: ClassVar[frozenset[str]] = frozenset(
        {"versions", "metrics", "model", "parameters", "updates", "stopped_because"}
    )


TaskSpec: TypeAlias = Annotated[
    AnalyticsTask
    | PreprocessingTask
    | PlanApprovalTask
    | PlanCheckTask
    | TrainingTask
    | AsyncTrainingTask
    | PredictionTask,
    Field(discriminator="kind"),
]  # fmt: skip
"""Any task, told apart by its ``kind``."""
