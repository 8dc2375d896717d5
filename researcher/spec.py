"""The job spec: a validated description of a federated job, as YAML or as pydantic models.

A spec names its tasks, where each runs, what each depends on and which outputs of earlier
tasks it takes as inputs; the job settings (priority, retries, timeouts, parallelism, nodes,
inheritance); how each node's dataset is found; and the training plans, as source text and
class name::

    spec = JobSpec.load(Path("job.yaml"))
    print(spec.order())          # task names, upstream first
    Path("copy.yaml").write_text(spec.to_yaml())

Loading checks everything that can be checked before a node is asked: unique task names,
known dependencies, no cycle, inputs that name an output the producing task has, plans that
parse and define their class. See docs/jobs.md for the format.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal, Self, TypeAlias

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from broker_net.codes import PreprocStep, PreprocType
from broker_net.topology import check_id

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")

ALL_NODES: Literal["all"] = "all"
"""The placement of a task sent to every node of the job (``job.to_nodes(task)``)."""


class SpecError(ValueError):
    """Raised when a job spec cannot be read or breaks a rule of the format."""


def _check_name(kind: str, value: str) -> str:
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
        return _check_name("task name", value)

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


class AnalyticsTask(_Task):
    """Federated statistics over each node's dataset, pooled exactly by the researcher.

    Outputs: ``statistics`` (the pooled result of
    :func:`researcher.analytics.combine_statistics`), ``columns`` and ``n_features`` (the
    columns kept after ``exclude_columns``), ``n_rows``, and for each requested statistic a
    map column -> value (``mean``, ``std``, ``min``...).
    """

    kind: Literal["analytics"] = "analytics"
    stats: list[str] = Field(default_factory=lambda: ["count", "mean", "std"], min_length=1)
    columns: list[str] | None = Field(default=None, description="Columns; default all numeric.")
    exclude_columns: list[str] = Field(
        default_factory=list, description="Left out of the per-statistic maps (e.g. the target)."
    )

    output_keys: ClassVar[frozenset[str]] = frozenset(
        {"statistics", "columns", "n_features", "n_rows", "count", "missing", "sum", "mean",
         "variance", "std", "min", "max"}
    )  # fmt: skip


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
    """FedAvg rounds of a training plan over the nodes' datasets.

    Outputs: ``rounds`` (rounds run), ``metrics`` (the last round's metrics, weighted by
    sample size), ``model`` (the final model file, relative to the job's folder) and
    ``parameters`` (the model's parameter names and shapes).
    """

    kind: Literal["training"] = "training"
    plan: str
    rounds: int = Field(default=1, ge=1)
    training_args: dict[str, Any] = Field(default_factory=dict)
    model_args: dict[str, Any] = Field(default_factory=dict)
    state_ids: dict[str, str | None] = Field(default_factory=dict)
    min_replies: int | None = Field(
        default=None, ge=1, description="Nodes each round needs; default: all the task's nodes."
    )

    input_roots: ClassVar[frozenset[str]] = frozenset({"training_args", "model_args", "state_ids"})
    output_keys: ClassVar[frozenset[str]] = frozenset({"rounds", "metrics", "model", "parameters"})


TaskSpec: TypeAlias = Annotated[
    AnalyticsTask | PreprocessingTask | PlanApprovalTask | PlanCheckTask | TrainingTask,
    Field(discriminator="kind"),
]
"""Any task, told apart by its ``kind``."""


class PlanSpec(BaseModel):
    """A training plan as it travels: its source text and the name of its class."""

    model_config = ConfigDict(extra="forbid")

    class_name: str
    source: str = Field(min_length=1)

    @model_validator(mode="after")
    def _defines_class(self) -> Self:
        try:
            tree = ast.parse(self.source)
        except SyntaxError as exc:
            raise ValueError(f"the plan source is not valid Python: {exc}") from exc
        defined = {node.name for node in tree.body if isinstance(node, ast.ClassDef)}
        imported = {
            alias.asname or alias.name
            for node in tree.body
            if isinstance(node, ast.ImportFrom)
            for alias in node.names
        }
        if self.class_name not in defined | imported:
            raise ValueError(f"the plan source defines no class {self.class_name!r}")
        return self


class Inheritance(BaseModel):
    """Reuse the outputs of tasks of an earlier job instead of running them again."""

    model_config = ConfigDict(extra="forbid")

    job_id: str
    tasks: list[str] = Field(min_length=1)


class DatasetSelector(BaseModel):
    """How each node's dataset is found: by tags (the first dataset carrying every tag) or by
    id on each node."""

    model_config = ConfigDict(extra="forbid")

    tags: list[str] = Field(default_factory=list)
    ids: dict[str, str] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _one_way(self) -> Self:
        if bool(self.tags) == bool(self.ids):
            raise ValueError("give the datasets either by 'tags' or by 'ids', not both nor none")
        return self


class SimulatedDataset(BaseModel):
    """A file a simulated node registers as its dataset (see ``FedJob.simulate``)."""

    model_config = ConfigDict(extra="forbid")

    path: Path
    target: str | None = None
    name: str = ""
    tags: list[str] = Field(default_factory=list)


class JobConf(BaseModel):
    """Job settings, as FATE Flow's ``dag.conf``."""

    model_config = ConfigDict(extra="forbid")

    priority: int = Field(default=0, description="Higher runs first among waiting jobs.")
    auto_retries: int = Field(default=0, ge=0, description="Retries of a failed or late task.")
    task_timeout: float | None = Field(
        default=None, gt=0, description="Seconds a task may run before it is stopped."
    )
    parallelism: int = Field(default=1, ge=1, description="Tasks run at once.")
    min_nodes: int = Field(default=1, ge=0, description="Online nodes the job needs to start.")
    mandatory_nodes: list[str] = Field(default_factory=list)
    node_wait: float = Field(
        default=60.0, ge=0, description="Seconds to wait for those nodes before failing."
    )
    inheritance: Inheritance | None = None

    @field_validator("mandatory_nodes")
    @classmethod
    def _valid_nodes(cls, value: list[str]) -> list[str]:
        for node in value:
            check_id("node id", node)
        return value


class JobSpec(BaseModel):
    """A whole job: settings, datasets, plans and the task DAG."""

    model_config = ConfigDict(extra="forbid")

    version: Literal[1] = 1
    name: str
    conf: JobConf = Field(default_factory=JobConf)
    datasets: DatasetSelector
    plans: dict[str, PlanSpec] = Field(default_factory=dict)
    tasks: list[TaskSpec] = Field(min_length=1)
    simulation: dict[str, SimulatedDataset] = Field(
        default_factory=dict, description="Node id -> dataset file, for simulations only."
    )

    @field_validator("name")
    @classmethod
    def _valid_name(cls, value: str) -> str:
        return _check_name("job name", value)

    @model_validator(mode="after")
    def _valid_dag(self) -> Self:
        names = [task.name for task in self.tasks]
        duplicates = sorted({name for name in names if names.count(name) > 1})
        if duplicates:
            raise ValueError(f"task names used twice: {duplicates}")
        by_name = {task.name: task for task in self.tasks}
        for task in self.tasks:
            if not task.nodes:
                raise ValueError(f"task {task.name!r} is placed on no node (job.to / to_nodes)")
            for upstream in task.upstream:
                if upstream not in by_name:
                    raise ValueError(f"task {task.name!r} depends on unknown task {upstream!r}")
            for target, ref in task.inputs.items():
                producer = by_name[ref.task]
                if ref.key.split(".")[0] not in producer.output_keys:
                    raise ValueError(
                        f"task {task.name!r} input {target!r}: a {producer.kind} task has no "
                        f"output {ref.key!r}"
                    )
            plan = getattr(task, "plan", None)
            if plan is not None and plan not in self.plans:
                raise ValueError(f"task {task.name!r} uses unknown plan {plan!r}")
        self.order()
        if self.conf.inheritance is not None:
            unknown = sorted(set(self.conf.inheritance.tasks) - set(by_name))
            if unknown:
                raise ValueError(f"inheritance names tasks this job does not have: {unknown}")
        return self

    def task(self, name: str) -> TaskSpec:
        """The task called ``name``.

        Raises:
            KeyError: there is none.
        """
        for task in self.tasks:
            if task.name == name:
                return task
        raise KeyError(name)

    def order(self) -> list[str]:
        """Task names in an order where every task comes after its upstream tasks.

        Raises:
            ValueError: the dependencies form a cycle.
        """
        upstream = {task.name: set(task.upstream) for task in self.tasks}
        ordered: list[str] = []
        while upstream:
            ready = [name for name, deps in upstream.items() if deps <= set(ordered)]
            if not ready:
                raise ValueError(f"the task dependencies form a cycle among {sorted(upstream)}")
            for name in ready:
                ordered.append(name)
                del upstream[name]
        return ordered

    def named_nodes(self) -> list[str]:
        """Nodes some task is placed on by name, sorted."""
        found: set[str] = set()
        for task in self.tasks:
            if isinstance(task.nodes, list):
                found.update(task.nodes)
        return sorted(found)

    def to_yaml(self) -> str:
        """The spec as YAML: every job setting, each task's non-default fields, plan sources
        as literal blocks."""
        data = self.model_dump(mode="json", exclude_none=True)
        data["tasks"] = [
            {"kind": task.kind, "name": task.name,
             **task.model_dump(mode="json", exclude_defaults=True, exclude={"kind", "name"})}
            for task in self.tasks
        ]  # fmt: skip
        if not self.simulation:
            del data["simulation"]
        return yaml.dump(data, Dumper=_Dumper, sort_keys=False, allow_unicode=True, width=100)

    @classmethod
    def from_yaml(cls, text: str) -> JobSpec:
        """Read and validate a spec.

        Raises:
            SpecError: the text is not YAML, or not a valid spec (the message says where).
        """
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise SpecError(f"the job spec is not valid YAML: {exc}") from exc
        if not isinstance(data, dict):
            raise SpecError("a job spec is a mapping with 'name', 'datasets' and 'tasks'")
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            raise SpecError(f"invalid job spec: {exc}") from exc

    @classmethod
    def load(cls, path: Path) -> JobSpec:
        """Read and validate the spec in ``path``.

        Raises:
            SpecError: as :meth:`from_yaml`, or the file cannot be read.
        """
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise SpecError(f"cannot read the job spec {path}: {exc}") from exc
        return cls.from_yaml(text)


class _Dumper(yaml.SafeDumper):
    """Writes multi-line strings (plan sources) as readable literal blocks."""


def _represent_str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _represent_str)
